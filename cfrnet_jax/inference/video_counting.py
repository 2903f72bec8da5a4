"""Counting people in videos: a video's sampled frames through a `CrowdCounter`.

    from cfrnet_jax.inference.video_counting import count_video
    count_video(counter, "clip.mp4", every_seconds=1.0)   # [VideoCount] per sampled frame

Frames come from `video_io.sample_frames` (every frame, every N-th, or one every T
seconds) and are counted as pictures are (`CrowdCounter.predict_batch`): consecutive
frames of one size go through the model `config.predict.batch_size` at a time, in one
compiled function for the whole video; a stream that changes size starts a new batch at
each change, and the regions are checked against each size. A video that breaks off
gives the frames decoded before the damage, then its error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

from cfrnet_jax.inference import video_io
from cfrnet_jax.inference.counter import CrowdCounter, Prediction, RegionSource, as_regions
from cfrnet_jax.inference.regions import check_regions


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


def video_predictions(
    counter: CrowdCounter,
    path: str | Path,
    every_frames: int | None = None,
    every_seconds: float | None = None,
    regions: RegionSource = None,
    after_frame: int = -1,
) -> Iterator[tuple[video_io.VideoFrame, Prediction]]:
  """(frame, prediction) for each sampled frame of the video at `path`
  (`video_io.sample_frames`) whose index is above `after_frame`, in order (a resumed
  video: the earlier frames are decoded, so that the sample is the same, not counted).
  Raises ValueError naming the file when it cannot be read, when a region reaches
  outside its frames, and, after the frames decoded before, when it is truncated or
  damaged."""
  regions = as_regions(regions)
  frames = video_io.sample_frames(path, every_frames, every_seconds)
  if after_frame >= 0:
    frames = (frame for frame in frames if frame.index > after_frame)
  for batch in same_size_batches(frames, counter.config.predict.batch_size):
    height, width = batch[0].pixels.shape[:2]
    check_regions(regions, width, height, str(path))
    yield from zip(batch, counter.predict_batch([frame.pixels for frame in batch], regions))


def count_video(
    counter: CrowdCounter,
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
    for frame, prediction in video_predictions(counter, path, every_frames, every_seconds, regions):
      counts.append(VideoCount(frame.index, frame.time, prediction.count, prediction.regions))
  except ValueError as error:
    if counts:
      raise DamagedVideoError(str(error), counts) from error
    raise
  return counts


def same_size_batches(
    frames: Iterable[video_io.VideoFrame], batch_size: int
) -> Iterator[list[video_io.VideoFrame]]:
  """Consecutive frames of one size, at most `batch_size` at a time, each batch given as
  soon as it is complete. When the frames break off (ValueError), the frames before the
  damage come first, then the error."""
  batch = []
  try:
    for frame in frames:
      if batch and frame.pixels.shape != batch[0].pixels.shape:
        yield batch
        batch = []
      batch.append(frame)
      if len(batch) == batch_size:
        yield batch
        batch = []
  except ValueError:
    if batch:
      yield batch
    raise
  if batch:
    yield batch
