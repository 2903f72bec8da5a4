"""Counting people in the user's own pictures: `CrowdCounter`.

    counter = CrowdCounter.from_checkpoint("runs/quickstart")
    counter.count("photo.jpg")          # float, people in the picture
    counter.density(pil_image)          # (ceil(H/4), ceil(W/4)) people per 4x4 cell
    counter.locate("photo.jpg")         # (N, 2) head positions (x, y) in picture pixels
    counter.predict(numpy_array, regions={"gate": [[x, y], ...]})
                                        # Prediction: count, density, points, regions, ...
    counter.count_video("clip.mp4", every_seconds=1.0)  # [VideoCount] per sampled frame

Each picture is loaded as `user_images.load_image` describes (EXIF rotation, grayscale,
transparency, 16-bit), resized only by the config's `data.max_side` (as in evaluation, so
that the scale matches training), padded as the model pads (`data.geometry`), or cut
into overlapping tiles when a side is longer than `predict.tile_size` (`tiling`). The
count is the sum of the returned density map, exactly.

Head points come from the density map (`localization.locate_heads`, as
`config.predict.point_*` says) and region counts integrate it over polygons
(`inference.regions`); both are given in the picture's own pixels, before `max_side`.

The forward pass is `evaluation.make_count_fn`, jitted once per padded shape and batch
size; `CrowdCounter.compilations` says how many (= XLA compilations) it has run. Video
frames (`count_video`, `video_predictions`) share one size, so they run
`config.predict.batch_size` at a time through one compiled function (the last batch is
filled up with copies of its last frame); frames that need tiles run one at a time. A
counter restores only the parameters and BatchNorm statistics of a checkpoint
(`checkpointing.restore_variables`), never the optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from cfrnet_jax import checkpointing, localization
from cfrnet_jax.data.geometry import ceil_div, fit_max_side, mean_colour, pad_image
from cfrnet_jax.evaluation import make_count_fn
from cfrnet_jax.inference import tiling, video_io
from cfrnet_jax.inference.regions import (
    Region,
    check_regions,
    load_regions,
    parse_regions,
    region_counts,
)
from cfrnet_jax.inference.user_images import ImageSource, describe, load_image
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, pad_multiple
from cfrnet_jax.state import ModelVariables, init_variables, model_graphdef

# Regions as `CrowdCounter.predict` takes them: a JSON file, parsed `Region`s, or what
# `regions.parse_regions` reads (a list of {"name", "polygon"} or a {name: polygon} dict).
RegionSource = str | Path | Sequence[Region] | Sequence[dict] | dict | None


@dataclasses.dataclass
class Prediction:
  count: float  # people in the image: the sum of `density`.
  density: np.ndarray  # (ceil(h/4), ceil(w/4)) float32 people per cell of `image`.
  image: np.ndarray  # (h, w, 3) uint8, the picture as the model saw it (after max_side).
  tiles: int  # 1 when the image ran whole.
  scale: tuple[float, float]  # (x, y) pixels of `image` per pixel of the given picture.
  points: np.ndarray  # (N, 2) float64 (x, y) heads, in pixels of the given picture.
  regions: dict[str, float]  # people in each region asked for, in the order given.
  region_polygons: tuple[Region, ...] = ()  # those regions (picture pixels).


@dataclasses.dataclass(frozen=True)
class VideoCount:
  frame: int  # index of the frame in the video
  time: float  # seconds from the video's start
  count: float
  regions: dict[str, float]


class DamagedVideoError(ValueError):
  """A video that broke off after some frames; `counts` are those frames' counts."""

  def __init__(self, message: str, counts: list[VideoCount]):
    super().__init__(message)
    self.counts = counts


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
    (`checkpointing.check_counting_config`: prediction settings may differ, the density
    scale or image size may not). Reads only parameters and BatchNorm statistics."""
    if config is None:
      config = checkpointing.load_run_config(workdir)
    else:
      checkpointing.check_counting_config(workdir, config)
    step, variables = checkpointing.restore_variables(workdir, config.model, step)
    logging.info("Restored step %d of %s.", step, workdir)
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
    picture = load_image(image, self._background, self.config.predict.max_megapixels)
    check_regions(regions, picture.shape[1], picture.shape[0], describe(image))
    pixels = self._model_view(picture)
    density, tiles = self._density(pixels)
    return self._prediction(picture.shape[:2], pixels, density, tiles, regions)

  def _model_view(self, picture: np.ndarray) -> np.ndarray:
    """The picture resized by `data.max_side`, as evaluation sees dataset images (the
    array itself, not a copy, when it fits)."""
    max_side = self.config.data.max_side
    if not max_side or max(picture.shape[:2]) <= max_side:
      return picture
    return np.asarray(fit_max_side(Image.fromarray(picture), max_side))

  def _density(self, pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """(density of the whole (h, w, 3) image, tiles it took); tiles when a side is
    longer than `predict.tile_size`."""
    height, width = pixels.shape[:2]
    row_spans = tiling.tile_spans(height, self._tile_size, self._overlap, DENSITY_STRIDE)
    col_spans = tiling.tile_spans(width, self._tile_size, self._overlap, DENSITY_STRIDE)
    shape = self._padded_shape(height, width)
    density = np.zeros(
        (ceil_div(height, DENSITY_STRIDE), ceil_div(width, DENSITY_STRIDE)), np.float32
    )
    for rows in row_spans:
      for cols in col_spans:
        tile = pixels[rows.start : rows.stop, cols.start : cols.stop]
        tile_density = self._run([pad_image(tile, shape, self._background)], tile.shape[:2])[0]
        density[
            tiling.cells_in_image(rows, DENSITY_STRIDE), tiling.cells_in_image(cols, DENSITY_STRIDE)
        ] = tile_density[
            tiling.cells_in_tile(rows, DENSITY_STRIDE), tiling.cells_in_tile(cols, DENSITY_STRIDE)
        ]
    return density, len(row_spans) * len(col_spans)

  def _padded_shape(self, height: int, width: int) -> tuple[int, int]:
    return (
        tiling.padded_side(height, self._tile_size, self._multiple),
        tiling.padded_side(width, self._tile_size, self._multiple),
    )

  def _prediction(
      self,
      picture_size: tuple[int, int],
      pixels: np.ndarray,
      density: np.ndarray,
      tiles: int,
      regions: tuple[Region, ...],
  ) -> Prediction:
    height, width = pixels.shape[:2]
    scale = (width / picture_size[1], height / picture_size[0])
    points = localization.locate_heads(density, DENSITY_STRIDE, **self._point_options)
    return Prediction(
        count=float(np.sum(density, dtype=np.float64)),
        density=density,
        image=pixels,
        tiles=tiles,
        scale=scale,
        points=points / np.array(scale),
        regions=region_counts(density, list(regions), scale, (height, width)),
        region_polygons=regions,
    )

  def count(self, image: ImageSource) -> float:
    return self.predict(image).count

  def density(self, image: ImageSource) -> np.ndarray:
    return self.predict(image).density

  def locate(self, image: ImageSource) -> np.ndarray:
    """(N, 2) head positions (x, y) in the picture's pixels (`localization`)."""
    return self.predict(image).points

  def video_predictions(
      self,
      path: str | Path,
      every_frames: int | None = None,
      every_seconds: float | None = None,
      regions: RegionSource = None,
  ) -> Iterator[tuple[video_io.VideoFrame, Prediction]]:
    """(frame, prediction) for each sampled frame of the video at `path`
    (`video_io.sample_frames`), in order. Consecutive frames of one size run
    `predict.batch_size` at a time (a stream that changes size starts a new batch).
    Raises ValueError naming the file when it cannot be read, and, after the frames
    decoded before, when it is truncated or damaged."""
    regions = as_regions(regions)
    frames = video_io.sample_frames(path, every_frames, every_seconds)
    batch = []
    while True:
      try:
        frame = next(frames, None)
      except ValueError:  # damaged: first the frames decoded before the damage
        yield from self._predict_frames(batch, regions)
        raise
      if frame is None or (batch and frame.pixels.shape != batch[0].pixels.shape):
        yield from self._predict_frames(batch, regions)
        batch = []
      if frame is None:
        return
      if not batch:
        check_regions(regions, frame.pixels.shape[1], frame.pixels.shape[0], str(path))
      batch.append(frame)
      if len(batch) == self.config.predict.batch_size:
        yield from self._predict_frames(batch, regions)
        batch = []

  def count_video(
      self,
      path: str | Path,
      every_frames: int | None = None,
      every_seconds: float | None = None,
      regions: RegionSource = None,
  ) -> list[VideoCount]:
    """The count (and region counts) of each sampled frame of a video; see
    `video_predictions`. For a truncated or damaged file it raises `DamagedVideoError`,
    whose `counts` holds the frames counted before the damage."""
    counts = []
    try:
      for frame, prediction in self.video_predictions(path, every_frames, every_seconds, regions):
        counts.append(VideoCount(frame.index, frame.time, prediction.count, prediction.regions))
    except ValueError as error:
      if counts:
        raise DamagedVideoError(str(error), counts) from error
      raise
    return counts

  def _predict_frames(
      self, frames: list[video_io.VideoFrame], regions: tuple[Region, ...]
  ) -> Iterator[tuple[video_io.VideoFrame, Prediction]]:
    """Same-size frames: one batched forward pass when they fit in one tile."""
    if not frames:
      return
    views = [self._model_view(frame.pixels) for frame in frames]
    height, width = views[0].shape[:2]
    if max(height, width) > self._tile_size:
      densities = [self._density(view) for view in views]
    else:
      shape = self._padded_shape(height, width)
      padded = [pad_image(view, shape, self._background) for view in views]
      padded += padded[-1:] * (self.config.predict.batch_size - len(padded))
      cells = (ceil_div(height, DENSITY_STRIDE), ceil_div(width, DENSITY_STRIDE))
      maps = self._run(padded, (height, width))
      densities = [(maps[i, : cells[0], : cells[1]], 1) for i in range(len(frames))]
    for frame, view, (density, tiles) in zip(frames, views, densities):
      yield frame, self._prediction(frame.pixels.shape[:2], view, density, tiles, regions)

  def _run(self, padded: list[np.ndarray], valid: tuple[int, int]) -> np.ndarray:
    """(b, h, w) density maps of same-shape padded images whose pictures are `valid`."""
    batch = np.stack(padded)
    self._shapes.add(batch.shape[:3])
    valid_sizes = np.array([valid] * len(batch), np.int32)
    _, density = self._count_fn(self._variables, batch, valid_sizes)
    return np.asarray(jax.device_get(density))
