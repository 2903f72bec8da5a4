"""One training run per workdir: a second run on a workdir that a live run is training
in stops at once, naming the first, instead of interleaving its checkpoints with the
other's."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import jax

LOCK_FILE = "training.lock"


@contextlib.contextmanager
def held(workdir: str | Path) -> Iterator[None]:
  """Holds `workdir/training.lock` for a training run (process 0 of a multi-host job;
  the other hosts share its fate).

  An advisory `flock` on the file: the kernel releases it when the process ends in any
  way, SIGKILL included, so a crashed run never leaves a stale lock, and no one has to
  delete a file by hand. The file says who holds it (host, pid, start time) for the
  message that refuses a second run."""
  if jax.process_index() != 0:
    yield
    return
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  handle = open(path, "a+")
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      raise RuntimeError(
          f"{workdir} is in use by a running training run ({holder}; lock {path}). Two runs "
          "in one workdir would overwrite each other's checkpoints: wait for it to end, "
          "stop it, or give this run another --workdir."
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"host {socket.gethostname()}, pid {os.getpid()}, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    handle.flush()
    yield
  finally:
    handle.close()  # releases the lock
