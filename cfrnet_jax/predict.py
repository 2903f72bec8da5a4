"""Counting people in the user's own pictures: `CrowdCounter` and `predict_files`.

    counter = CrowdCounter.from_checkpoint("runs/quickstart")
    counter.count("photo.jpg")          # float, people in the picture
    counter.density(pil_image)          # (ceil(H/4), ceil(W/4)) people per 4x4 cell
    counter.predict(numpy_array)        # Prediction: count, density, image, tiles

Each picture is loaded as `user_images.load_image` describes (EXIF rotation, grayscale,
transparency, 16-bit), resized only by the config's `data.max_side` (as in evaluation, so
that the scale matches training), padded to a size bucket, or cut into overlapping tiles
when a side is longer than `predict.tile_size` (see `tiling` for both, and why tiles and
not downscaling). The count is the sum of the returned density map, exactly.

The forward pass is `evaluation.make_count_fn`, jitted once per padded shape;
`CrowdCounter.compilations` says how many shapes (= XLA compilations) it has run.
`launch.py --mode predict` calls `predict_files`, which writes a counts table, overlays
and optionally the raw maps, with a progress bar, skipping unreadable files by name.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from cfrnet_jax import checkpointing, evaluation, overlay, sharding, tiling, train
from cfrnet_jax.input_pipeline import fit_max_side, mean_colour, pad_image
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, build_model, pad_multiple
from cfrnet_jax.user_images import IMAGE_SUFFIXES, ImageSource, collect_images, load_image


def default_predict_config() -> ml_collections.ConfigDict:
  """Prediction settings (also `configs/base.py`'s `config.predict`)."""
  predict = ml_collections.ConfigDict()
  # Sides longer than this are tiled. 2048 keeps the paper model's inference within
  # about 6 GB (XLA's buffer estimate at 2048x2048; README, "Model cost").
  predict.tile_size = 2048
  predict.tile_overlap = 256  # >= 128 px of context on each side of a kept cell.
  predict.overlay_max_side = 2048
  return predict


@dataclasses.dataclass
class Prediction:
  count: float  # people in the image: the sum of `density`.
  density: np.ndarray  # (ceil(h/4), ceil(w/4)) float32 people per cell of `image`.
  image: np.ndarray  # (h, w, 3) uint8, the picture as the model saw it (after max_side).
  tiles: int  # 1 when the image ran whole.


class CrowdCounter:
  """A trained (or freshly initialised) CFRNet with everything needed to count people
  in arbitrary pictures. Runs on the first local device."""

  def __init__(self, config: ml_collections.ConfigDict, params, batch_stats):
    if "predict" not in config:
      config = ml_collections.ConfigDict(config.to_dict())
      config.predict = default_predict_config()
    self.config = config
    train.check_eval_bucket(config)
    self._multiple = pad_multiple(config.model)
    self._tile_size, self._overlap = config.predict.tile_size, config.predict.tile_overlap
    tiling.check_tiling(self._tile_size, self._overlap, self._multiple, DENSITY_STRIDE)
    self._count_fn = evaluation.make_count_fn(train.model_graphdef(config), config.data)
    self._params, self._batch_stats = params, batch_stats
    self._background = mean_colour(config.data)
    self._shapes: set[tuple[int, int]] = set()

  @classmethod
  def from_checkpoint(cls, workdir: str | Path, step: int | None = None,
                      config: ml_collections.ConfigDict | None = None) -> "CrowdCounter":
    """The model of `workdir`'s checkpoint at `step` (default: the best by evaluation
    MAE, else the latest), with the config the run saved in `workdir/config.json`
    unless `config` is given."""
    workdir = Path(workdir)
    if config is None:
      config_path = workdir / "config.json"
      if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: is {workdir} a training "
                                f"workdir? Pass the config that trained it otherwise.")
      config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    manager = checkpointing.create_checkpoint_manager(workdir, config)
    step = checkpointing.best_step(manager) if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}.")
    abstract, _ = train.abstract_train_state(config, sharding.create_mesh(config.mesh_axes))
    state = checkpointing.restore(manager, step, abstract)
    manager.close()
    logging.info("Restored step %d of %s.", step, workdir)
    return cls(config, train.local_copy(state.params), train.local_copy(state.batch_stats))

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, seed: int | None = None
                  ) -> "CrowdCounter":
    """A freshly initialised model (for tests and benchmarks: its counts mean nothing)."""
    model = build_model(config.model, config.seed if seed is None else seed)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return cls(config, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats))

  @property
  def compilations(self) -> int:
    """How many input shapes the forward pass has been compiled for so far."""
    return len(self._shapes)

  def predict(self, image: ImageSource) -> Prediction:
    pixels = load_image(image, self._background)
    pixels = np.asarray(fit_max_side(Image.fromarray(pixels), self.config.data.max_side))
    height, width = pixels.shape[:2]
    row_spans = tiling.tile_spans(height, self._tile_size, self._overlap, DENSITY_STRIDE)
    col_spans = tiling.tile_spans(width, self._tile_size, self._overlap, DENSITY_STRIDE)
    shape = (tiling.padded_side(height, self._tile_size, self._multiple),
             tiling.padded_side(width, self._tile_size, self._multiple))
    density = np.zeros((-(-height // DENSITY_STRIDE), -(-width // DENSITY_STRIDE)),
                       np.float32)
    for rows in row_spans:
      for cols in col_spans:
        tile = pixels[rows.start:rows.stop, cols.start:cols.stop]
        tile_density = self._run(pad_image(tile, shape, self._background), tile.shape[:2])
        density[_in_image(rows), _in_image(cols)] = tile_density[_in_tile(rows),
                                                                  _in_tile(cols)]
    return Prediction(count=float(np.sum(density, dtype=np.float64)), density=density,
                      image=pixels, tiles=len(row_spans) * len(col_spans))

  def count(self, image: ImageSource) -> float:
    return self.predict(image).count

  def density(self, image: ImageSource) -> np.ndarray:
    return self.predict(image).density

  def _run(self, padded: np.ndarray, valid: tuple[int, int]) -> np.ndarray:
    self._shapes.add(padded.shape[:2])
    _, density = self._count_fn(self._params, self._batch_stats, padded[None],
                                np.array([valid], np.int32))
    return np.asarray(jax.device_get(density))[0]


def _in_image(span: tiling.Span) -> slice:
  """The density cells that `span` keeps, indexed in the image's map."""
  return slice(span.keep_start // DENSITY_STRIDE, -(-span.keep_stop // DENSITY_STRIDE))


def _in_tile(span: tiling.Span) -> slice:
  """The same cells, indexed in the tile's map."""
  offset = span.start // DENSITY_STRIDE
  kept = _in_image(span)
  return slice(kept.start - offset, kept.stop - offset)


def _unique_stem(path: Path, taken: set[str]) -> str:
  stem, n = path.stem, 1
  while stem in taken:
    n += 1
    stem = f"{path.stem}_{n}"
  taken.add(stem)
  return stem


def predict_files(counter: CrowdCounter, patterns: list[str], out_dir: str | Path,
                  save_density: bool = False) -> dict:
  """Counts every image named by `patterns` (see `user_images.collect_images`) and
  writes into `out_dir`:
    counts.csv            file, count, height, width (as counted), tiles;
    overlays/NAME.png     the density map over the image, with the count;
    density/NAME.npy      the raw float32 map (with `save_density`);
    summary.json          images counted, skipped files and why, seconds, compilations.
  Unreadable files are reported by name and skipped. Returns the summary."""
  files, ignored = collect_images(patterns)
  out_dir = Path(out_dir)
  (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
  if save_density:
    (out_dir / "density").mkdir(exist_ok=True)
  if ignored:
    logging.warning("Ignored %d files without an image suffix (%s) in the given "
                    "directories.", ignored, ", ".join(IMAGE_SUFFIXES))
  from tqdm import tqdm
  rows, skipped, taken = [], {}, set()
  start, compilations = time.perf_counter(), counter.compilations
  for path in tqdm(files, desc="Counting", unit="image"):
    try:
      prediction = counter.predict(path)
    except ValueError as error:
      skipped[str(path)] = str(error)
      logging.warning("Skipped %s", error)
      continue
    stem = _unique_stem(path, taken)
    overlay.render_overlay(prediction.image, prediction.density, prediction.count,
                           counter.config.predict.overlay_max_side
                           ).save(out_dir / "overlays" / f"{stem}.png")
    if save_density:
      np.save(out_dir / "density" / f"{stem}.npy", prediction.density)
    rows.append((str(path), stem, prediction.count, *prediction.image.shape[:2],
                 prediction.tiles))
  seconds = time.perf_counter() - start
  with open(out_dir / "counts.csv", "w", newline="") as table:
    writer = csv.writer(table)
    writer.writerow(["file", "name", "count", "height", "width", "tiles"])
    writer.writerows(rows)
  summary = {"images": len(rows), "skipped": skipped, "seconds": round(seconds, 3),
             "images_per_second": round(len(rows) / seconds, 4) if rows else 0.0,
             "compilations": counter.compilations - compilations}
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  logging.info("Counted %d images in %.1f s (%d compilations) into %s; skipped %d "
               "unreadable%s", len(rows), seconds, summary["compilations"], out_dir,
               len(skipped), (": " + ", ".join(skipped)) if skipped else ".")
  return summary
