"""Predict mode: count pictures and videos, and write tables, overlays, points and plots.

`launch.py --mode predict` calls `predict_files` for pictures and `predict_videos` for
videos; so can any script holding a `CrowdCounter`. Unreadable files are reported by name
with the reason, skipped and counted in the summary; the run does not stop for them. A
truncated or damaged video keeps the rows of the frames decoded before the damage, and
the summary says where it stopped.

Resuming. A picture's row is appended to the table as soon as its batch is counted, after
its side files (overlay, points, density), each written to a temporary name, synced and
renamed; the row is then flushed and synced (`os.fsync`). So a run killed at any moment
(SIGKILL, a lost machine) leaves complete side files and complete rows only, except
perhaps a torn last line, which the next run drops. A rerun with the same `--out` skips
each picture whose row is there with the same path, size in bytes and modification time
(`bytes`, `modified_ns` columns: reading every file again to hash it would cost as much
as decoding it), counts the rest, and ends by rewriting the table (temporary file and
rename) with one row per picture, in the order of the file list: the table an
uninterrupted run writes. A picture changed since is counted again and its row replaced.

Several hosts. Under `jax.distributed` (launch.py joins the other processes as training
does), process i of n counts the pictures i, i + n, i + 2n, ... of the file list (the
list `user_images.collect_images` makes: the same on every host), appending its rows to
`counts.process-I.csv`; `--out` must be one folder that every host sees (a shared file
system). The processes read what is done and agree on the names before any of them
counts (a barrier), and after the last one has counted, process 0 merges the parts into
`counts.csv` and `summary.json`, the table one host writes.

The parts: `predict_table` (the resumable table and durable writes), `predict_hosts`
(each process's share, its part files, the barriers), `predict_batching` (decoding ahead
and same-shape batches) and `predict_video` (one video's table, overlay and plot).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from absl import logging

from cfrnet_jax.inference import predict_hosts, predict_table, predict_video, video_io
from cfrnet_jax.inference.counter import CrowdCounter, Prediction, RegionSource, as_regions
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.predict_batching import DECODE_THREADS, count_pictures
from cfrnet_jax.inference.predict_table import (
    csv_text,
    file_key,
    sync_folder,
    unique_stem,
    write_atomically,
)
from cfrnet_jax.inference.user_images import IMAGE_SUFFIXES, collect_images


def predict_files(
    counter: CrowdCounter,
    patterns: list[str],
    out_dir: str | Path,
    save_density: bool = False,
    regions: RegionSource = None,
    process_index: int | None = None,
    process_count: int | None = None,
    decode_threads: int = DECODE_THREADS,
) -> dict:
  """Counts every image named by `patterns` (see `user_images.collect_images`) and
  writes into `out_dir`:
    counts.csv            file, name, count, height, width (as counted), tiles, points
                          (heads located), bytes and modified_ns (the file's size and
                          modification time when counted: what a rerun compares), and
                          one `region:NAME` column per region;
    overlays/NAME.png     the density map over the image, with the count, the head
                          points and the regions;
    points/NAME.csv       x, y of each head located, in the picture's pixels;
    density/NAME.npy      the raw float32 map (with `save_density`);
    summary.json          pictures in the table, counted in this run, already done;
                          skipped files and why, seconds, compilations.
  Pictures whose model views run at one padded shape are counted `predict.batch_size` at
  a time (`CrowdCounter.predict_batch`), decoded by `decode_threads` threads ahead of
  the device. A rerun into the same `out_dir` resumes, and `process_index` of
  `process_count` (default: `jax.process_index()`, `jax.process_count()`) counts its
  share; see the module docstring. Unreadable files, and pictures a region does not
  fit, are reported by name and skipped. Returns the summary."""
  regions = as_regions(regions)
  index, count = predict_hosts.processes(process_index, process_count)
  files, ignored = collect_images(patterns)
  out_dir = Path(out_dir)
  folders = _side_folders(out_dir, save_density)
  if ignored and index == 0:
    logging.warning(
        "Ignored %d files without an image suffix (%s) in the given directories.",
        ignored,
        ", ".join(IMAGE_SUFFIXES),
    )
  header = predict_table.COLUMNS + predict_table.region_columns(regions)
  if index == 0:  # what killed runs left: temporary side files, and a torn table line
    for folder in folders:
      for temporary in folder.glob(".*.tmp"):
        temporary.unlink()
  journal = predict_table.Journal(predict_hosts.journal_path(out_dir, index, count), header)
  try:
    done = predict_table.done_rows(out_dir, header)
    predict_hosts.barrier("tables read", count)
    names, pending, already = _plan(files, done)
    mine = [path for path in predict_hosts.share(files, index, count) if str(path) in pending]
    mine_summary = _count_into(
        counter, mine, out_dir, folders, names, pending, regions, journal, decode_threads
    )
  finally:
    journal.close()
  if count > 1:
    predict_hosts.write_summary_part(out_dir, index, mine_summary)
    predict_hosts.barrier("counted", count)
  if index == 0:
    _finish(out_dir, header, files, already, mine_summary, count)
  predict_hosts.barrier("merged", count)
  return json.loads((out_dir / "summary.json").read_text())


def _side_folders(out_dir: Path, save_density: bool) -> list[Path]:
  """The folders of the side files, made when missing."""
  names = ("overlays", "points") + (("density",) if save_density else ())
  folders = [out_dir / name for name in names]
  for folder in folders:
    folder.mkdir(parents=True, exist_ok=True)
  return folders


def _plan(
    files: list[Path], done: dict[str, list[str]]
) -> tuple[dict[str, str], dict[str, tuple[str, str]], int]:
  """(name of each file, {file to count: its (bytes, modified_ns)}, how many are done).
  A done picture keeps its name; a new one takes its stem, numbered when taken."""
  taken = {row[1] for row in done.values()}
  names, pending, already = {}, {}, 0
  for path in files:
    key, row = file_key(path), done.get(str(path))
    if row is not None and key == (row[7], row[8]):
      already += 1
      continue
    names[str(path)] = row[1] if row is not None else unique_stem(path, taken)
    pending[str(path)] = key or ("", "")
  return names, pending, already


def _count_into(
    counter: CrowdCounter,
    paths: list[Path],
    out_dir: Path,
    folders: list[Path],
    names: dict[str, str],
    pending: dict[str, tuple[str, str]],
    regions,
    journal: predict_table.Journal,
    decode_threads: int,
) -> dict:
  """Counts `paths` batch by batch: each batch's side files into `folders` (a density
  map when `folders` has `density`), synced, then its rows appended to `journal`. Returns
  this process's summary."""
  save_density = out_dir / "density" in folders
  start, compilations = time.perf_counter(), counter.compilations
  skipped, counted = {}, 0
  for batch in count_pictures(counter, paths, regions, skipped, decode_threads):
    rows = []
    for path, prediction in batch:
      name = names[str(path)]
      _write_side_files(counter, out_dir, name, prediction, save_density)
      rows.append(_picture_row(path, name, prediction, pending[str(path)]))
    for folder in folders:
      sync_folder(folder)
    journal.append(rows)
    counted += len(rows)
  return {
      "counted": counted,
      "skipped": skipped,
      "seconds": round(time.perf_counter() - start, 3),
      "compilations": counter.compilations - compilations,
  }


