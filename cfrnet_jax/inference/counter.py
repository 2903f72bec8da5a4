"""Counting people in the user's own pictures: `CrowdCounter`.

    counter = CrowdCounter.from_checkpoint("runs/quickstart")
    counter.count("photo.jpg")          # float, people in the picture
    counter.density(pil_image)          # (ceil(H/4), ceil(W/4)) people per 4x4 cell
    counter.predict(numpy_array)        # Prediction: count, density, image, tiles

Each picture is loaded as `user_images.load_image` describes (EXIF rotation, grayscale,
transparency, 16-bit), resized only by the config's `data.max_side` (as in evaluation, so
that the scale matches training), padded as the model pads (`data.geometry`), or cut
into overlapping tiles when a side is longer than `predict.tile_size` (`tiling`). The
count is the sum of the returned density map, exactly.

The forward pass is `evaluation.make_count_fn`, jitted once per padded shape;
`CrowdCounter.compilations` says how many shapes (= XLA compilations) it has run. A
counter restores only the parameters and BatchNorm statistics of a checkpoint
(`checkpointing.restore_variables`), never the optimizer state.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from cfrnet_jax import checkpointing
from cfrnet_jax.data.geometry import ceil_div, fit_max_side, mean_colour, pad_image
from cfrnet_jax.evaluation import make_count_fn
from cfrnet_jax.inference import tiling
from cfrnet_jax.inference.user_images import ImageSource, load_image
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, pad_multiple
from cfrnet_jax.state import ModelVariables, init_variables, model_graphdef


@dataclasses.dataclass
class Prediction:
  count: float  # people in the image: the sum of `density`.
  density: np.ndarray  # (ceil(h/4), ceil(w/4)) float32 people per cell of `image`.
  image: np.ndarray  # (h, w, 3) uint8, the picture as the model saw it (after max_side).
  tiles: int  # 1 when the image ran whole.


class CrowdCounter:
  """A trained (or freshly initialised) CFRNet with everything needed to count people
  in arbitrary pictures. Runs on the first local device."""

  def __init__(self, config: ml_collections.ConfigDict, variables: ModelVariables):
    self.config = config
    self._multiple = pad_multiple(config.model)
    self._tile_size, self._overlap = config.predict.tile_size, config.predict.tile_overlap
    tiling.check_tiling(self._tile_size, self._overlap, self._multiple, DENSITY_STRIDE)
    self._count_fn = make_count_fn(model_graphdef(config.model), config.data)
    self._variables = variables
    self._background = mean_colour(config.data.mean)
    self._shapes: set[tuple[int, int]] = set()

  @classmethod
  def from_checkpoint(
      cls,
      workdir: str | Path,
      step: int | None = None,
      config: ml_collections.ConfigDict | None = None,
  ) -> CrowdCounter:
    """The model of `workdir`'s checkpoint at `step` (default: the best by evaluation
    MAE, else the latest), with the config the run saved in `workdir/config.json`
    unless `config` is given. Reads only parameters and BatchNorm statistics."""
    config = checkpointing.load_run_config(workdir) if config is None else config
    step, variables = checkpointing.restore_variables(workdir, config.model, step)
    logging.info("Restored step %d of %s.", step, workdir)
    return cls(config, variables)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, seed: int | None = None) -> CrowdCounter:
    """A freshly initialised model (for tests and benchmarks: its counts mean nothing)."""
    return cls(config, init_variables(config.model, config.seed if seed is None else seed))

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
    shape = (
        tiling.padded_side(height, self._tile_size, self._multiple),
        tiling.padded_side(width, self._tile_size, self._multiple),
    )
    density = np.zeros(
        (ceil_div(height, DENSITY_STRIDE), ceil_div(width, DENSITY_STRIDE)), np.float32
    )
    for rows in row_spans:
      for cols in col_spans:
        tile = pixels[rows.start : rows.stop, cols.start : cols.stop]
        tile_density = self._run(pad_image(tile, shape, self._background), tile.shape[:2])
        density[
            tiling.cells_in_image(rows, DENSITY_STRIDE), tiling.cells_in_image(cols, DENSITY_STRIDE)
        ] = tile_density[
            tiling.cells_in_tile(rows, DENSITY_STRIDE), tiling.cells_in_tile(cols, DENSITY_STRIDE)
        ]
    return Prediction(
        count=float(np.sum(density, dtype=np.float64)),
        density=density,
        image=pixels,
        tiles=len(row_spans) * len(col_spans),
    )

  def count(self, image: ImageSource) -> float:
    return self.predict(image).count

  def density(self, image: ImageSource) -> np.ndarray:
    return self.predict(image).density

  def _run(self, padded: np.ndarray, valid: tuple[int, int]) -> np.ndarray:
    self._shapes.add(padded.shape[:2])
    _, density = self._count_fn(self._variables, padded[None], np.array([valid], np.int32))
    return np.asarray(jax.device_get(density))[0]
