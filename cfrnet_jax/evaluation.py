"""Whole-image evaluation: counts, MAE / MSE / NAE, per-image CSV, NWPU submission.

Each image is evaluated whole (resized only by the dataset's `data.max_side`, not tiled)
and padded by the one padding rule of `data.geometry`: to the next multiples of the
model's padding multiple, exactly what the model pads to itself, so the count equals
that of the unpadded image. The count is the density summed over the cells that hold
image pixels, so padding never enters it.

Metrics (crowd-counting convention): MAE = mean |pred - true|; MSE = sqrt(mean
(pred - true)^2) (the field's "MSE" is a root); NAE = mean |pred - true| / true over
images with true > 0 (NWPU-Crowd's benchmark metric). Localization (`localization`):
head points read from each density map as `config.predict` says, matched one to one to
the annotated heads within 4 and 8 pixels of the original picture, giving precision,
recall and F1 micro-averaged over the split (P2PNet's protocol).

Every host counts its shard of the split; host 0 gathers the rows, writes the table and
computes the metrics, which `evaluate` then shares with every host.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from cfrnet_jax import checkpointing, cross_validation, localization, run_config
from cfrnet_jax.data import pipeline
from cfrnet_jax.data.device_ops import normalize_images, valid_mask
from cfrnet_jax.data.geometry import ceil_div
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE
from cfrnet_jax.state import ModelVariables, model_graphdef

METRICS = ("mae", "mse", "nae") + tuple(
    f"{name}_{threshold}"
    for threshold in localization.LOCALIZATION_THRESHOLDS
    for name in ("precision", "recall", "f1")
)
# predictions.csv: one row per image.
COLUMNS = ("filename", "true_count", "predicted_count", "abs_error") + localization.ROW_FIELDS
_COLUMN_TYPES = {"filename": str, "predicted_count": float, "abs_error": float}  # others: int


def make_count_fn(graphdef: nnx.GraphDef, data_config: ml_collections.ConfigDict):
  """jit(variables, image uint8 (b, H, W, 3), valid_size (b, 2)) -> (count (b,), density
  (b, H/4, W/4), the whole padded map); compiles once per input shape."""

  @jax.jit
  def count(variables: ModelVariables, image, valid_size):
    model = nnx.merge(graphdef, variables.params, variables.batch_stats)
    model.eval()
    images = normalize_images(image, valid_size, data_config.mean, data_config.std)
    density = model(images)["density"][..., 0].astype(jnp.float32)
    inside = valid_mask(valid_size, density.shape[1:3], DENSITY_STRIDE)
    return jnp.sum(jnp.where(inside, density, 0.0), axis=(1, 2)), density

  return count


def count_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
  true, predicted = np.asarray(true, np.float64), np.asarray(predicted, np.float64)
  error = predicted - true
  labeled = true > 0
  return {
      "mae": float(np.mean(np.abs(error))),
      "mse": float(np.sqrt(np.mean(np.square(error)))),
      "nae": float(np.mean(np.abs(error[labeled]) / true[labeled]))
      if labeled.any()
      else float("nan"),
      "images": int(len(true)),
  }


def predict_counts(
    count_fn, variables: ModelVariables, batches: Iterable[dict], point_options: dict
) -> list[dict]:
  """One row (`COLUMNS`) per image of an evaluation loader's batches: the true and
  predicted counts, and the tallies of head points (`localization.locate_heads` with
  `point_options`) matched to the annotated ones, in the original picture's pixels."""
  rows = []
  for batch in batches:
    counts, density = count_fn(variables, batch["image"], batch["valid_size"])
    cells = ceil_div(batch["valid_size"][0], DENSITY_STRIDE)
    density = np.asarray(density[0, : cells[0], : cells[1]])
    points = localization.locate_heads(density, DENSITY_STRIDE, **point_options)
    true, predicted = int(batch["count"][0]), float(counts[0])
    rows.append(
        {
            "filename": str(batch["filename"][0]),
            "true_count": true,
            "predicted_count": predicted,
            "abs_error": abs(predicted - true),
            **localization.localization_row(points / batch["scale"][0], batch["points"][0]),
        }
    )
  return rows


