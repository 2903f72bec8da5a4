"""Predict mode's work on one video: its resumable table, overlay video and plot.

`resume_rows` keeps the complete rows an earlier run left (or starts the table afresh),
and `count_frames` counts the sampled frames after them, appending each row
(`VideoJournal`, synced every `predict.batch_size` rows), writes the overlay video and
the plot of the counts over time, and returns what the summary records. See
`predict_mode.predict_videos`, which runs it for each video.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from cfrnet_jax.inference import video_io
from cfrnet_jax.inference.counter import CrowdCounter, Prediction
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.predict_table import csv_text, drop_torn_line, read_rows, write_atomically
from cfrnet_jax.inference.video_counting import video_predictions

# The frame rate assumed for a video whose container declares none (PAL's 25 fps, a
# common camera rate); only the overlay video's playback speed depends on it.
_UNKNOWN_FPS = 25.0


def resume_rows(table: Path, header: list[str], resume: bool) -> list:
  """With `resume`, the complete rows of `table` (a torn last line dropped); when there
  are none, `table` is rewritten with the header alone."""
  rows = []
  if resume:
    drop_torn_line(table)
    rows = [[int(row[0]), *map(float, row[1:])] for row in read_rows(table, header)]
  if not rows:
    write_atomically(table, lambda file: file.write(csv_text([header]).encode()))
  return rows


def count_frames(
    counter: CrowdCounter,
    path: Path,
    out_dir: Path,
    stem: str,
    rows: list,
    regions,
    every_frames: int | None,
    every_seconds: float | None,
    overlay_video: bool,
) -> dict:
  """Counts the sampled frames of `path` after the last of `rows` into `out_dir/STEM.csv`
  (and `STEM_overlay.mp4`, `STEM.png`); returns the summary entry's new values. An
  unreadable, damaged or unwritable video is logged and its error returned."""
  resumed = len(rows)
  start = time.perf_counter()
  journal = VideoJournal(out_dir / f"{stem}.csv", rows, counter.config.predict.batch_size)
  try:
    info = video_io.video_info(path)
    after = int(rows[-1][0]) if rows else -1
    predictions = tqdm(
        video_predictions(counter, path, every_frames, every_seconds, regions, after),
        total=_expected_frames(info, every_frames, every_seconds),
        initial=resumed,
        desc=f"Counting {path.name}",
        unit="frame",
    )
    if overlay_video:
      # The overlay of a damaged video keeps the frames before the damage too.
      damage = []
      video_io.write_video(
          out_dir / f"{stem}_overlay.mp4",
          _overlays(predictions, journal.append, counter.config.predict.overlay_max_side, damage),
          _sampled_fps(info, every_frames, every_seconds),
      )
      if damage:
        raise damage[0]
    else:
      for frame, prediction in predictions:
        journal.append(_video_row(frame, prediction))
    error = None
  except (ValueError, OSError) as failure:  # unreadable, damaged, or not writable
    error = str(failure)
    logging.warning("%s %s", "Stopped at the damage:" if rows else "Skipped", failure)
  finally:
    journal.close()
  seconds = time.perf_counter() - start
  if rows:
    video_io.plot_counts(
        out_dir / f"{stem}.png",
        [row[1] for row in rows],
        [row[2] for row in rows],
        {r.name: [row[4 + i] for row in rows] for i, r in enumerate(regions)} or None,
        title=path.name,
    )
  counted = len(rows) - resumed
  logging.info(
      "Counted %d frames of %s in %.1f s into %s%s",
      counted,
      path,
      seconds,
      out_dir,
      f" ({resumed} counted before)" if resumed else "",
  )
  return {
      "frames": len(rows),
      "counted_this_run": counted,
      "finished": True,
      "seconds": round(seconds, 3),
      "frames_per_second": round(counted / seconds, 4) if counted else 0.0,
      "error": error,
  }


class VideoJournal:
  """A video's table: rows appended to `rows` and to the file, synced every `every`."""

  def __init__(self, path: Path, rows: list, every: int):
    self._file, self._rows, self._every, self._unsynced = (
        open(path, "a", newline=""),
        rows,
        every,
        [],
    )

  def append(self, row) -> None:
    self._rows.append(row)
    self._unsynced.append(row)
    if len(self._unsynced) >= self._every:
      self.sync()

  def sync(self) -> None:
    if self._unsynced:
      self._file.write(csv_text(self._unsynced))
      self._file.flush()
      os.fsync(self._file.fileno())
      self._unsynced.clear()

  def close(self) -> None:
    self.sync()
    self._file.close()


def _video_row(frame: video_io.VideoFrame, prediction: Prediction) -> tuple:
  return (
      frame.index,
      round(frame.time, 4),
      prediction.count,
      len(prediction.points),
      *prediction.regions.values(),
  )


def _overlays(predictions, append: Callable, max_side: int, damage: list) -> Iterator[np.ndarray]:
  """Appends each frame's row (`append`) and yields its overlay; a damaged video's error
  goes into `damage` and ends the overlays, so that the video written so far is kept."""
  try:
    for frame, prediction in predictions:
      append(_video_row(frame, prediction))
      yield np.asarray(draw_prediction(prediction, max_side))
  except ValueError as error:
    damage.append(error)


def _expected_frames(info: video_io.VideoInfo, every_frames, every_seconds) -> int | None:
  """About how many frames `sample_frames` keeps (for the progress bar)."""
  if every_seconds is not None:
    return math.ceil(info.duration / every_seconds) if info.duration else None
  frames = info.frames or (round(info.duration * info.fps) if info.duration and info.fps else 0)
  return math.ceil(frames / (every_frames or 1)) if frames else None


def _sampled_fps(info: video_io.VideoInfo, every_frames, every_seconds) -> float:
  """The frame rate at which the sampled frames play in real time (`_UNKNOWN_FPS` when
  the video does not say)."""
  fps = info.fps or _UNKNOWN_FPS
  if every_seconds is not None:
    return min(1.0 / every_seconds, fps)  # never more frames than the video has
  return fps / (every_frames or 1)