def _finish(
    out_dir: Path, header: list[str], files: list[Path], already: int, mine: dict, count: int
) -> None:
  """Process 0, after every process has counted: the table rewritten from itself and the
  parts, and summary.json from every process's summary."""
  parts, part_files = [mine], []
  if count > 1:
    part_files = predict_hosts.summary_parts(out_dir)
    parts = [json.loads(part.read_text()) for part in part_files]
  images = predict_table.merge(out_dir, header, files)
  summary = predict_hosts.merged_summary(parts, images, already, files)
  write_atomically(
      out_dir / "summary.json", lambda file: file.write(json.dumps(summary, indent=2).encode())
  )
  for part in part_files:
    part.unlink()
  logging.info(
      "Counted %d images in %.1f s (%d compilations) into %s (%d already done); "
      "skipped %d unreadable%s",
      summary["counted"],
      summary["seconds"],
      summary["compilations"],
      out_dir,
      already,
      len(summary["skipped"]),
      (": " + ", ".join(summary["skipped"])) if summary["skipped"] else ".",
  )


def _picture_row(path: Path, name: str, prediction: Prediction, key: tuple[str, str]) -> tuple:
  return (
      str(path),
      name,
      prediction.count,
      *prediction.image.shape[:2],
      prediction.tiles,
      len(prediction.points),
      *key,
      *prediction.regions.values(),
  )


