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
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from cfrnet_jax.data.geometry import mean_colour
from cfrnet_jax.inference import video_io
from cfrnet_jax.inference.counter import CrowdCounter, Prediction, RegionSource, as_regions
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.regions import check_regions
from cfrnet_jax.inference.user_images import IMAGE_SUFFIXES, collect_images, load_picture
from cfrnet_jax.inference.video_counting import video_predictions

# The frame rate assumed for a video whose container declares none (PAL's 25 fps, a
# common camera rate); only the overlay video's playback speed depends on it.
_UNKNOWN_FPS = 25.0
# Threads that decode pictures ahead of the device (Pillow releases the GIL while it
# decodes); at most this many, and no more than the host's cores.
DECODE_THREADS = 4
# How long a process waits at a barrier for the others (a slower host may be hours
# behind): 7 days, in milliseconds (the coordination service takes an int32).
_BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_TABLE = "counts.csv"
_COLUMNS = ["file", "name", "count", "height", "width", "tiles", "points", "bytes", "modified_ns"]


class OutputMismatchError(ValueError):
  """`--out` holds a table written with other columns (other regions, an older version)."""


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


def _csv_text(rows) -> str:
  text = io.StringIO()
  csv.writer(text).writerows(rows)
  return text.getvalue()


def _write_atomically(path: Path, write: Callable) -> None:
  """`write(binary file)` into a temporary file beside `path`, synced, then renamed to
  `path`: a reader (or a killed run's successor) sees the old file or the whole new one."""
  temporary = path.with_name(f".{path.name}.tmp")
  with open(temporary, "wb") as file:
    write(file)
    file.flush()
    os.fsync(file.fileno())
  os.replace(temporary, path)


def _sync_folder(folder: Path) -> None:
  """Makes the renames into `folder` durable (they live in the folder's entry list)."""
  descriptor = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def _drop_torn_line(path: Path) -> None:
  """Cuts a last line that a killed run left unfinished (the file ends without a newline)."""
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    return
  with open(path, "rb+") as file:
    end = size
    while end > 0:  # back from the end, a block at a time, to the last newline
      begin = max(0, end - 65536)
      file.seek(begin)
      block = file.read(end - begin)
      newline = block.rfind(b"\n")
      if newline >= 0:
        end = begin + newline + 1
        break
      end = begin
    if end == size:
      return
    logging.warning("Dropped the unfinished last line of %s (a run killed while writing).", path)
    file.truncate(end)
    file.flush()
    os.fsync(file.fileno())


def _read_rows(path: Path, header: list[str]) -> list[list[str]]:
  """The complete rows of a table or journal (a torn last line and rows of the wrong
  length are left out); OutputMismatchError when its header is not `header`."""
  try:
    with open(path, newline="") as file:
      text = file.read()
  except FileNotFoundError:
    return []
  if not text.endswith("\n"):
    text = text[: text.rfind("\n") + 1]
  records = list(csv.reader(io.StringIO(text, newline="")))
  if not records:
    return []
  if records[0] != header:
    raise OutputMismatchError(
        f"{path} was written with the columns {records[0]}, not {header} (other regions, or "
        "an earlier version of predict mode): use another --out, or the same --regions."
    )
  return [row for row in records[1:] if len(row) == len(header)]


class _Journal:
  """A table that rows are appended to, each batch flushed and synced."""

  def __init__(self, path: Path, header: list[str]):
    _drop_torn_line(path)
    fresh = not path.exists() or path.stat().st_size == 0
    self._file = open(path, "a", newline="")
    if fresh:
      self.append([header])

  def append(self, rows: list) -> None:
    self._file.write(_csv_text(rows))
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()


def _file_key(path: Path) -> tuple[str, str] | None:
  """(size in bytes, modification time in ns) as the table stores them; None when the
  file cannot be stat'ed (it is skipped with its reason when loaded)."""
  try:
    info = path.stat()
  except OSError:
    return None
  return str(info.st_size), str(info.st_mtime_ns)


