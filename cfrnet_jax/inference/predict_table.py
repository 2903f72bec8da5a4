"""Predict mode's resumable output table: `counts.csv`, its parts, and durable writes.

Rows are appended to a journal (`Journal`: the table, or one process's part
`counts.process-I.csv`), each batch flushed and synced, so that a killed run leaves
complete rows only, except perhaps a torn last line (`drop_torn_line`, `read_rows`). Side
files and the final table are written to a temporary name, synced and renamed
(`write_atomically`, `sync_folder`). `done_rows` reads what earlier runs counted, and
`merge` ends a run by rewriting the table from itself and the parts, one row per file in
the order of the file list. A table written with other columns is refused
(`OutputMismatchError`). See `predict_mode` for how a run uses them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

from absl import logging

TABLE = "counts.csv"
COLUMNS = ["file", "name", "count", "height", "width", "tiles", "points", "bytes", "modified_ns"]


class OutputMismatchError(ValueError):
  """`--out` holds a table written with other columns (other regions, an older version)."""


def unique_stem(path: Path, taken: set[str]) -> str:
  """`path`'s stem, numbered (`_2`, `_3`, ...) while it is in `taken`; added to `taken`."""
  stem, n = path.stem, 1
  while stem in taken:
    n += 1
    stem = f"{path.stem}_{n}"
  taken.add(stem)
  return stem


def region_columns(regions) -> list[str]:
  return [f"region:{region.name}" for region in regions]


def csv_text(rows) -> str:
  text = io.StringIO()
  csv.writer(text).writerows(rows)
  return text.getvalue()


def write_atomically(path: Path, write: Callable) -> None:
  """`write(binary file)` into a temporary file beside `path`, synced, then renamed to
  `path`: a reader (or a killed run's successor) sees the old file or the whole new one."""
  temporary = path.with_name(f".{path.name}.tmp")
  with open(temporary, "wb") as file:
    write(file)
    file.flush()
    os.fsync(file.fileno())
  os.replace(temporary, path)


def sync_folder(folder: Path) -> None:
  """Makes the renames into `folder` durable (they live in the folder's entry list)."""
  descriptor = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def drop_torn_line(path: Path) -> None:
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


def read_rows(path: Path, header: list[str]) -> list[list[str]]:
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


class Journal:
  """A table that rows are appended to, each batch flushed and synced."""

  def __init__(self, path: Path, header: list[str]):
    drop_torn_line(path)
    fresh = not path.exists() or path.stat().st_size == 0
    self._file = open(path, "a", newline="")
    if fresh:
      self.append([header])

  def append(self, rows: list) -> None:
    self._file.write(csv_text(rows))
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()


def file_key(path: Path) -> tuple[str, str] | None:
  """(size in bytes, modification time in ns) as the table stores them; None when the
  file cannot be stat'ed (it is skipped with its reason when loaded)."""
  try:
    info = path.stat()
  except OSError:
    return None
  return str(info.st_size), str(info.st_mtime_ns)


def part_path(out_dir: Path, index: int) -> Path:
  """The part that process `index` of a multi-process run appends its rows to."""
  return out_dir / f"counts.process-{index:05d}.csv"


def journals(out_dir: Path) -> list[Path]:
  """The table, then every process's part (a part's rows are newer than the table's)."""
  return [out_dir / TABLE, *sorted(out_dir.glob("counts.process-*.csv"))]


def done_rows(out_dir: Path, header: list[str]) -> dict[str, list[str]]:
  """{file: its newest complete row} over the table and the parts."""
  done = {}
  for journal in journals(out_dir):
    for row in read_rows(journal, header):
      done[row[0]] = row
  return done


def merge(out_dir: Path, header: list[str], files: list[Path]) -> int:
  """Rewrites the table from itself and the parts (one row per file, in the order of
  `files`, then rows of files no longer listed, in their order), then removes the
  parts. Returns the number of rows."""
  done = done_rows(out_dir, header)
  order = {str(path): i for i, path in enumerate(files)}
  rows = sorted(done.values(), key=lambda row: order.get(row[0], len(order)))
  write_atomically(out_dir / TABLE, lambda file: file.write(csv_text([header, *rows]).encode()))
  for part in journals(out_dir)[1:]:
    part.unlink()
  sync_folder(out_dir)
  return len(rows)