def write_predictions(path: Path, rows: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as out:
    writer = csv.DictWriter(out, COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow(
          {
              **row,
              "predicted_count": f"{row['predicted_count']:.3f}",
              "abs_error": f"{row['abs_error']:.3f}",
          }
      )


def write_submission(path: Path, rows: list[dict]) -> None:
  """NWPU-Crowd's benchmark server format: one `image_id count` line per image."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as out:
    for row in sorted(rows, key=lambda row: row["filename"]):
      out.write(f"{Path(row['filename']).stem} {row['predicted_count']:.4f}\n")


def read_predictions(path: Path) -> list[dict]:
  """The rows `write_predictions` wrote (counts as written, with 3 decimals)."""
  with open(path, newline="") as source:
    return [
        {key: _COLUMN_TYPES.get(key, int)(value) for key, value in row.items()}
        for row in csv.DictReader(source)
    ]


def evaluate(
    config: ml_collections.ConfigDict,
    count_fn,
    variables: ModelVariables,
    split: str,
    out_dir: Path,
) -> dict | None:
  """Counts every image of `split` with `count_fn` (`make_count_fn`'s: a run makes it
  once, so each padded image shape compiles once however often it evaluates), each
  host its shard, with `variables` on one local device; host 0 writes
  `out_dir/predictions.csv`. Returns the metrics on every host, or None for an unlabeled
  split, for which host 0 writes `out_dir/submission.txt` (NWPU's server format)."""
  loader = pipeline.create_eval_loader(config, pipeline.open_split(config.data, split))
  rows = predict_counts(count_fn, variables, loader, localization.point_options(config))
  out_dir.mkdir(parents=True, exist_ok=True)
  part = out_dir / f"predictions.host{jax.process_index()}.csv"
  write_predictions(part, rows)
  multihost_utils.sync_global_devices(f"eval {split} {out_dir}")
  metrics = None
  if jax.process_index() == 0:
    rows = []
    for host in range(jax.process_count()):
      path = out_dir / f"predictions.host{host}.csv"
      rows += read_predictions(path)
      path.unlink()
    if any(row["true_count"] < 0 for row in rows):
      write_submission(out_dir / "submission.txt", rows)
      logging.info(
          "%s/%s is unlabeled: wrote %d counts to %s",
          config.data.name,
          split,
          len(rows),
          out_dir / "submission.txt",
      )
    else:
      write_predictions(out_dir / "predictions.csv", rows)
      metrics = {
          **count_metrics([r["true_count"] for r in rows], [r["predicted_count"] for r in rows]),
          **localization.localization_metrics(rows),
      }
  return _share_metrics(metrics)


def _share_metrics(metrics: dict | None) -> dict | None:
  """Host 0's metrics on every host (so every host tags the best checkpoint alike)."""
  if jax.process_count() == 1:
    return metrics
  values = np.array(
      [metrics[k] if metrics else 0.0 for k in METRICS] + [metrics["images"] if metrics else 0.0],
      np.float64,
  )
  values = multihost_utils.broadcast_one_to_all(values)
  if np.all(values == 0):
    return None
  return dict(zip((*METRICS, "images"), map(float, values)))


def log_metrics(step: int, metrics: dict) -> None:
  localized = "  ".join(
      f"P/R/F1@{t}px {metrics[f'precision_{t}']:.3f}/{metrics[f'recall_{t}']:.3f}/"
      f"{metrics[f'f1_{t}']:.3f}"
      for t in localization.LOCALIZATION_THRESHOLDS
  )
  logging.info(
      "eval at step %d: MAE %.2f  MSE %.2f  NAE %.4f  %s  (%d images)",
      step,
      metrics["mae"],
      metrics["mse"],
      metrics["nae"],
      localized,
      metrics["images"],
  )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str | Path, split: str | None = None
) -> dict | None:
  """Evaluates the best (by MAE, else the latest) checkpoint of `workdir` on `split`
  (default: `config.data.eval_split`) into `workdir/eval/<split>_step_<n>`. Refuses a
  `config` that counts differently from the run's own `config.json`
  (`run_config.check_counting_config`), before anything is restored or written."""
  cross_validation.check_single_run(config)
  workdir = Path(workdir)
  run_config.check_counting_config(workdir, config)
  step, variables = checkpointing.restore_variables(workdir, config.model)
  split = split or config.data.eval_split
  count_fn = make_count_fn(model_graphdef(config.model), config.data)
  metrics = evaluate(config, count_fn, variables, split, workdir / f"eval/{split}_step_{step}")
  if metrics is not None:
    log_metrics(step, metrics)
  return metrics
