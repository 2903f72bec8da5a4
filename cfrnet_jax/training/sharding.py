"""Device mesh and global batches: the jit + NamedSharding (pjit) form.

The mesh has a `data` axis over which batches are split; parameters are replicated
(`replicated`). The axis names come from the config (`config.mesh_axes`) so that a
model axis can be added later without touching the training step. `DevicePrefetch`
keeps the next global batches on the devices while the step runs.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(
    axis_names: Sequence[str] = (DATA_AXIS,), axis_sizes: Sequence[int] | None = None
) -> Mesh:
  """A mesh over all devices of all hosts; by default one `data` axis of every device."""
  axis_sizes = tuple(axis_sizes or (jax.device_count(),))
  # Auto axes: XLA propagates shardings through the model (GSPMD), so the model code
  # needs no sharding annotations; only inputs and state are placed explicitly.
  return jax.make_mesh(
      axis_sizes, tuple(axis_names), axis_types=(jax.sharding.AxisType.Auto,) * len(axis_sizes)
  )


def data_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """The batch axis split over `data`, everything else whole; the batch axis leads, or
  with `stacked` follows a leading axis of steps (`config.steps_per_jit` batches)."""
  return NamedSharding(
      mesh, PartitionSpec(None, DATA_AXIS) if stacked else PartitionSpec(DATA_AXIS)
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def make_global_batch(host_batch: dict, mesh: Mesh, stacked: bool = False) -> dict:
  """Host-local numpy batch (this host's rows) -> global `jax.Array`s sharded along
  `data`. Every host calls it with its own rows, in process order. `stacked`: the
  arrays lead with an axis of steps, the rows are their second axis."""
  devices_on_axis = mesh.shape[DATA_AXIS]
  sharding = data_sharding(mesh, stacked)

  def to_global(array):
    array = np.asarray(array)
    global_rows = array.shape[int(stacked)] * jax.process_count()
    if global_rows % devices_on_axis:
      raise ValueError(
          f"The global batch of {global_rows} does not divide over the "
          f"{devices_on_axis} devices of the '{DATA_AXIS}' mesh axis."
      )
    return jax.make_array_from_process_local_data(sharding, array)

  return jax.tree_util.tree_map(to_global, host_batch)


class DevicePrefetch:
  """Global batches placed on the devices `size` calls ahead of the training step.

  Wraps this host's grain iterator: each `next` hands out a batch whose host-to-device
  copy started `size` calls earlier and starts the copy of a new one, so the step never
  waits for a transfer (JAX dispatches the step asynchronously, so the host decodes and
  copies while the devices compute). `get_state` / `set_state` speak for the batches the
  caller received, not the ones held ahead, so a checkpoint resumes at the right batch
  (grain's Orbax handler saves this object like the iterator itself).

  With `steps` > 1 each item stacks that many consecutive host batches along a new
  leading axis, for a step function that runs them in one call (`config.steps_per_jit`).
  """

  def __init__(self, host_iterator, mesh: Mesh, size: int = 2, steps: int = 1):
    if size < 1 or steps < 1:
      raise ValueError(f"DevicePrefetch needs size >= 1 and steps >= 1, got {size}, {steps}.")
    self._host = host_iterator
    self._mesh = mesh
    self._size = size
    self._steps = steps
    self._ahead: collections.deque = collections.deque()  # (host state before it, batch)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    self._fill()
    _, batch = self._ahead.popleft()
    self._fill()
    return batch

  def peek(self) -> dict:
    """The batch the next `next` returns, without consuming it."""
    self._fill()
    return self._ahead[0][1]

  def _fill(self) -> None:
    while len(self._ahead) < self._size:
      state = self._host.get_state()
      if self._steps == 1:
        batch = make_global_batch(next(self._host), self._mesh)
      else:
        batches = [next(self._host) for _ in range(self._steps)]
        stacked = jax.tree.map(lambda *rows: np.stack(rows), *batches)
        batch = make_global_batch(stacked, self._mesh, stacked=True)
      self._ahead.append((state, batch))

  def get_state(self):
    return self._ahead[0][0] if self._ahead else self._host.get_state()

  def set_state(self, state) -> None:
    self._ahead.clear()
    self._host.set_state(state)

  def start_prefetch(self) -> None:
    """What grain's handler calls after `set_state` on a restore."""
    if hasattr(self._host, "start_prefetch"):
      self._host.start_prefetch()