def _processes(index: int | None, count: int | None) -> tuple[int, int]:
  if index is None or count is None:
    import jax

    index, count = jax.process_index(), jax.process_count()
  if not 0 <= index < count:
    raise ValueError(f"process {index} of {count}: need 0 <= index < count.")
  return index, count


_barriers = collections.Counter()


def _barrier(name: str, count: int) -> None:
  """Waits until every process has reached the barrier `name` (nothing on one process).
  Uses the coordination service of `jax.distributed`, which waits as long as a slower
  host needs, rather than a device collective (gloo's connection gives up after 30 s)."""
  if count == 1:
    return
  _barriers[name] += 1
  barrier_id = f"cfrnet_jax predict: {name} ({_barriers[name]})"
  from jax._src import distributed

  client = distributed.global_state.client
  if client is None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(barrier_id)
  else:
    client.wait_at_barrier(barrier_id, _BARRIER_TIMEOUT_MS)


def _journals(out_dir: Path) -> list[Path]:
  """The table, then every process's part (a part's rows are newer than the table's)."""
  return [out_dir / _TABLE, *sorted(out_dir.glob("counts.process-*.csv"))]


def _done_rows(out_dir: Path, header: list[str]) -> dict[str, list[str]]:
  """{file: its newest complete row} over the table and the parts."""
  done = {}
  for journal in _journals(out_dir):
    for row in _read_rows(journal, header):
      done[row[0]] = row
  return done


def _merge(out_dir: Path, header: list[str], files: list[Path]) -> int:
  """Rewrites the table from itself and the parts (one row per file, in the order of
  `files`, then rows of files no longer listed, in their order), then removes the
  parts. Returns the number of rows."""
  done = _done_rows(out_dir, header)
  order = {str(path): i for i, path in enumerate(files)}
  rows = sorted(done.values(), key=lambda row: order.get(row[0], len(order)))
  _write_atomically(out_dir / _TABLE, lambda file: file.write(_csv_text([header, *rows]).encode()))
  for part in _journals(out_dir)[1:]:
    part.unlink()
  _sync_folder(out_dir)
  return len(rows)


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
  index, count = _processes(process_index, process_count)
  files, ignored = collect_images(patterns)
  out_dir = Path(out_dir)
  folders = ("overlays", "points") + (("density",) if save_density else ())
  for folder in folders:
    (out_dir / folder).mkdir(parents=True, exist_ok=True)
  if ignored and index == 0:
    logging.warning(
        "Ignored %d files without an image suffix (%s) in the given directories.",
        ignored,
        ", ".join(IMAGE_SUFFIXES),
    )
  header = _COLUMNS + _region_columns(regions)
  journal_path = out_dir / (_TABLE if count == 1 else f"counts.process-{index:05d}.csv")
  if index == 0:  # what killed runs left: temporary side files, and a torn table line
    for folder in folders:
      for temporary in (out_dir / folder).glob(".*.tmp"):
        temporary.unlink()
  journal = _Journal(journal_path, header)
  try:
    done = _done_rows(out_dir, header)
    _barrier("tables read", count)
    names, pending, already = _plan(files, done)
    mine = [path for i, path in enumerate(files) if i % count == index and str(path) in pending]
    start, compilations = time.perf_counter(), counter.compilations
    skipped, counted = {}, 0
    for batch in _count_pictures(counter, mine, regions, skipped, decode_threads):
      rows = []
      for path, prediction in batch:
        name = names[str(path)]
        _write_side_files(counter, out_dir, name, prediction, save_density)
        rows.append(_picture_row(path, name, prediction, pending[str(path)]))
      for folder in folders:
        _sync_folder(out_dir / folder)
      journal.append(rows)
      counted += len(rows)
    seconds = time.perf_counter() - start
  finally:
    journal.close()
  mine_summary = {
      "counted": counted,
      "skipped": skipped,
      "seconds": round(seconds, 3),
      "compilations": counter.compilations - compilations,
  }
  if count > 1:
    _write_atomically(
        out_dir / f"summary.process-{index:05d}.json",
        lambda file: file.write(json.dumps(mine_summary).encode()),
    )
    _barrier("counted", count)
  if index == 0:
    parts = [mine_summary]
    if count > 1:
      part_files = sorted(out_dir.glob("summary.process-*.json"))
      parts = [json.loads(part.read_text()) for part in part_files]
    images = _merge(out_dir, header, files)
    summary = _summary(parts, images, already, files)
    _write_atomically(
        out_dir / "summary.json", lambda file: file.write(json.dumps(summary, indent=2).encode())
    )
    if count > 1:
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
  _barrier("merged", count)
  return json.loads((out_dir / "summary.json").read_text())


