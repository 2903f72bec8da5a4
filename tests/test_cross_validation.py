"""UCF_CC_50's five-fold protocol: which runs a config stands for, and the summary."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cfrnet_jax import cross_validation
from configs import shha, tiny, ucf_cc_50

REPO = Path(__file__).resolve().parents[1]


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


def tiny_five_fold_command(workdir, data_dir) -> list[str]:
  """launch.py on a five-fold UCF_CC_50 run of configs/tiny.py:plain's model (every model
  field of it that configs/ucf_cc_50.py sets otherwise), 4 steps a fold, a checkpoint
  every 2."""
  plain, paper = tiny.get_config("plain").model, ucf_cc_50.get_config().model
  tiny_run = {
      **{f"model.{key}": value for key, value in plain.items() if value != paper[key]},
      "backbone_weights": "none",
      "batch_size": 4,
      "data.crop_size": 64,
      "data.max_points": 32,
      "data.max_side": 96,
      "data.num_workers": 0,
      "num_train_steps": 4,
      "eval_every_steps": 4,
      "checkpoint_every_steps": 2,
      "log_every_steps": 1,
      "data.data_dir": data_dir,
  }
  return [
      sys.executable,
      "launch.py",
      "--config",
      "configs/ucf_cc_50.py",
      "--workdir",
      str(workdir),
      *(f"--config.{key}={value}" for key, value in tiny_run.items()),
  ]


def small_ucf_cc_50(folder: Path) -> str:
  """A UCF_CC_50 of 50 small grey pictures with a few heads each, built into `folder`."""
  from PIL import Image

  from tfds_crowd.build import build

  manual = folder / "UCF_CC_50"
  manual.mkdir(parents=True)
  rng = np.random.default_rng(50)
  for k in range(1, 51):
    pixels = rng.integers(0, 255, (72, 96), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(manual / f"{k}.jpg")
    points = rng.uniform([0, 0], [96, 72], (k % 7 + 1, 2))
    scipy.io.savemat(manual / f"{k}_ann.mat", {"annPoints": points})
  build("ucf_cc_50", str(folder / "data"), str(manual))
  return str(folder / "data")


def _stop_when(proc: subprocess.Popen, path: Path, sig: int, timeout: float = 600) -> str:
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert proc.poll() is None, f"ended before {path}: {proc.communicate()[0][-3000:]}"
    assert time.monotonic() < deadline, f"no {path} after {timeout} s"
    time.sleep(0.05)
  proc.send_signal(sig)
  return proc.communicate(timeout=300)[0]


@pytest.mark.slow
def test_a_stopped_five_fold_run_resumes_to_the_uninterrupted_summary(tmp_path):
  """SIGTERM in fold 2 ends the sequence as a preempted run ends (status 0, no fold 3,
  no summary); SIGKILL in fold 3 of the next command; the third finishes: its
  folds_summary.json equals an uninterrupted run's, the finished folds' results read
  back from their workdirs, not trained again."""
  data_dir = small_ucf_cc_50(tmp_path)
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  run = lambda workdir: subprocess.Popen(
      tiny_five_fold_command(workdir, data_dir),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  finished = subprocess.run(
      tiny_five_fold_command(reference, data_dir), cwd=REPO, capture_output=True, text=True
  )
  assert finished.returncode == 0, finished.stderr[-3000:]

  proc = run(resumed)
  output = _stop_when(proc, resumed / "fold_2" / "checkpoints" / "2", signal.SIGTERM)
  assert proc.returncode == 0, output[-3000:]
  assert "Preempted" in output and "rerun the same command" in output
  assert not (resumed / "fold_3").exists() and not (resumed / "folds_summary.json").exists()

  proc = run(resumed)
  output = _stop_when(proc, resumed / "fold_3" / "checkpoints" / "2", signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  assert "fold_1 finished at step 4" in output  # read back, not trained again

  proc = run(resumed)
  output = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, output[-3000:]
  assert "fold_1 finished at step 4" in output and "fold_2 finished at step 4" in output
  summary = json.loads((resumed / "folds_summary.json").read_text())
  assert summary == json.loads((reference / "folds_summary.json").read_text())
  assert sorted(summary["folds"]) == ["1", "2", "3", "4", "5"]
