"""Evaluate, predict and serve count only with a config that counts as the run's does."""

import json
import logging
import shutil
import subprocess
import sys

import pytest

from cfrnet_jax import cross_validation, evaluation, run_config
from cfrnet_jax.inference.counter import CrowdCounter
from configs import ucf_cc_50
from tests.conftest import REPO

# Fields that change every count the run's parameters give, as 'saved -> given'.
COUNT_CHANGES = {
    "model.density_scale": (10.0, 100.0),
    "data.max_side": (0, 512),
    "data.mean": ([0.485, 0.456, 0.406], [0.5, 0.5, 0.5]),
    "targets.sigma": (4.0, 2.0),
}


def _counting_differently(workdir):
  config = run_config.load_run_config(workdir)
  config.model.density_scale = 100.0
  config.data.update(max_side=512, mean=(0.5, 0.5, 0.5))
  config.targets.sigma = 2.0
  return config


def _assert_names_each_change(message: str):
  for field, (saved, given) in COUNT_CHANGES.items():
    assert f"{field}: {saved!r} -> {given!r}" in message, message


def test_evaluate_refuses_a_config_that_counts_differently(trained_workdir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  with pytest.raises(run_config.ConfigMismatchError) as raised:
    evaluation.evaluate_checkpoint(_counting_differently(workdir), workdir)
  _assert_names_each_change(str(raised.value))
  assert str(workdir / "config.json") in str(raised.value)
  assert sorted(p.name for p in (workdir / "eval").iterdir()) == ["step_2"]  # nothing new


def test_predict_and_serve_refuse_a_config_that_counts_differently(trained_workdir):
  with pytest.raises(run_config.ConfigMismatchError) as raised:
    CrowdCounter.from_checkpoint(trained_workdir, None, _counting_differently(trained_workdir))
  _assert_names_each_change(str(raised.value))


def test_inference_and_training_only_fields_may_differ_and_are_logged(trained_workdir, caplog):
  config = run_config.load_run_config(trained_workdir)
  config.predict.update(point_threshold=0.2, tile_size=1024)
  config.model.update(foreground_gate=0.5, dtype="bfloat16", remat="all", density_init="zeros")
  config.data.update(
      data_dir="/elsewhere", num_workers=2, eval_split="test[:2]", test_split="test", name="x"
  )
  config.update(batch_size=8, seed=3, num_train_steps=7)
  config.loss.level_balance = "sum"
  with caplog.at_level(logging.INFO):
    counter = CrowdCounter.from_checkpoint(trained_workdir, None, config)
  assert counter.config.model.foreground_gate == 0.5
  for line in (
      "predict.point_threshold: 0.05 -> 0.2",
      "model.foreground_gate: 0.0 -> 0.5",
      "model.dtype: 'float32' -> 'bfloat16'",
      "model.density_init: 'lecun_normal' -> 'zeros'",
      "data.eval_split: 'test[:4]' -> 'test[:2]'",
      "batch_size: 4 -> 8",
      "loss.level_balance: 'area' -> 'sum'",
  ):
    assert line in caplog.text
  assert "do not change the counts" in caplog.text


def test_a_fold_workdir_is_checked_against_the_fold_config_of_its_fold(tmp_path, caplog):
  """A UCF_CC_50 fold's workdir holds that fold's config (data.fold = k, its splits):
  the fold configs `run_folds` gives evaluate match it; the unexpanded config (fold 0,
  the default splits), as predict gets it, differs only in those fold fields."""
  config = ucf_cc_50.get_config()
  name, fold_2 = cross_validation.fold_runs(config)[1]
  assert name == "fold_2" and fold_2.data.fold == 2
  (tmp_path / "config.json").write_text(fold_2.to_json_best_effort())
  with caplog.at_level(logging.INFO):
    run_config.check_counting_config(tmp_path, fold_2)
    assert "do not change the counts" not in caplog.text  # identical
    run_config.check_counting_config(tmp_path, config)
  assert "data.fold: 2 -> 0" in caplog.text and "data.eval_split: 'fold2' -> 'test'" in caplog.text
  config.data.max_side = 2048
  with pytest.raises(run_config.ConfigMismatchError, match="data.max_side: 1024 -> 2048"):
    run_config.check_counting_config(tmp_path, config)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["data"]["fold"] == 2  # checking writes nothing


def test_launch_evaluate_with_another_density_scale_stops_naming_it(
    trained_workdir, synthetic_data_dir, tmp_path
):
  """The documented `--mode evaluate --config FILE` with a run trained with other
  values: one message and status 1, before any count."""
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  result = subprocess.run(
      [sys.executable, "launch.py", "--mode", "evaluate", "--config", "configs/tiny.py",
       "--workdir", str(workdir), f"--config.data.data_dir={synthetic_data_dir}",
       "--config.model.density_scale=100"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 1, result.stderr[-3000:]
  assert "model.density_scale: 10.0 -> 100.0" in result.stderr
  assert "Traceback" not in result.stderr
  assert not list((workdir / "eval").glob("test*"))
