"""Images per second of the jitted training step (paper model, 256x256 crops).

    python benchmarks/train_throughput.py [--batch_sizes 4 32] [--dtypes float32 bfloat16]
                                          [--steps 3]

Times `trainer.train_step` (targets rendered in the step, forward, backward, Adam update,
state donated) on a fixed batch laid out over all visible devices, after one warm-up
step, and prints the median over `--steps` steps. Before running it prints the memory
XLA's compiled step needs (arguments + temporaries, from `memory_analysis()`) and skips
configurations that need more than `--max_memory_gb` (default: 80% of this machine's
RAM on CPU).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cfrnet_jax.state import model_graphdef  # noqa: E402
from cfrnet_jax.training import sharding, trainer  # noqa: E402
from configs import shha  # noqa: E402

SHHA_MAX_POINTS = 3328


def synthetic_batch(batch_size: int, crop: int, max_points: int) -> dict:
  rng = np.random.default_rng(0)
  return {
      "image": rng.integers(0, 255, (batch_size, crop, crop, 3)).astype(np.uint8),
      "points": rng.uniform(0, crop, (batch_size, max_points, 2)).astype(np.float32),
      "valid": rng.uniform(size=(batch_size, max_points)) < 0.3,
      "valid_size": np.full((batch_size, 2), crop, np.int32),
      "count": np.zeros(batch_size, np.int32),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[4, 32])
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--max_memory_gb", type=float, default=None)
  args = parser.parse_args()
  if args.max_memory_gb is None:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    args.max_memory_gb = 0.8 * ram if jax.devices()[0].platform == "cpu" else float("inf")
  device = jax.devices()[0]
  print(
      f"# train_throughput  {datetime.date.today()}  {platform.machine()}  "
      f"{os.cpu_count()} cpus  jax {jax.__version__}  {jax.device_count()} x "
      f"{device.device_kind} ({device.platform})"
  )
  print("| batch | dtype | step memory (GB, XLA) | step (s) | images/s | steps timed |")
  print("|---|---|---|---|---|---|")
  mesh = sharding.create_mesh()
  for dtype in args.dtypes:
    for batch_size in args.batch_sizes:
      config = shha.get_config()
      config.batch_size = batch_size
      config.model.dtype = dtype
      graphdef = model_graphdef(config.model)
      state, state_sharding = trainer.create_train_state(config, mesh)
      step = trainer.jit_train_step(config, graphdef, mesh, state_sharding)
      batch = sharding.make_global_batch(
          # ShanghaiTech A's densest image has 3,139 heads: max_points 3,328 from the data.
          synthetic_batch(batch_size, config.data.crop_size, SHHA_MAX_POINTS),
          mesh,
      )
      memory = step.lower(state, batch).compile().memory_analysis()
      gigabytes = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30
      if gigabytes > args.max_memory_gb:
        print(
            f"| {batch_size} | {dtype} | {gigabytes:.1f} | skipped: more than "
            f"{args.max_memory_gb:.0f} GB | | |",
            flush=True,
        )
        continue
      state, _ = step(state, batch)
      jax.block_until_ready(state)
      times = []
      for _ in range(args.steps):
        start = time.perf_counter()
        state, _ = step(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
      seconds = statistics.median(times)
      print(
          f"| {batch_size} | {dtype} | {gigabytes:.1f} | {seconds:.3f} |"
          f" {batch_size / seconds:.2f} | {args.steps} |",
          flush=True,
      )


if __name__ == "__main__":
  main()
