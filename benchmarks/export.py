"""CPU inference of one 1024x768 picture, float32: JAX, the exported ONNX model in ONNX
Runtime, and the PyTorch twin under torch.compile, timed in one run.

    python benchmarks/export.py                      # 3 timed runs each, alternating
    python benchmarks/export.py --repeats 5 --out export_speed.json

The paper's model (random weights: time does not depend on them). Each backend runs in
its own process, is built and warmed up first (JAX and torch.compile compile, the ONNX
file is exported and verified against JAX), then the backends take turns, so that noise
on a shared machine hits all alike; the median is reported with its ratio to
torch.compile (below 1: faster than torch.compile). This is `benchmarks/speed.py`'s
`infer_1024x768` row with these three backends; `--backends` and `--rows` pick others.
The exported StableHLO file runs through XLA like JAX itself and is not timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import speed  # noqa: E402

DEFAULT_BACKENDS = ("jax_fp32", "onnxruntime", "torch_compile")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", nargs="+", default=["infer_1024x768"])
  parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--setup_limit_s", type=float, default=900)
  parser.add_argument("--smoke", action="store_true", help="a small model at a small size")
  parser.add_argument("--out", help="also write the results as JSON here")
  args = parser.parse_args()
  rows = [
      speed.bench_row(
          row,
          [(b, b, None) for b in args.backends],
          args.repeats,
          args.warmup,
          args.setup_limit_s,
          smoke=args.smoke,
      )
      for row in args.rows
  ]
  lines = [
      "| row | " + " | ".join(args.backends) + " | "
      + " | ".join(f"{b} / torch_compile" for b in args.backends if b != "torch_compile") + " |",
      "|---" * (1 + 2 * len(args.backends) - ("torch_compile" in args.backends)) + "|",
  ]  # fmt: skip
  for row in rows:
    results = row["results"]
    reference = results.get("torch_compile", {}).get("median_s")
    cells = [
        f"{results[b]['median_s']:.2f} s" if "median_s" in results.get(b, {}) else "failed"
        for b in args.backends
    ]
    for backend in args.backends:
      if backend != "torch_compile":
        median = results.get(backend, {}).get("median_s")
        cells.append(f"{median / reference:.2f}" if median and reference else "-")
    lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
  print("\n".join(lines))
  if args.out:
    with open(args.out, "w") as out:
      json.dump({"backends": args.backends, "rows": rows}, out, indent=2)


if __name__ == "__main__":
  main()
