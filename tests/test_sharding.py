"""The device mesh and global batches (the jit + NamedSharding form)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]


SHARDING_SCRIPT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from cfrnet_jax.training import sharding
    mesh = sharding.create_mesh()
    host = {{"image": np.zeros((16, 256, 256, 3), np.uint8),
             "points": np.zeros((16, 64, 2), np.float32)}}
    batch = sharding.make_global_batch(host, mesh)
    result = {{k: {{"shape": list(v.shape), "spec": str(v.sharding.spec),
                   "devices": len(v.addressable_shards),
                   "shard_shapes": sorted({{tuple(s.data.shape) for s in v.addressable_shards}})}}
              for k, v in batch.items()}}
    try:
      sharding.make_global_batch({{"x": np.zeros((12, 3))}}, mesh)
      result["error"] = None
    except ValueError as error:
      result["error"] = str(error)
    print(json.dumps(result))
""")


def test_global_batch_is_sharded_along_data_over_8_devices():
  out = subprocess.run(
      [sys.executable, "-c", SHARDING_SCRIPT.format(repo=str(REPO))],
      check=True,
      capture_output=True,
      text=True,
      cwd=REPO,
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["image"]["shape"] == [16, 256, 256, 3]
  assert result["image"]["devices"] == 8
  assert result["image"]["shard_shapes"] == [[2, 256, 256, 3]]
  assert result["points"]["shard_shapes"] == [[2, 64, 2]]
  assert "data" in result["image"]["spec"]
  assert "does not divide over the 8 devices" in result["error"]


class _CountingIterator:
  """A stand-in for grain's iterator: batch k holds k; its state is the next k."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return {"x": np.full((8, 2), self.position - 1, np.float32)}

  def get_state(self):
    return json.dumps({"next": self.position}).encode()

  def set_state(self, state):
    self.position = json.loads(state)["next"]


def test_device_prefetch_keeps_batches_ahead_and_the_state_of_what_was_consumed():
  from cfrnet_jax.training import sharding

  mesh = sharding.create_mesh()
  host = _CountingIterator()
  batches = sharding.DevicePrefetch(host, mesh, size=2)
  assert [int(next(batches)["x"][0, 0]) for _ in range(3)] == [0, 1, 2]
  assert host.position == 5  # two batches already on the devices ...
  state = batches.get_state()
  assert json.loads(state) == {"next": 3}  # ... but the saved position is the consumer's.
  assert isinstance(next(batches)["x"], jax.Array)
  # A run restored from that state sees batch 3 next, as an uninterrupted run did.
  resumed = sharding.DevicePrefetch(_CountingIterator(), mesh, size=2)
  resumed.set_state(state)
  assert int(resumed.peek()["x"][0, 0]) == 3
  assert int(next(resumed)["x"][0, 0]) == 3
