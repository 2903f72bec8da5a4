"""What the processes of a multi-host run tell each other, through device collectives.

Every process must call these at the same point of the run; on one process they ask
nothing of JAX's distributed runtime. Used where hosts must take the same decision from
what each saw alone: whether to stop (SIGTERM reached one host, docs/reliability.md) and
which checkpoint step every host could read.
"""

from __future__ import annotations

import jax
import numpy as np


def flags_of_every_host(flag: bool) -> np.ndarray:
  """Each process's `flag`, in process order (a bool array of `jax.process_count()`)."""
  if jax.process_count() == 1:
    return np.array([flag])
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(np.int32(flag))).astype(bool).reshape(-1)


def sync(name: str) -> None:
  """Waits until every process reaches the point called `name`."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
