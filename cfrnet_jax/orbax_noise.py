"""What Orbax and TensorStore print about the reads they abandon when a checkpoint fails.

When one array of a checkpoint cannot be read, Orbax closes its event loop with the reads
of all the other arrays still pending. Python then reports, up to the process's exit,
thousands of lines that hide the one-line warning naming the damaged step:
  - each abandoned coroutine and asyncio task when it is collected (`sys.unraisablehook`,
    and asyncio's "exception was never retrieved" log records);
  - each read that completes after the loop closed: TensorStore's threads hand its result
    to `loop.call_soon_threadsafe`, which raises "Event loop is closed" with no one to
    catch it (`sys.unraisablehook` too, without an object).

`quiet_abandoned_reads` drops exactly those reports, from the moment a reader sees that a
read failed (`checkpoint_repair.first_readable`); reads that succeed leave everything as
it is, and every other report goes through. The few reports that come before the reader
sees the error, while it unwinds through Orbax after the loop closed, are printed.
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback

_ABANDONED_READERS = ("orbax", "tensorstore", "_read_array_index")


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


def quiet_abandoned_reads() -> None:
  """Drops, from now to the process's exit, the reports of the reads that a failed
  checkpoint read abandoned (installed once), then collects those reads at once, so that
  their reports come now rather than in a later log or at exit."""
  previous = sys.unraisablehook
  if not getattr(previous, "drops_abandoned_reads", False):

    def hook(unraisable):
      if not _is_abandoned_read(unraisable):
        previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda record: not (
            "exception was never retrieved" in record.getMessage()
            and any(name in record.getMessage() for name in _ABANDONED_READERS)
        )
    )
  gc.collect()
