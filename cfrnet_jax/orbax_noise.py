"""What Orbax and TensorStore print about the reads they abandon when a checkpoint fails.

When one array of a checkpoint cannot be read, Orbax closes its event loop with the reads
of all the other arrays still pending. Python then reports, up to the process's exit,
thousands of lines that hide the one-line warning naming the damaged step:
  - each abandoned coroutine and asyncio task when it is collected (`sys.unraisablehook`,
    and asyncio's "exception was never retrieved" log records);
  - each read that completes after the loop closed: TensorStore's threads hand its result
    to `loop.call_soon_threadsafe`, which raises "Event loop is closed" with no one to
    catch it (`sys.unraisablehook` too, without an object).

`drop_abandoned_reads` installs, once, before a reader's first checkpoint read
(`checkpoint_repair.first_readable`), a filter that drops exactly those reports: a read
that succeeds makes none, so it changes nothing there, and every other report goes
through. Installed before the read rather than when its failure is seen, it also drops
the reports that come while the reader unwinds through Orbax after the loop closed.
`collect_abandoned_reads`, called once a read failed, makes those reports come at once
rather than in a later log line or at exit.
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback

_ABANDONED_READERS = ("orbax", "tensorstore", "_read_array_index")
# A TensorStore read's own Future carries its error without Python frames; the error names
# the OCDBT database (Orbax's checkpoint format) it was reading.
_ABANDONED_READ_ERRORS = ("in ocdbt database",)


def _is_abandoned_read(unraisable) -> bool:
  """Whether an unraisable report is about a read Orbax abandoned: an Orbax or TensorStore
  coroutine or task, or a result delivered to the event loop Orbax closed."""
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  where = repr(unraisable.object) + " ".join(frame.filename for frame in frames)
  if any(name in where for name in _ABANDONED_READERS):
    return True
  return (
      unraisable.object is None
      and isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"
      and any(frame.name == "call_soon_threadsafe" for frame in frames)
  )


def _is_abandoned_record(record: logging.LogRecord) -> bool:
  """Whether an asyncio log record is an abandoned Orbax or TensorStore task's "exception
  was never retrieved" (named in its message, or in the frames of its exception)."""
  if "exception was never retrieved" not in record.getMessage():
    return False
  where = record.getMessage()
  if record.exc_info and record.exc_info[2] is not None:
    where += " ".join(frame.filename for frame in traceback.extract_tb(record.exc_info[2]))
  return any(name in where.lower() for name in _ABANDONED_READERS + _ABANDONED_READ_ERRORS)


def drop_abandoned_reads() -> None:
  """Drops, from now to the process's exit, the reports of the reads that a failed
  checkpoint read abandons (installed once; a no-op when already installed)."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_reads", False):
    return

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(lambda record: not _is_abandoned_record(record))


def collect_abandoned_reads() -> None:
  """Collects the reads a failed read abandoned, so that their reports come now."""
  gc.collect()
