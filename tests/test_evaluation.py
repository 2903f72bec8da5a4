"""Whole-image evaluation: the padding rule, metrics, predictions, submissions."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfrnet_jax import evaluation, localization
from cfrnet_jax.data import pipeline
from cfrnet_jax.data.device_ops import normalize_images
from cfrnet_jax.data.geometry import mean_colour, pad_to_multiple
from cfrnet_jax.data.targets import density_targets
from cfrnet_jax.models.cfrnet import pad_multiple
from cfrnet_jax.state import init_variables, model_graphdef
from tests.conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[1]


def test_padding_to_the_models_multiple_never_changes_the_count():
  config = tiny_train_config(None)
  graphdef, variables = model_graphdef(config.model), init_variables(config.model, 0)
  count_fn = evaluation.make_count_fn(graphdef, config.data)
  image = np.random.default_rng(0).integers(0, 255, (130, 201, 3)).astype(np.uint8)
  valid_size = np.array([[130, 201]], np.int32)
  padded = pad_to_multiple(image, pad_multiple(config.model), mean_colour(config.data.mean))
  assert padded.shape == (256, 256, 3)
  count = float(count_fn(variables, padded[None], valid_size)[0][0])
  # The padding's content is irrelevant: it is set to exactly 0 before the model.
  noisy = padded.copy()
  noisy[130:], noisy[:, 201:] = 7, 250
  assert float(count_fn(variables, noisy[None], valid_size)[0][0]) == count

  # The unpadded picture through the model, which pads to 256 x 256 itself, agrees.
  @jax.jit
  def direct_count(variables, image):
    model = nnx.merge(graphdef, variables.params, variables.batch_stats)
    model.eval()
    images = normalize_images(image, valid_size, config.data.mean, config.data.std)
    return model(images)["density"].sum()

  direct = float(direct_count(variables, image[None]))
  np.testing.assert_allclose(count, direct, rtol=1e-5)


def test_training_evaluates_and_evaluate_mode_agrees(
    trained_workdir, trained_run_metrics, synthetic_data_dir, tmp_path
):
  rows = evaluation.read_predictions(trained_workdir / "eval" / "step_2" / "predictions.csv")
  true = np.array([r["true_count"] for r in rows])
  predicted = np.array([r["predicted_count"] for r in rows])  # written with 3 decimals
  assert len(rows) == 4 and trained_run_metrics["images"] == 4
  assert set(trained_run_metrics) == {*evaluation.METRICS, "images", "selection", "step", "split"}
  # Ranked on test when asked (best_on_test): labelled so; step 2 is the only evaluation.
  assert trained_run_metrics["selection"] == "best_on_test" and trained_run_metrics["step"] == 2
  # Localization: every annotated head is tallied, and the F1 follows from the tallies.
  assert [r["true_points"] for r in rows] == list(true)
  assert trained_run_metrics["f1_8"] == pytest.approx(
      localization.localization_metrics(rows)["f1_8"]
  )
  np.testing.assert_allclose(trained_run_metrics["mae"], np.abs(predicted - true).mean(), atol=1e-3)
  np.testing.assert_allclose(
      trained_run_metrics["mse"], np.sqrt(((predicted - true) ** 2).mean()), atol=1e-3
  )
  assert json.loads((trained_workdir / "config.json").read_text())["data"]["eval_split"] == (
      "test[:4]"
  )
  assert list((trained_workdir / "tensorboard").iterdir())
  # launch.py --mode evaluate: the same checkpoint (the last, step 2) counts the same.
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  result = subprocess.run(
      [sys.executable, "launch.py", "--mode", "evaluate", "--config", "configs/tiny.py",
       "--workdir", str(workdir), f"--config.data.data_dir={synthetic_data_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"eval at step 2: MAE {trained_run_metrics['mae']:.2f}" in result.stderr
  again = evaluation.read_predictions(workdir / "eval" / "test[:4]_step_2" / "predictions.csv")
  assert again == rows


def test_best_checkpoint_on_validation_is_tested_once_and_best_on_test_is_labelled(
    synthetic_data_dir, tmp_path
):
  """With a validation split the run reports the test figures of the checkpoint with the
  lowest validation MAE; `best_on_test` reports the best test figures, labelled."""
  from cfrnet_jax import checkpointing
  from cfrnet_jax.training import run_result, trainer

  config = tiny_train_config(
      synthetic_data_dir, "plain", num_train_steps=2, eval_every_steps=1, log_every_steps=1,
      checkpoint_every_steps=1, keep_checkpoints=2,
  )  # fmt: skip
  # synthetic_crowd has no validation split: 4 training images stand in for one.
  config.data.update(eval_split="train[:4]", validation=True, test_split="test[:4]")
  result = trainer.train_and_evaluate(config, tmp_path)
  manager = checkpointing.create_checkpoint_manager(tmp_path)
  validation = {step: checkpointing.saved_metrics(manager, step)["mae"] for step in (1, 2)}
  best = min(validation, key=validation.get)
  assert result["selection"] == "best_on_validation" and result["step"] == best
  assert result["split"] == "test[:4]"
  rows = evaluation.read_predictions(tmp_path / "eval" / f"test_step_{best}" / "predictions.csv")
  true = np.array([r["true_count"] for r in rows])
  predicted = np.array([r["predicted_count"] for r in rows])
  assert result["mae"] == pytest.approx(np.abs(predicted - true).mean(), abs=1e-3)
  assert sorted((tmp_path / "eval").iterdir()) == sorted(
      [tmp_path / "eval" / f"step_{s}" for s in (1, 2)] + [tmp_path / "eval" / f"test_step_{best}"]
  )  # the test split was evaluated once
  config.data.validation, config.best_on_test = False, True
  labelled = run_result.final_result(config, None, manager, tmp_path, result)
  assert labelled["selection"] == "best_on_test" and labelled["mae"] == validation[best]
  # No validation split and not asked: the last checkpoint's figures, as evaluated.
  config.best_on_test = False
  last = run_result.final_result(config, None, manager, tmp_path, result)
  assert (last["selection"], last["step"], last["mae"]) == ("last", 2, result["mae"])
  manager.close()


def test_unlabeled_split_writes_a_submission_file(tmp_path):
  from tests.test_tfds_crowd import test_nwpu_crowd_from_official_zips_with_unlabeled_test

  test_nwpu_crowd_from_official_zips_with_unlabeled_test(tmp_path)  # builds nwpu_crowd
  config = tiny_train_config(str(tmp_path / "data"))
  config.data.name = "nwpu_crowd"
  out = tmp_path / "eval"
  variables = init_variables(config.model, 0)
  count_fn = evaluation.make_count_fn(model_graphdef(config.model), config.data)
  assert evaluation.evaluate(config, count_fn, variables, "test", out) is None
  lines = (out / "submission.txt").read_text().splitlines()
  assert len(lines) == 1 and lines[0].split()[0] == "0004"
  float(lines[0].split()[1])


def test_count_metrics_by_hand():
  metrics = evaluation.count_metrics([10, 0, 4], [12, 1, 1])
  assert metrics["mae"] == pytest.approx(2.0)
  assert metrics["mse"] == pytest.approx(np.sqrt((4 + 1 + 9) / 3))
  assert metrics["nae"] == pytest.approx((2 / 10 + 3 / 4) / 2)  # images with people only


def test_localization_is_scored_in_the_original_pictures_pixels(synthetic_data_dir):
  """With a perfect density map of each (resized) evaluation image, the points match the
  annotations of the original picture: F1 at 8 px near 1. Points left in the resized
  image's pixels would miss by up to half the picture."""
  config = tiny_train_config(synthetic_data_dir)
  config.data.max_side = 192  # the synthetic pictures are 256-384 pixels wide
  config.predict.point_method = "count"  # heads 3 px apart in the resized images merge
  batches = list(pipeline.create_eval_loader(config, pipeline.open_split(config.data, "test[:4]")))
  assert all(batch["scale"][0][0] < 0.8 for batch in batches)

  def perfect_density(batch):
    cells = -(-np.array(batch["image"].shape[1:3]) // 4)
    if not len(batch["points"][0]):  # a picture without people
      return np.zeros(1), np.zeros((1, *cells), np.float32)
    targets = density_targets(
        jnp.asarray(batch["points"][0] * batch["scale"][0]),
        jnp.ones(len(batch["points"][0]), bool),
        batch["image"].shape[1:3],
        strides=(4,),
        sigma=config.targets.sigma,
        foreground_radius=config.targets.foreground_radius,
        valid_size=jnp.asarray(batch["valid_size"][0]),
    )
    density = np.asarray(targets["density"][4])[None]
    return density.sum((1, 2)), density

  densities = [perfect_density(batch) for batch in batches]

  def f1_at_8(batches):
    given = iter(densities)
    rows = evaluation.predict_counts(
        lambda *_: next(given), None, batches, localization.point_options(config)
    )
    assert sum(r["true_points"] for r in rows) > 20
    return localization.localization_metrics(rows)["f1_8"]

  # Heads 3-5 px apart in the resized images limit even a perfect map (seen: 0.83).
  assert f1_at_8(batches) > 0.75
  unscaled = [{**batch, "scale": np.ones_like(batch["scale"])} for batch in batches]
  assert f1_at_8(unscaled) < 0.3
