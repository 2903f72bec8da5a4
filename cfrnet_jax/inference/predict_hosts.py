"""Predict mode on several hosts: each process's share, its part files, the barriers.

Under `jax.distributed`, process i of n (`processes`) counts the pictures i, i + n,
i + 2n, ... of the file list (`share`), appending its rows to its part
`counts.process-I.csv` (`journal_path`) and writing its summary to
`summary.process-I.json` (`write_summary_part`); process 0 merges the summaries
(`merged_summary`) after the table (`predict_table.merge`). The processes meet at
barriers of the coordination service (`barrier`). Videos are counted by process 0 alone
(`one_process`). See `predict_mode` for the whole flow.
"""

from __future__ import annotations

import collections
import contextlib
import json
from pathlib import Path

from cfrnet_jax.inference import predict_table

# How long a process waits at a barrier for the others (a slower host may be hours
# behind): 7 days, in milliseconds (the coordination service takes an int32).
_BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000


def processes(index: int | None, count: int | None) -> tuple[int, int]:
  """(index, count) as given, or `jax.process_index()`, `jax.process_count()`."""
  if index is None or count is None:
    import jax

    index, count = jax.process_index(), jax.process_count()
  if not 0 <= index < count:
    raise ValueError(f"process {index} of {count}: need 0 <= index < count.")
  return index, count


_barriers = collections.Counter()


def barrier(name: str, count: int) -> None:
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


def share(files: list[Path], index: int, count: int) -> list[Path]:
  """The files that process `index` of `count` counts: every `count`-th from `index`."""
  return [path for i, path in enumerate(files) if i % count == index]


def journal_path(out_dir: Path, index: int, count: int) -> Path:
  """Where process `index` of `count` appends its rows: the table itself on one process."""
  if count == 1:
    return out_dir / predict_table.TABLE
  return predict_table.part_path(out_dir, index)


def write_summary_part(out_dir: Path, index: int, summary: dict) -> None:
  predict_table.write_atomically(
      out_dir / f"summary.process-{index:05d}.json",
      lambda file: file.write(json.dumps(summary).encode()),
  )


def summary_parts(out_dir: Path) -> list[Path]:
  return sorted(out_dir.glob("summary.process-*.json"))


def merged_summary(parts: list[dict], images: int, already: int, files: list[Path]) -> dict:
  """The run's summary from each process's (one part on one process): skipped files in
  the order of `files`, the slowest process's seconds and compilations."""
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


_ONE_PROCESS = []  # non-empty while process 0 counts the videos of a multi-process run


def in_one_process() -> bool:
  """Whether process 0 is inside `one_process` (counting for all the processes)."""
  return bool(_ONE_PROCESS)


@contextlib.contextmanager
def one_process():
  _ONE_PROCESS.append(True)
  try:
    yield
  finally:
    _ONE_PROCESS.pop()