def _write_side_files(
    counter: CrowdCounter, out_dir: Path, name: str, prediction: Prediction, save_density: bool
) -> None:
  overlay = draw_prediction(prediction, counter.config.predict.overlay_max_side)
  write_atomically(out_dir / "overlays" / f"{name}.png", lambda f: overlay.save(f, format="PNG"))
  points = csv_text([["x", "y"], *np.round(prediction.points, 2)]).encode()
  write_atomically(out_dir / "points" / f"{name}.csv", lambda f: f.write(points))
  if save_density:
    write_atomically(out_dir / "density" / f"{name}.npy", lambda f: np.save(f, prediction.density))


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
    summary.json          per video: frames counted (in all, and in this run), seconds,
                          frames/s, whether it is finished, and the error for an
                          unreadable (nothing counted) or damaged (counted up to the
                          damage) file.
  Rows are appended as frames are counted, synced every `predict.batch_size` frames. A
  rerun into the same folder skips each finished video whose size, modification time and
  sampling are unchanged, and resumes an unfinished one after its last complete row (from
  the start with `overlay_video`: a video file cannot be appended to). On several
  processes, process 0 counts the videos and the others wait. Returns the summary."""
  video_io.check_sampling(every_frames, every_seconds)
  regions = as_regions(regions)
  out_dir = Path(out_dir) / "video"
  import jax

  if jax.process_count() > 1 and not predict_hosts.in_one_process():
    if jax.process_index() == 0:
      with predict_hosts.one_process():
        predict_videos(
            counter, videos, out_dir.parent, every_frames, every_seconds, regions, overlay_video
        )
    predict_hosts.barrier("videos", jax.process_count())
    return json.loads((out_dir / "summary.json").read_text())
  out_dir.mkdir(parents=True, exist_ok=True)
  header = ["frame", "time", "count", "points", *predict_table.region_columns(regions)]
  sampling = {"every_frames": every_frames, "every_seconds": every_seconds}
  before = _video_summary(out_dir)
  summary, taken = dict(before), {entry["name"] for entry in before.values()}

  def record():  # rewritten after every video (and at each start): a killed run keeps it
    text = json.dumps(summary, indent=2).encode()
    write_atomically(out_dir / "summary.json", lambda file: file.write(text))

  for video in videos:
    path = Path(video)
    key, old = file_key(path), before.get(str(path))
    same = _unchanged(old, key, sampling, header)
    if same and old.get("finished"):
      summary[str(path)] = {**old, "counted_this_run": 0}
      logging.info("%s was counted before (%d frames): skipped.", path, old["frames"])
      continue
    stem = old["name"] if old is not None else unique_stem(path, taken)
    rows = predict_video.resume_rows(out_dir / f"{stem}.csv", header, same and not overlay_video)
    entry = {
        "name": stem,
        "frames": len(rows),
        "finished": False,
        "bytes": key[0] if key else None,
        "modified_ns": key[1] if key else None,
        "sampling": sampling,
        "header": header,
    }
    summary[str(path)] = entry
    record()
    entry.update(
        predict_video.count_frames(
            counter, path, out_dir, stem, rows, regions, every_frames, every_seconds, overlay_video
        )
    )
    record()
  return {str(Path(video)): summary[str(Path(video))] for video in videos}


def _video_summary(out_dir: Path) -> dict:
  """What earlier runs recorded in `out_dir/summary.json` ({} when it is missing or torn)."""
  try:
    return json.loads((out_dir / "summary.json").read_text())
  except (FileNotFoundError, ValueError):
    return {}


def _unchanged(old: dict | None, key, sampling: dict, header: list[str]) -> bool:
  """Whether a video's entry `old` was counted from the same file (size, modification
  time), with the same sampling and columns."""
  same = old is not None and [old.get("bytes"), old.get("modified_ns")] == list(key or ())
  return same and old.get("sampling") == sampling and old.get("header") == header
