"""Device mesh and global batches: the jit + NamedSharding (pjit) form.

The mesh has a `data` axis over which batches are split; parameters are replicated
(`replicated`). The axis names come from the config (`config.mesh_axes`) so that a
model axis can be added later without touching the training step.
"""

from __future__ import annotations

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


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, everything else whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def make_global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch (this host's rows) -> global `jax.Array`s sharded along
  `data`. Every host calls it with its own rows, in process order."""
  devices_on_axis = mesh.shape[DATA_AXIS]
  sharding = data_sharding(mesh)

  def to_global(array):
    array = np.asarray(array)
    global_rows = array.shape[0] * jax.process_count()
    if global_rows % devices_on_axis:
      raise ValueError(
          f"The global batch of {global_rows} does not divide over the "
          f"{devices_on_axis} devices of the '{DATA_AXIS}' mesh axis."
      )
    return jax.make_array_from_process_local_data(sharding, array)

  return jax.tree_util.tree_map(to_global, host_batch)
