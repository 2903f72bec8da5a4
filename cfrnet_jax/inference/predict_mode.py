"""Predict mode: count pictures and videos, and write tables, overlays, points and plots.

`launch.py --mode predict` calls `predict_files` for pictures and `predict_videos` for
videos; so can any script holding a `CrowdCounter`. Unreadable files are reported by name
with the reason, skipped and counted in the summary; the run does not stop for them. A
truncated or damaged video keeps the rows of the frames decoded before the damage, and
the summary says where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from cfrnet_jax.inference import video_io
from cfrnet_jax.inference.counter import CrowdCounter, Prediction, RegionSource, as_regions
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.user_images import IMAGE_SUFFIXES, collect_images
from cfrnet_jax.inference.video_counting import video_predictions

# The frame rate assumed for a video whose container declares none (PAL's 25 fps, a
# common camera rate); only the overlay video's playback speed depends on it.
_UNKNOWN_FPS = 25.0


def _unique_stem(path: Path, taken: set[str]) -> str:
  stem, n = path.stem, 1
  while stem in taken:
    n += 1
    stem = f"{path.stem}_{n}"
  taken.add(stem)
  return stem


def _region_columns(regions) -> list[str]:
  return [f"region:{region.name}" for region in regions]


def _write_table(path: Path, header: list[str], rows: list) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as table:
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)


def predict_files(
    counter: CrowdCounter,
    patterns: list[str],
    out_dir: str | Path,
    save_density: bool = False,
    regions: RegionSource = None,
) -> dict:
  """Counts every image named by `patterns` (see `user_images.collect_images`) and
  writes into `out_dir`:
    counts.csv            file, name, count, height, width (as counted), tiles, points
                          (heads located), and one `region:NAME` column per region;
    overlays/NAME.png     the density map over the image, with the count, the head
                          points and the regions;
    points/NAME.csv       x, y of each head located, in the picture's pixels;
    density/NAME.npy      the raw float32 map (with `save_density`);
    summary.json          images counted, skipped files and why, seconds, compilations.
  Unreadable files, and pictures a region does not fit, are reported by name and
  skipped. Returns the summary."""
  regions = as_regions(regions)
  files, ignored = collect_images(patterns)
  out_dir = Path(out_dir)
  for folder in ("overlays", "points") + (("density",) if save_density else ()):
    (out_dir / folder).mkdir(parents=True, exist_ok=True)
  if ignored:
    logging.warning(
        "Ignored %d files without an image suffix (%s) in the given directories.",
        ignored,
        ", ".join(IMAGE_SUFFIXES),
    )
  rows, skipped, taken = [], {}, set()
  start, compilations = time.perf_counter(), counter.compilations
  for path in tqdm(files, desc="Counting", unit="image"):
    try:
      prediction = counter.predict(path, regions)
    except ValueError as error:
      skipped[str(path)] = str(error)
      logging.warning("Skipped %s", error)
      continue
    stem = _unique_stem(path, taken)
    draw_prediction(prediction, counter.config.predict.overlay_max_side).save(
        out_dir / "overlays" / f"{stem}.png"
    )
    _write_table(out_dir / "points" / f"{stem}.csv", ["x", "y"], np.round(prediction.points, 2))
    if save_density:
      np.save(out_dir / "density" / f"{stem}.npy", prediction.density)
    rows.append(
        (
            str(path),
            stem,
            prediction.count,
            *prediction.image.shape[:2],
            prediction.tiles,
            len(prediction.points),
            *prediction.regions.values(),
        )
    )
  seconds = time.perf_counter() - start
  _write_table(
      out_dir / "counts.csv",
      ["file", "name", "count", "height", "width", "tiles", "points", *_region_columns(regions)],
      rows,
  )
  summary = {
      "images": len(rows),
      "skipped": skipped,
      "seconds": round(seconds, 3),
      "images_per_second": round(len(rows) / seconds, 4) if rows else 0.0,
      "compilations": counter.compilations - compilations,
  }
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  logging.info(
      "Counted %d images in %.1f s (%d compilations) into %s; skipped %d unreadable%s",
      len(rows),
      seconds,
      summary["compilations"],
      out_dir,
      len(skipped),
      (": " + ", ".join(skipped)) if skipped else ".",
  )
  return summary


def predict_videos(
    counter: CrowdCounter,
    videos: list[str],
    out_dir: str | Path,
    every_frames: int | None = None,
    every_seconds: float | None = None,
    regions: RegionSource = None,
    overlay_video: bool = False,
) -> dict:
  """Counts the sampled frames of each video (`video_counting.video_predictions`) and
  writes into `out_dir/video`:
    NAME.csv              frame, time (s), count, points, one `region:NAME` column each;
    NAME.png              the count (and region counts) over time;
    NAME_overlay.mp4      with `overlay_video`: the overlays of the sampled frames;
    summary.json          per video: frames counted, seconds, frames/s, and the error
                          for an unreadable (nothing counted) or damaged (counted up to
                          the damage) file.
  Returns the summary."""
  video_io.check_sampling(every_frames, every_seconds)
  regions = as_regions(regions)
  out_dir = Path(out_dir) / "video"
  out_dir.mkdir(parents=True, exist_ok=True)
  summary, taken = {}, set()
  for video in videos:
    path = Path(video)
    stem = _unique_stem(path, taken)
    start, rows = time.perf_counter(), []
    try:
      info = video_io.video_info(path)
      predictions = tqdm(
          video_predictions(counter, path, every_frames, every_seconds, regions),
          total=_expected_frames(info, every_frames, every_seconds),
          desc=f"Counting {path.name}",
          unit="frame",
      )
      if overlay_video:
        # The overlay of a damaged video keeps the frames before the damage too.
        damage = []
        video_io.write_video(
            out_dir / f"{stem}_overlay.mp4",
            _overlays(predictions, rows, counter.config.predict.overlay_max_side, damage),
            _sampled_fps(info, every_frames, every_seconds),
        )
        if damage:
          raise damage[0]
      else:
        for frame, prediction in predictions:
          rows.append(_video_row(frame, prediction))
      error = None
    except (ValueError, OSError) as failure:  # unreadable, damaged, or not writable
      error = str(failure)
      logging.warning("%s %s", "Stopped at the damage:" if rows else "Skipped", failure)
    seconds = time.perf_counter() - start
    _write_table(
        out_dir / f"{stem}.csv",
        ["frame", "time", "count", "points", *_region_columns(regions)],
        rows,
    )
    if rows:
      video_io.plot_counts(
          out_dir / f"{stem}.png",
          [row[1] for row in rows],
          [row[2] for row in rows],
          {r.name: [row[4 + i] for row in rows] for i, r in enumerate(regions)} or None,
          title=path.name,
      )
    summary[str(path)] = {
        "name": stem,
        "frames": len(rows),
        "seconds": round(seconds, 3),
        "frames_per_second": round(len(rows) / seconds, 4) if rows else 0.0,
        "error": error,
    }
    # Rewritten after every video: an interrupted run keeps what it finished.
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logging.info("Counted %d frames of %s in %.1f s into %s", len(rows), path, seconds, out_dir)
  return summary


def _video_row(frame: video_io.VideoFrame, prediction: Prediction) -> tuple:
  return (
      frame.index,
      round(frame.time, 4),
      prediction.count,
      len(prediction.points),
      *prediction.regions.values(),
  )


def _overlays(predictions, rows: list, max_side: int, damage: list) -> Iterator[np.ndarray]:
  """Appends each frame's row to `rows` and yields its overlay; a damaged video's error
  goes into `damage` and ends the overlays, so that the video written so far is kept."""
  try:
    for frame, prediction in predictions:
      rows.append(_video_row(frame, prediction))
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
