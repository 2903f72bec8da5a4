"""Memory and FLOPs of the paper model's training step, as XLA plans them: dtype x remat.

    python benchmarks/step_memory.py [--batch 32] [--size 256] [--out FILE.json]
    python benchmarks/step_memory.py --model smoke --batch 2 --size 64   # a check of the script
    python benchmarks/step_memory.py --batch 128 --dtypes bfloat16 --remat none backbone \
        --time_steps 5        # also what remat costs in time: each step run, one at a time

Compiles `train_step.jit_train_step` (forward, backward, Adam, targets rendered in the step)
for float32 and bfloat16 with `model.remat` none / backbone / all, and prints, per
device, what `step_cost` logs at the start of training: the memory XLA's buffer
assignment needs at once and the FLOPs. Nothing is run, so it works for sizes the
machine could not run. XLA's CPU backend ignores rematerialisation when it plans memory
(the three remat rows come out alike there); GPU and TPU backends are built to honour it,
which the device check measures.

`--time_steps N` also runs each combination's step (the same program, through
`batches.compiled_train_step`) N times after one warm-up, one combination at a time, each
in a fresh process, and prints XLA's memory plan, seconds per step, images/s and, on a
GPU, the allocator's peak: what remat saves in memory and what it costs in time, side by
side. With `--jobs` > 1 the memory rows compile in parallel first (host CPU work) and the
timed runs find them in JAX's persistent compilation cache where one is set
(JAX_COMPILATION_CACHE_DIR); with one job the timed runs alone compile.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.batches import MODELS, compiled_train_step, make_batch, model_config  # noqa: E402
from cfrnet_jax.models.layers import REMAT_CHOICES  # noqa: E402
from cfrnet_jax.state import model_graphdef  # noqa: E402
from cfrnet_jax.training import sharding, step_cost, train_step  # noqa: E402


def measure(model: str, dtype: str, remat: str, batch: int, size: int) -> dict:
  config = model_config(model)
  config.model.update(dtype=dtype, remat=remat)
  config.batch_size = batch
  mesh = sharding.create_mesh()
  abstract, state_sharding = train_step.abstract_train_state(config, mesh)
  host = make_batch(batch, size, size)
  abstract_batch = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.data_sharding(mesh)), host
  )
  start = time.perf_counter()
  compiled = (
      train_step.jit_train_step(config, model_graphdef(config.model), mesh, state_sharding)
      .lower(abstract, abstract_batch)
      .compile()
  )
  cost = step_cost.step_cost(compiled)
  return {
      "dtype": dtype,
      "remat": remat,
      "memory_gb": round(cost.memory_bytes / 1e9, 3),
      "temp_gb": round(cost.temp_bytes / 1e9, 3),
      "tflop": round(cost.flops / 1e12, 4) if cost.flops else None,
      "compile_s": round(time.perf_counter() - start, 1),
  }


def _measure(args: tuple) -> dict:
  return measure(*args)


def time_step(model: str, dtype: str, remat: str, batch: int, size: int, steps: int) -> dict:
  """Seconds per training step (median of `steps` after one warm-up), images/s and the
  allocator's peak (None on a CPU) of one dtype x remat combination."""
  config = model_config(model)
  config.model.update(dtype=dtype, remat=remat)
  config.batch_size = batch
  step, compiled = compiled_train_step(config, make_batch(batch, size, size))
  jax.block_until_ready(step())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(step())
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  peak = stats.get("peak_bytes_in_use") if stats else None
  return {
      "dtype": dtype,
      "remat": remat,
      "memory_gb": round(step_cost.step_cost(compiled).memory_bytes / 1e9, 3),
      "step_s": round(seconds, 4),
      "images_per_s": round(batch / seconds, 1),
      "peak_gb": round(peak / 1e9, 2) if peak else None,
  }


def _time_step(args: tuple) -> dict:
  return time_step(*args)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=MODELS, default="paper")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--remat", nargs="+", default=list(REMAT_CHOICES), choices=REMAT_CHOICES)
  parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
  parser.add_argument(
      "--time_steps", type=int, default=0, help="then run each step this many times (timed)"
  )
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args()
  device = jax.devices()[0]
  header = {
      "benchmark": "step_memory",
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {device.device_kind}",
      "date": time.strftime("%Y-%m-%d"),
      "jax": jax.__version__,
      "model": args.model,
      "step": f"{args.batch} x {args.size}x{args.size}",
  }
  available = step_cost.device_memory_bytes(device)
  header["device_memory_gb"] = round(available / 1e9, 1) if available else None
  print(json.dumps(header), flush=True)
  combos = [(args.model, d, r, args.batch, args.size) for d in args.dtypes for r in args.remat]
  pool = None
  if args.time_steps and args.jobs == 1:
    results = []  # the timed runs compile each step once and report its memory plan.
  elif args.jobs > 1:  # compilation is host CPU work: a GPU host compiles several at once.
    pool = multiprocessing.get_context("spawn").Pool(args.jobs)
    results = pool.imap(_measure, combos)
  else:
    results = map(_measure, combos)
  rows = []
  if results:
    print("| dtype | remat | memory (GB) | of which temporaries | TFLOP per step | compile (s) |")
    print("|---|---|---|---|---|---|", flush=True)
  for row in results:
    rows.append(row)
    cells = ("dtype", "remat", "memory_gb", "temp_gb", "tflop", "compile_s")
    print("| " + " | ".join(str(row[key]) for key in cells) + " |", flush=True)
  if pool is not None:  # its processes let go of the device before the timed runs.
    pool.close()
    pool.join()
  timed = []
  if args.time_steps:
    print("| dtype | remat | memory (GB, XLA) | s per step | images/s | allocator peak (GB) |")
    print("|---|---|---|---|---|---|", flush=True)
    context = multiprocessing.get_context("spawn")
    for combo in combos:  # one at a time, each in a fresh process (its own peak).
      with context.Pool(1) as pool:
        row = pool.apply(_time_step, ((*combo, args.time_steps),))
      timed.append(row)
      cells = ("dtype", "remat", "memory_gb", "step_s", "images_per_s", "peak_gb")
      print("| " + " | ".join(str(row[key]) for key in cells) + " |", flush=True)
  if args.out:
    with open(args.out, "w") as out:
      json.dump({**header, "rows": rows, "timed": timed}, out, indent=2)


if __name__ == "__main__":
  main()
