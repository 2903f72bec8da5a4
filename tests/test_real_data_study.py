"""benchmarks/real_data_study.py: the parts that decide its figures (the training runs
themselves are the product's `train_and_evaluate`, tested elsewhere)."""

import numpy as np
import pytest

from benchmarks import real_data_study as study


def test_variant_words_set_the_config_and_unknown_words_fail_before_training(tmp_path):
  config = study.variant_config("concat+area+zeros+x2", 3, 100, tmp_path)
  assert (config.model.fusion, config.loss.level_balance, config.model.density_init) == (
      "concat",
      "area",
      "zeros",
  )
  assert config.num_train_steps == config.eval_every_steps == 200
  assert config.seed == 3 and config.data.max_points == 0
  # fold 1: trained on the other four folds, tested on fold 1's ten images.
  assert (config.data.train_split, config.data.eval_split) == ("fold2+fold3+fold4+fold5", "fold1")
  plain = study.variant_config("cfrm", 0, 100, tmp_path)
  assert (plain.model.fusion, plain.loss.level_balance, plain.model.density_init) == (
      "cfrm",
      "sum",
      "lecun_normal",
  )
  with pytest.raises(ValueError, match=r"Unknown word\(s\) \['sigmoid'\]"):
    study.variant_config("cfrm+sigmoid", 0, 100, tmp_path)


def test_foreground_is_the_cells_within_the_radius_of_a_head():
  # One head at pixel (x=21, y=9): cell (row 2, col 5); 8 px reach 2 cells each way.
  mask = study.foreground_cells(np.array([[21.0, 9.0]]), (10, 12), radius_px=8.0)
  rows, cols = np.nonzero(mask)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 4, 3, 7)
  assert mask.sum() == 5 * 5
  outside = study.foreground_cells(np.array([[-5.0, 3.0], [100.0, 3.0]]), (4, 4), 4.0)
  assert not outside.any()  # heads outside the image mark nothing


def test_summary_counts_errors_and_the_share_outside_the_foreground():
  analysis = {
      "images": [
          {"true": 100, "gate_0": {"count": 110.0, "outside": 11.0}},
          {"true": 50, "gate_0": {"count": 40.0, "outside": 4.0}},
      ]
  }
  summary = study.summarise(analysis, 0.0)
  assert summary["mae"] == pytest.approx(10.0)
  assert summary["mse"] == pytest.approx(10.0)  # root of the mean squared error
  assert summary["outside_share"] == pytest.approx(15 / 150)
