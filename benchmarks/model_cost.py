"""Parameters, model FLOPs, CFRM cost against Eq. 6 and forward latency.

    python benchmarks/model_cost.py [--runs 5] [--sizes 256x256 1024x768] [--train_batch 32]
    python benchmarks/model_cost.py --flops_only     # FLOP tables only: traced, nothing runs

FLOPs of the inference forward (batch 1, BatchNorm with running statistics): the model
FLOPs counted from its jaxpr (`cfrnet_jax.training.flops`: convolutions, matmuls and
attention by their shapes) and, beside them, XLA's cost analysis of the compiled forward
(which also counts elementwise work; on a GPU it leaves out cuDNN's and cuBLAS's custom
calls). With the latency, the MFU against the device's float32 dense peak where the device
is in `device_peaks.PEAKS`. The training step's model FLOPs (the paper model's `trainer` step,
forward, backward and Adam update, at `--train_batch` x `--train_crop`, 256 head points per
crop) come from its jaxpr alone, traced on any machine.

Eq. 6 of the paper prices one CFRM on maps (h, w, c) and (h/2^i, w/2^i, c) with window k
as (h/k)(w/k)(24 m c^2 + 4 m^2 c), m = k^2 + k^2/4^i: it counts the QKV, projection and
MLP of all m tokens of a window and the m x m attention. Our CFRM computes queries,
projection and MLP for the k^2 high-resolution tokens only (the paper's own slice, Eq.
3-4), so it costs less; the table prints both and the closed form of what we compute
(which the jaxpr count equals: tests/test_flops.py),
    (h/k)(w/k)(2 (3 k^2 + 2 m) c^2 + 16 k^2 c^2 + 4 k^2 m c).
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
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import cfrnet_jax  # noqa: E402
from benchmarks.batches import make_batch  # noqa: E402
from cfrnet_jax.models.cfrm import CrossLevelRelocation  # noqa: E402
from cfrnet_jax.state import model_graphdef  # noqa: E402
from cfrnet_jax.training import device_peaks, flops, sharding, train_step  # noqa: E402
from configs.base import get_config, get_model_config  # noqa: E402


def compiled_flops(function, *args) -> float:
  analysis = jax.jit(function).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


def train_step_flops(batch: int, crop: int) -> flops.FlopCount:
  """Model FLOPs of the paper model's training step (`train_step.jit_train_step`) on `batch`
  crops of `crop` x `crop`, from its jaxpr (traced from the state's shapes: nothing is
  allocated or run)."""
  config = get_config()
  config.batch_size = batch
  config.data.crop_size = crop
  mesh = sharding.create_mesh(("data",))
  abstract, state_sharding = train_step.abstract_train_state(config, mesh)
  step = train_step.jit_train_step(config, model_graphdef(config.model), mesh, state_sharding)
  return flops.count_flops(step, abstract, make_batch(batch, crop, crop))


def count_params(module) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))


def eq6_flops(h: int, w: int, c: int, k: int, i: int) -> float:
  m = k * k + k * k / 4**i
  return (h / k) * (w / k) * (24 * m * c * c + 4 * m * m * c)


def implemented_flops(h: int, w: int, c: int, k: int, i: int) -> float:
  """Matmul FLOPs of our CFRM: Q of k^2 tokens, K/V of m tokens, attention of k^2
  queries over m keys, projection and 4x MLP of k^2 tokens."""
  q = k * k
  m = q + q / 4**i
  return (
      (h / k) * (w / k) * (2 * (q + 2 * m) * c * c + 2 * q * c * c + 16 * q * c * c + 4 * q * m * c)
  )


def cfrm_rows(config, height: int, width: int):
  """(name, high map size, window, level gap) of the six CFRMs of the full model."""
  hw = lambda stride: (height // stride, width // stride)
  k_h = config.hierarchical_window
  k1, k2, k3 = config.axial_windows
  return [
      ("hier F3<-F4", hw(16), k_h, 1),
      ("hier F2<-F3", hw(8), k_h, 1),
      ("hier F1<-F2", hw(4), k_h, 1),
      ("axial F5<-F4", hw(4), k1, 3),
      ("axial F5<-F3", hw(4), k2, 2),
      ("axial F5<-F2", hw(4), k3, 1),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--sizes", nargs="+", default=["256x256", "1024x768"], help="HEIGHTxWIDTH input sizes"
  )
  parser.add_argument("--runs", type=int, default=5, help="timed runs per size")
  parser.add_argument(
      "--memory_sizes",
      nargs="*",
      default=["1024x768", "2048x2048"],
      help="sizes whose inference memory XLA reports (compiled, not run)",
  )
  parser.add_argument("--train_batch", type=int, default=32, help="training step's batch")
  parser.add_argument("--train_crop", type=int, default=256, help="training step's crop side")
  parser.add_argument(
      "--flops_only",
      action="store_true",
      help="only the model FLOP tables (traced, nothing compiled or run)",
  )
  args = parser.parse_args()
  sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]

  config = get_model_config()
  c = config.channels
  model = cfrnet_jax.build_model(config, 0)
  model.eval()
  print(
      f"# model_cost  {datetime.date.today()}  {platform.processor() or platform.machine()}"
      f"  {os.cpu_count()} cpus  jax {jax.__version__} on {jax.devices()[0].platform}"
  )
  print(f"parameters: {count_params(model) / 1e6:.2f} M")
  for part in ("backbone", "gam", "compressors", "hierarchical_decoder", "axial_decoder", "heads"):
    print(f"  {part:22s} {count_params(getattr(model, part)) / 1e6:7.2f} M")

  graphdef, state = nnx.split(model)
  density = lambda s, x: nnx.merge(graphdef, s)(x)["density"]
  forward = jax.jit(density)
  kind = jax.devices()[0].device_kind
  peak = device_peaks.peak_flops(kind, "float32")
  print(
      "\n| input (HxW) | forward model GFLOPs (jaxpr) | XLA cost analysis GFLOPs |"
      f" {kind} latency median (s) | MFU (float32 peak) | runs |"
  )
  print("|---|---|---|---|---|---|")
  for height, width in sizes:
    images = jnp.zeros((1, height, width, 3))
    model_flops = flops.model_flops(
        density, state, jax.ShapeDtypeStruct(images.shape, images.dtype)
    )
    if args.flops_only:
      print(f"| {height}x{width} | {model_flops / 1e9:.1f} | - | - | - | 0 |")
      continue
    xla = compiled_flops(density, state, images)
    forward(state, images).block_until_ready()  # compile + warm up
    times = []
    for _ in range(args.runs):
      start = time.perf_counter()
      forward(state, images).block_until_ready()
      times.append(time.perf_counter() - start)
    latency = statistics.median(times)
    mfu = f"{device_peaks.mfu(model_flops, latency, peak):.1%}" if peak else "- (peak unknown)"
    print(
        f"| {height}x{width} | {model_flops / 1e9:.1f} | {xla / 1e9:.1f} | {latency:.3f} |"
        f" {mfu} | {args.runs} |"
    )

  step = train_step_flops(args.train_batch, args.train_crop)
  print(
      f"\n| training step ({args.train_batch} x {args.train_crop}x{args.train_crop}) | model"
      " TFLOPs (jaxpr) |\n|---|---|"
  )
  for part, value in (*step.by_kind.items(), ("total", step.total)):
    print(f"| {part} | {value / 1e12:.3f} |")
  if step.uncounted:
    print("not counted: " + "; ".join(step.uncounted))

  print("\n| input (HxW) | inference memory, XLA arguments + temporaries (GB) |")
  print("|---|---|")
  for size in [] if args.flops_only else args.memory_sizes:
    height, width = (int(v) for v in size.split("x"))
    memory = forward.lower(state, jnp.zeros((1, height, width, 3))).compile().memory_analysis()
    total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30
    print(f"| {height}x{width} | {total:.2f} |")

  print(
      "\n| input | CFRM | high map | window k | gap i | XLA GFLOPs | model GFLOPs (jaxpr) |"
      " our matmul formula | Eq. 6 |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for height, width in sizes:
    for name, (h, w), k, i in cfrm_rows(config, height, width):
      g, s = nnx.split(
          CrossLevelRelocation(c, config.num_heads, k, config.mlp_ratio, rngs=nnx.Rngs(0))
      )
      relocate = lambda s, hi, lo, g=g: nnx.merge(g, s)(hi, lo)
      maps = jnp.zeros((1, h, w, c)), jnp.zeros((1, h >> i, w >> i, c))
      xla = "-" if args.flops_only else f"{compiled_flops(relocate, s, *maps) / 1e9:.3f}"
      print(
          f"| {height}x{width} | {name} | {h}x{w} | {k} | {i} | {xla} |"
          f" {flops.model_flops(relocate, s, *maps) / 1e9:.3f} |"
          f" {implemented_flops(h, w, c, k, i) / 1e9:.3f} |"
          f" {eq6_flops(h, w, c, k, i) / 1e9:.3f} |"
      )


if __name__ == "__main__":
  main()