def _plan(
    files: list[Path], done: dict[str, list[str]]
) -> tuple[dict[str, str], dict[str, tuple[str, str]], int]:
  """(name of each file, {file to count: its (bytes, modified_ns)}, how many are done).
  A done picture keeps its name; a new one takes its stem, numbered when taken."""
  taken = {row[1] for row in done.values()}
  names, pending, already = {}, {}, 0
  for path in files:
    key, row = _file_key(path), done.get(str(path))
    if row is not None and key == (row[7], row[8]):
      already += 1
      continue
    names[str(path)] = row[1] if row is not None else _unique_stem(path, taken)
    pending[str(path)] = key or ("", "")
  return names, pending, already


def _summary(parts: list[dict], images: int, already: int, files: list[Path]) -> dict:
  order = {str(path): i for i, path in enumerate(files)}
  skipped = {k: v for part in parts for k, v in part["skipped"].items()}
  counted = sum(part["counted"] for part in parts)
  seconds = max(part["seconds"] for part in parts)
  return {
      "images": images,
      "counted": counted,
      "already_done": already,
      "skipped": dict(sorted(skipped.items(), key=lambda item: order.get(item[0], 0))),
      "seconds": seconds,
      "images_per_second": round(counted / seconds, 4) if counted and seconds else 0.0,
      "compilations": max(part["compilations"] for part in parts),
      "processes": len(parts),
  }


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
  _write_atomically(out_dir / "overlays" / f"{name}.png", lambda f: overlay.save(f, format="PNG"))
  points = _csv_text([["x", "y"], *np.round(prediction.points, 2)]).encode()
  _write_atomically(out_dir / "points" / f"{name}.csv", lambda f: f.write(points))
  if save_density:
    _write_atomically(out_dir / "density" / f"{name}.npy", lambda f: np.save(f, prediction.density))


