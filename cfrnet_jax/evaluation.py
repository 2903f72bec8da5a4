"""Whole-image evaluation: counts, MAE / MSE / NAE, per-image CSV, NWPU submission.

Each image is evaluated whole (resized only by the dataset's `data.max_side`, not tiled)
and padded to a multiple of `data.eval_bucket`; the count is the density summed over the
cells that hold image pixels, so padding never enters it. With `eval_bucket` a multiple
of the model's padding multiple, the padded input is exactly what the model would pad to
itself, so the count equals that of the unpadded image.

Metrics (crowd-counting convention): MAE = mean |pred - true|; MSE = sqrt(mean
(pred - true)^2) (the field's "MSE" is a root); NAE = mean |pred - true| / true over
images with true > 0 (NWPU-Crowd's benchmark metric).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cfrnet_jax.input_pipeline import normalize_images
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE


def make_count_fn(graphdef: nnx.GraphDef, data_config: ml_collections.ConfigDict):
  """jit(params, batch_stats, image uint8 (1, H, W, 3), valid_size (1, 2)) -> (count (1,),
  density (1, H/4, W/4), the whole padded map); compiles once per input shape."""

  @jax.jit
  def count(params, batch_stats, image, valid_size):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    density = model(normalize_images(image, valid_size, data_config))["density"]
    density = density[..., 0].astype(jnp.float32)
    cells = -(-valid_size // DENSITY_STRIDE)
    rows = jnp.arange(density.shape[1])[None, :, None] < cells[:, 0, None, None]
    cols = jnp.arange(density.shape[2])[None, None, :] < cells[:, 1, None, None]
    return jnp.sum(jnp.where(rows & cols, density, 0.0), axis=(1, 2)), density

  return count


def count_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
  true, predicted = np.asarray(true, np.float64), np.asarray(predicted, np.float64)
  error = predicted - true
  labeled = true > 0
  return {"mae": float(np.mean(np.abs(error))),
          "mse": float(np.sqrt(np.mean(np.square(error)))),
          "nae": float(np.mean(np.abs(error[labeled]) / true[labeled])) if labeled.any()
                 else float("nan"),
          "images": int(len(true))}


def predict_counts(count_fn, params, batch_stats, batches: Iterable[dict]) -> list[tuple]:
  """[(filename, true count, predicted count)] over an evaluation loader's batches."""
  rows = []
  for batch in batches:
    counts, _ = count_fn(params, batch_stats, batch["image"], batch["valid_size"])
    rows.append((str(batch["filename"][0]), int(batch["count"][0]), float(counts[0])))
  return rows


def write_predictions(path: Path, rows: list[tuple]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as out:
    writer = csv.writer(out)
    writer.writerow(["filename", "true_count", "predicted_count", "abs_error"])
    for name, true, predicted in rows:
      writer.writerow([name, true, f"{predicted:.3f}", f"{abs(predicted - true):.3f}"])


def write_submission(path: Path, rows: list[tuple]) -> None:
  """NWPU-Crowd's benchmark server format: one `image_id count` line per image."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as out:
    for name, _, predicted in sorted(rows):
      out.write(f"{Path(name).stem} {predicted:.4f}\n")


def read_predictions(path: Path) -> list[tuple]:
  with open(path, newline="") as source:
    return [(row["filename"], int(row["true_count"]), float(row["predicted_count"]))
            for row in csv.DictReader(source)]
