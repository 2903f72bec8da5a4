"""UCF_CC_50's five-fold protocol: which runs a config stands for, and the summary."""

import json

import pytest

from cfrnet_jax import cross_validation
from configs import shha, ucf_cc_50


def test_all_folds_run_in_turn_with_their_splits_and_are_averaged(tmp_path):
  seen = []

  def run(config, workdir):
    seen.append(
        (
            config.data.fold,
            config.data.train_split,
            config.data.eval_split,
            workdir.relative_to(tmp_path).as_posix(),
        )
    )
    return {"mae": 10.0 * config.data.fold, "mse": 20.0 * config.data.fold}

  config = ucf_cc_50.get_config()
  assert config.data.fold == cross_validation.ALL_FOLDS
  summary = cross_validation.run_folds(config, tmp_path, run)
  assert [fold for fold, *_ in seen] == [1, 2, 3, 4, 5]
  assert seen[2][1:] == ("fold1+fold2+fold4+fold5", "fold3", "fold_3")
  assert summary["mae"] == pytest.approx(30.0) and summary["mse"] == pytest.approx(60.0)
  written = json.loads((tmp_path / "folds_summary.json").read_text())
  assert written["mae"] == pytest.approx(30.0) and written["folds"]["3"]["mae"] == 30.0
  assert config.data.fold == 0  # the caller's config is left alone


def test_one_fold_runs_in_the_workdir_itself(tmp_path):
  config = ucf_cc_50.get_config()
  config.data.fold = 4
  runs = cross_validation.fold_runs(config)
  assert [(name, c.data.train_split, c.data.eval_split) for name, c in runs] == [
      ("", "fold1+fold2+fold3+fold5", "fold4")
  ]
  assert cross_validation.run_folds(config, tmp_path, lambda c, w: (w, c.data.fold)) == (
      tmp_path,
      4,
  )


def test_datasets_with_fixed_splits_are_one_run_unchanged():
  config = shha.get_config()
  [(name, same)] = cross_validation.fold_runs(config)
  assert name == "" and same is config


def test_a_fold_out_of_range_is_refused():
  config = ucf_cc_50.get_config()
  config.data.fold = 6
  with pytest.raises(ValueError, match="folds 1..5, got 6"):
    cross_validation.fold_runs(config)


def test_training_and_evaluation_refuse_a_config_that_is_not_one_run(tmp_path):
  from cfrnet_jax import evaluation
  from cfrnet_jax.training import trainer

  config = ucf_cc_50.get_config()
  for call in (trainer.train_and_evaluate, evaluation.evaluate_checkpoint):
    with pytest.raises(ValueError, match="data.fold = 0 stands for all 5 folds"):
      call(config, tmp_path)
  config.data.fold = 2
  with pytest.raises(ValueError, match="tests on 'fold2', but the config names 'train'"):
    trainer.train_and_evaluate(config, tmp_path)
  [(_, fold_two)] = cross_validation.fold_runs(config)
  cross_validation.check_single_run(fold_two)  # the config of a run passes


def test_an_evaluation_summary_does_not_replace_the_training_summary(tmp_path):
  config = ucf_cc_50.get_config()
  scores = lambda mae: lambda c, w: {"mae": mae * c.data.fold, "mse": 0.0}
  cross_validation.run_folds(config, tmp_path, scores(1.0))
  cross_validation.run_folds(config, tmp_path, scores(2.0), summary_name="evaluation.json")
  assert json.loads((tmp_path / "folds_summary.json").read_text())["mae"] == 3.0
  assert json.loads((tmp_path / "evaluation.json").read_text())["mae"] == 6.0
