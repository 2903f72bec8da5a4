"""Counting people in the user's own pictures: `CrowdCounter`.

    counter = CrowdCounter.from_checkpoint("runs/quickstart")
    counter.count("photo.jpg")          # float, people in the picture
    counter.density(pil_image)          # (ceil(H/4), ceil(W/4)) people per 4x4 cell
    counter.locate("photo.jpg")         # (N, 2) head positions (x, y) in picture pixels
    counter.predict(numpy_array, regions={"gate": [[x, y], ...]})
                                        # Prediction: count, density, points, regions, ...
    counter.predict_batch(frames)       # same-size pictures in one forward pass

Videos are counted by `video_counting`, which batches their frames through
`predict_batch`.

Each picture is loaded as `user_images.load_picture` describes (EXIF rotation, grayscale,
transparency, 16-bit) and resized only by the config's `data.max_side` (as in evaluation,
so that the scale matches training), becoming the array the model sees in one
conversion; it is padded as the model pads (`data.geometry`), or cut into overlapping
tiles when a side is longer than `predict.tile_size` (`tiling`). The count is the sum of
the returned density map: for a picture that runs whole, the sum over its cells that the
forward pass computes on the device (`evaluation.make_count_fn`, float32); for a tiled
one, the sum of the stitched map (float64), since each tile's own sum also holds cells
that another tile keeps.

Head points come from the density map (`localization.locate_heads`, as
`config.predict.point_*` says) and region counts integrate it over polygons
(`inference.regions`); both are in the picture's own pixels, before `max_side`. Points
are scaled to those pixels here, once; the overlay (`overlay.draw_prediction`) draws
them from there.

The forward pass is jitted once per padded shape and batch size;
`CrowdCounter.compilations` says how many (= XLA compilations) it has run.
`predict_batch` fills a batch up to `config.predict.batch_size` with copies of its last
picture, so that every batch of one padded shape (`batch_shape`) runs one compiled
function, whatever the sizes of its pictures (each masks its own count); pictures that
need tiles run one tile at a time. A counter restores only the parameters and BatchNorm
statistics of a checkpoint (`checkpointing.restore_variables`), never the optimizer
state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from cfrnet_jax import checkpointing, localization
from cfrnet_jax.data.geometry import ceil_div, mean_colour, pad_image
from cfrnet_jax.evaluation import make_count_fn
from cfrnet_jax.inference import tiling
from cfrnet_jax.inference.regions import (
    Region,
    check_regions,
    load_regions,
    parse_regions,
    region_counts,
)
from cfrnet_jax.inference.user_images import ImageSource, describe, load_picture, model_view
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, pad_multiple
from cfrnet_jax.state import ModelVariables, init_variables, model_graphdef

# Regions as `CrowdCounter.predict` takes them: a JSON file, parsed `Region`s, or what
# `regions.parse_regions` reads (a list of {"name", "polygon"} or a {name: polygon} dict).
RegionSource = str | Path | Sequence[Region] | Sequence[dict] | dict | None


@dataclasses.dataclass
class Prediction:
  count: float  # people in the image: the sum of `density` (see the module docstring).
  density: np.ndarray  # (ceil(h/4), ceil(w/4)) float32 people per cell of `image`.
  image: np.ndarray  # (h, w, 3) uint8, the picture as the model saw it (after max_side).
  tiles: int  # 1 when the image ran whole.
  picture_size: tuple[int, int]  # (height, width) of the given picture.
  points: np.ndarray  # (N, 2) float64 (x, y) heads, in pixels of the given picture.
  regions: dict[str, float]  # people in each region asked for, in the order given.
  region_polygons: tuple[Region, ...] = ()  # those regions (picture pixels).

  @property
  def scale(self) -> tuple[float, float]:
    """(x, y) pixels of `image` per pixel of the given picture."""
    height, width = self.image.shape[:2]
    return (width / self.picture_size[1], height / self.picture_size[0])


def as_regions(regions: RegionSource) -> tuple[Region, ...]:
  """`RegionSource` -> parsed regions (none for None)."""
  if regions is None:
    return ()
  if isinstance(regions, (str, Path)):
    return tuple(load_regions(regions))
  if isinstance(regions, (list, tuple)) and all(isinstance(r, Region) for r in regions):
    return tuple(regions)
  return tuple(parse_regions(regions, "regions argument"))


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
    self._point_options = localization.point_options(config)
    if not config.predict.max_megapixels > 0:
      raise ValueError(
          f"predict.max_megapixels must be positive, got {config.predict.max_megapixels}."
      )
    if config.predict.batch_size < 1:
      raise ValueError(f"predict.batch_size must be at least 1, got {config.predict.batch_size}.")
    self._shapes: set[tuple[int, int, int]] = set()

  @classmethod
  def from_checkpoint(
      cls,
      workdir: str | Path,
      step: int | None = None,
      config: ml_collections.ConfigDict | None = None,
  ) -> CrowdCounter:
    """The model of `workdir`'s checkpoint at `step` (default: the best by evaluation
    MAE, else the latest), with the config the run saved in `workdir/config.json`
    unless `config` is given; a given config must count as the run's does
    (`run_config.check_counting_config`: prediction settings may differ, the density
    scale or image size may not). Reads only parameters and BatchNorm statistics."""
    config, step, variables = checkpointing.restore_model(workdir, step, config)
    return cls(config, variables)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, seed: int | None = None) -> CrowdCounter:
    """A freshly initialised model (for tests and benchmarks: its counts mean nothing)."""
    return cls(config, init_variables(config.model, config.seed if seed is None else seed))

  @property
  def compilations(self) -> int:
    """How many input shapes (batch, height, width) the forward pass has been compiled
    for so far."""
    return len(self._shapes)

  def predict(self, image: ImageSource, regions: RegionSource = None) -> Prediction:
    """Counts `image`, locates its heads and counts each of `regions` (polygons in the
    picture's pixels; ValueError when one reaches outside the picture)."""
    regions = as_regions(regions)
    view, picture_size = load_picture(
        image, self._background, self.config.predict.max_megapixels, self.config.data.max_side
    )
    check_regions(regions, picture_size[1], picture_size[0], describe(image))
    return self._predict_views([view], [picture_size], regions, batch_size=1)[0]

  def predict_batch(
      self,
      pictures: Sequence[np.ndarray],
      regions: RegionSource = None,
      picture_sizes: Sequence[tuple[int, int]] | None = None,
  ) -> list[Prediction]:
    """`predict` for 1 to `predict.batch_size` (H, W, 3) uint8 RGB pictures that run at
    one padded shape (`batch_shape`: decoded video frames, or pictures of nearby sizes),
    in one forward pass when they fit in one tile. `picture_sizes` gives each picture's
    (height, width) before it was fitted to `data.max_side` (`user_images.load_picture`),
    where points and regions are measured (default: its own size). The caller checks
    that `regions` fit the pictures (`regions.check_regions`), naming their source."""
    if not 1 <= len(pictures) <= self.config.predict.batch_size:
      raise ValueError(
          f"predict_batch takes 1 to predict.batch_size = {self.config.predict.batch_size} "
          f"pictures, got {len(pictures)}."
      )
    shapes = {p.shape for p in pictures}
    if any(len(s) != 3 or s[2] != 3 for s in shapes):
      raise ValueError(f"predict_batch takes (H, W, 3) RGB pictures, got shapes {sorted(shapes)}.")
    if any(p.dtype != np.uint8 for p in pictures):
      raise ValueError("predict_batch takes uint8 pictures.")
    views = [model_view(p, self._background, self.config.data.max_side) for p in pictures]
    if len({self.batch_shape(*view.shape[:2]) for view in views}) > 1:
      raise ValueError(
          "predict_batch takes pictures that run at one padded shape, got shapes "
          f"{sorted(shapes)}."
      )
    sizes = [p.shape[:2] for p in pictures] if picture_sizes is None else list(picture_sizes)
    return self._predict_views(
        views, sizes, as_regions(regions), batch_size=self.config.predict.batch_size
    )

  def batch_shape(self, height: int, width: int) -> tuple[int, int] | None:
    """The padded (height, width) at which a model view of this size runs, or None when
    it runs in tiles; pictures with the same shape can share a `predict_batch`."""
    if max(height, width) > self._tile_size:
      return None
    return self._input_shape(height, width)

  def count(self, image: ImageSource) -> float:
    return self.predict(image).count

  def density(self, image: ImageSource) -> np.ndarray:
    return self.predict(image).density

  def locate(self, image: ImageSource) -> np.ndarray:
    """(N, 2) head positions (x, y) in the picture's pixels (`localization`)."""
    return self.predict(image).points

  def _predict_views(
      self,
      views: list[np.ndarray],
      picture_sizes: list[tuple[int, int]],
      regions: tuple[Region, ...],
      batch_size: int,
  ) -> list[Prediction]:
    """Predictions for model views that share a `batch_shape`, of pictures of
    `picture_sizes` (height, width each): one forward pass of `batch_size` when they fit
    in a tile, else tiles."""
    shape = self.batch_shape(*views[0].shape[:2])
    if shape is None:
      results = [self._tiled(view) for view in views]
    else:
      counts, maps = self._run(views, shape, batch_size)
      results = [(counts[i], maps[i], 1) for i in range(len(views))]
    predictions = []
    for view, picture_size, (count, density, tiles) in zip(views, picture_sizes, results):
      height, width = view.shape[:2]
      scale = np.array([width / picture_size[1], height / picture_size[0]])
      predictions.append(
          Prediction(
              count=float(count),
              density=density,
              image=view,
              tiles=tiles,
              picture_size=tuple(picture_size),
              points=_on_picture(
                  localization.locate_heads(density, DENSITY_STRIDE, **self._point_options) / scale,
                  picture_size,
              ),
              regions=region_counts(density, list(regions), tuple(scale), (height, width)),
              region_polygons=regions,
          )
      )
    return predictions

  def _tiled(self, view: np.ndarray) -> tuple[float, np.ndarray, int]:
    """(count, density, tiles) of an (h, w, 3) image with a side longer than
    `predict.tile_size`, stitched from overlapping tiles (`tiling`)."""
    height, width = view.shape[:2]
    row_spans = tiling.tile_spans(height, self._tile_size, self._overlap, DENSITY_STRIDE)
    col_spans = tiling.tile_spans(width, self._tile_size, self._overlap, DENSITY_STRIDE)
    shape = self._input_shape(height, width)
    density = np.zeros(
        (ceil_div(height, DENSITY_STRIDE), ceil_div(width, DENSITY_STRIDE)), np.float32
    )
    for rows in row_spans:
      for cols in col_spans:
        tile = view[rows.start : rows.stop, cols.start : cols.stop]
        _, (tile_density,) = self._run([tile], shape, 1)
        density[
            tiling.cells_in_image(rows, DENSITY_STRIDE), tiling.cells_in_image(cols, DENSITY_STRIDE)
        ] = tile_density[
            tiling.cells_in_tile(rows, DENSITY_STRIDE), tiling.cells_in_tile(cols, DENSITY_STRIDE)
        ]
    count = float(np.sum(density, dtype=np.float64))
    return count, density, len(row_spans) * len(col_spans)

  def _input_shape(self, height: int, width: int) -> tuple[int, int]:
    """The padded (height, width) of the model input for an image of this size, or for
    each of its tiles (`tiling.tile_side`)."""
    return (
        tiling.tile_side(height, self._tile_size, self._multiple),
        tiling.tile_side(width, self._tile_size, self._multiple),
    )

  def _run(
      self, images: list[np.ndarray], shape: tuple[int, int], batch_size: int
  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(counts (n,), n density maps (ceil(h/4), ceil(w/4)) each) of n <= `batch_size`
    (h, w, 3) images no larger than `shape`, each padded to `shape` and the batch filled
    up to `batch_size` with copies of the last; each image's own size masks its count."""
    padded = [pad_image(image, shape, self._background) for image in images]
    batch = np.stack(padded + padded[-1:] * (batch_size - len(padded)))
    self._shapes.add(batch.shape[:3])
    sizes = [image.shape[:2] for image in images]
    valid_sizes = np.array(sizes + sizes[-1:] * (batch_size - len(sizes)), np.int32)
    counts, density = jax.device_get(self._count_fn(self._variables, batch, valid_sizes))
    maps = [
        np.ascontiguousarray(
            density[i, : ceil_div(height, DENSITY_STRIDE), : ceil_div(width, DENSITY_STRIDE)]
        )
        for i, (height, width) in enumerate(sizes)
    ]
    return counts[: len(images)], maps


def _on_picture(points: np.ndarray, picture_size: tuple[int, int]) -> np.ndarray:
  """`points` (x, y) held inside the (height, width) picture: a head in the last density
  cell of a side that is not a multiple of the stride is placed at the cell's centre,
  which can lie up to half a cell beyond the picture's edge."""
  return np.clip(points, 0.0, [float(picture_size[1]), float(picture_size[0])])
