"""Memory and FLOPs of the paper model's training step, as XLA plans them: dtype x remat.

    python benchmarks/step_memory.py [--batch 32] [--size 256] [--out FILE.json]
    python benchmarks/step_memory.py --model smoke --batch 2 --size 64   # a check of the script

Compiles `train_step.jit_train_step` (forward, backward, Adam, targets rendered in the step)
for float32 and bfloat16 with `model.remat` none / backbone / all, and prints, per
device, what `step_cost` logs at the start of training: the memory XLA's buffer
assignment needs at once and the FLOPs. Nothing is run, so it works for sizes the
machine could not run. XLA's CPU backend ignores rematerialisation when it plans memory
(the three remat rows come out alike there); GPU and TPU backends are built to honour it,
which the device check measures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.batches import MODELS, make_batch, model_config  # noqa: E402
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=MODELS, default="paper")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--remat", nargs="+", default=list(REMAT_CHOICES), choices=REMAT_CHOICES)
  parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
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
  print("| dtype | remat | memory (GB) | of which temporaries | TFLOP per step | compile (s) |")
  print("|---|---|---|---|---|---|", flush=True)
  combos = [(args.model, d, r, args.batch, args.size) for d in args.dtypes for r in args.remat]
  if args.jobs > 1:  # compilation is host CPU work: a GPU host compiles several at once.
    pool = multiprocessing.get_context("spawn").Pool(args.jobs)
    results = pool.imap(_measure, combos)
  else:
    results = map(_measure, combos)
  rows = []
  for row in results:
    rows.append(row)
    cells = ("dtype", "remat", "memory_gb", "temp_gb", "tflop", "compile_s")
    print("| " + " | ".join(str(row[key]) for key in cells) + " |", flush=True)
  if args.out:
    with open(args.out, "w") as out:
      json.dump({**header, "rows": rows}, out, indent=2)


if __name__ == "__main__":
  main()