def _count_pictures(
    counter: CrowdCounter, paths: list[Path], regions, skipped: dict, threads: int
) -> Iterator[list[tuple[Path, Prediction]]]:
  """Batches of (path, prediction) for `paths`: pictures are decoded by `threads` threads
  a few ahead of the device, and those that run at one padded shape wait for each other
  to fill a batch of `predict.batch_size` (a picture that needs tiles runs alone). At most
  a few batches' worth of decoded pictures wait; past that the fullest batch runs part
  filled. Unreadable files go into `skipped` with the reason."""
  config = counter.config
  batch_size = config.predict.batch_size
  background = mean_colour(config.data.mean)
  threads = max(1, min(threads, os.cpu_count() or 1))

  def load(path: Path):
    view, size = load_picture(path, background, config.predict.max_megapixels, config.data.max_side)
    check_regions(regions, size[1], size[0], str(path))
    return view, size

  def run(group: list) -> list[tuple[Path, Prediction]]:
    paths_, views, sizes = zip(*group)
    return list(zip(paths_, counter.predict_batch(list(views), regions, list(sizes))))

  waiting: dict = {}  # padded shape -> [(path, view, size)], in order of arrival
  held, most_held = 0, 4 * batch_size
  with (
      concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool,
      tqdm(total=len(paths), desc="Counting", unit="image") as progress,
  ):
    ahead = collections.deque()
    queue = iter(paths)
    for path in queue:
      ahead.append((path, pool.submit(load, path)))
      if len(ahead) >= 2 * threads + batch_size:
        break
    while ahead:
      path, future = ahead.popleft()
      for more in queue:
        ahead.append((more, pool.submit(load, more)))
        break
      try:
        view, size = future.result()
      except ValueError as error:
        skipped[str(path)] = str(error)
        logging.warning("Skipped %s", error)
        progress.update()
        continue
      shape = counter.batch_shape(*view.shape[:2])
      if shape is None:  # tiles, one at a time
        yield run([(path, view, size)])
        progress.update()
        continue
      group = waiting.setdefault(shape, [])
      group.append((path, view, size))
      held += 1
      if len(group) == batch_size or held > most_held:
        fullest = shape if len(group) == batch_size else max(waiting, key=lambda s: len(waiting[s]))
        ready = waiting.pop(fullest)
        held -= len(ready)
        yield run(ready)
        progress.update(len(ready))
    for group in waiting.values():
      yield run(group)
      progress.update(len(group))


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

  if jax.process_count() > 1 and not _ONE_PROCESS:
    if jax.process_index() == 0:
      with _one_process():
        predict_videos(
            counter, videos, out_dir.parent, every_frames, every_seconds, regions, overlay_video
        )
    _barrier("videos", jax.process_count())
    return json.loads((out_dir / "summary.json").read_text())
  out_dir.mkdir(parents=True, exist_ok=True)
  header = ["frame", "time", "count", "points", *_region_columns(regions)]
  sampling = {"every_frames": every_frames, "every_seconds": every_seconds}
  try:
    before = json.loads((out_dir / "summary.json").read_text())
  except (FileNotFoundError, ValueError):
    before = {}
  summary, taken = dict(before), {entry["name"] for entry in before.values()}
  batch_size = counter.config.predict.batch_size

  def record():  # rewritten after every video (and at each start): a killed run keeps it
    text = json.dumps(summary, indent=2).encode()
    _write_atomically(out_dir / "summary.json", lambda file: file.write(text))

  for video in videos:
    path = Path(video)
    key = _file_key(path)
    old = before.get(str(path))
    same = old is not None and [old.get("bytes"), old.get("modified_ns")] == list(key or ())
    same = same and old.get("sampling") == sampling and old.get("header") == header
    if same and old.get("finished"):
      summary[str(path)] = {**old, "counted_this_run": 0}
      logging.info("%s was counted before (%d frames): skipped.", path, old["frames"])
      continue
    stem = old["name"] if old is not None else _unique_stem(path, taken)
    table = out_dir / f"{stem}.csv"
    rows = []
    if same and not overlay_video:
      _drop_torn_line(table)
      rows = [[int(row[0]), *map(float, row[1:])] for row in _read_rows(table, header)]
    if not rows:
      _write_atomically(table, lambda file: file.write(_csv_text([header]).encode()))
    resumed = len(rows)
    entry = {
        "name": stem,
        "frames": resumed,
        "finished": False,
        "bytes": key[0] if key else None,
        "modified_ns": key[1] if key else None,
        "sampling": sampling,
        "header": header,
    }
    summary[str(path)] = entry
    record()
    start = time.perf_counter()
    journal = _VideoJournal(table, rows, batch_size)
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
    entry.update(
        frames=len(rows),
        counted_this_run=counted,
        finished=True,
        seconds=round(seconds, 3),
        frames_per_second=round(counted / seconds, 4) if counted else 0.0,
        error=error,
    )
    record()
    logging.info(
        "Counted %d frames of %s in %.1f s into %s%s",
        counted,
        path,
        seconds,
        out_dir,
        f" ({resumed} counted before)" if resumed else "",
    )
  return {str(Path(video)): summary[str(Path(video))] for video in videos}


_ONE_PROCESS = []  # non-empty while process 0 counts the videos of a multi-process run


@contextlib.contextmanager
def _one_process():
  _ONE_PROCESS.append(True)
  try:
    yield
  finally:
    _ONE_PROCESS.pop()


class _VideoJournal:
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
      self._file.write(_csv_text(self._unsynced))
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
