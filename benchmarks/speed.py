"""JAX vs PyTorch: CFRNet's training step and inference, timed in one run, alternating.

    python benchmarks/speed.py                                  # every row
    python benchmarks/speed.py --rows train_4 infer_1024x768 --repeats 5
    python benchmarks/speed.py --backends jax_fp32 torch_eager

Rows: the training step (forward, backward, Adam update) of the paper model at 4 and 32
crops of 256x256; inference of one 1024x768 and one 2048x1536 image; and, to follow the
backbone alone, a VGG16-BN training step at 4 x 256x256 (loss: mean square of its taps).
Backends: JAX float32 and bfloat16 (our `trainer.jit_train_step` / `make_count_fn`, the code
users run), the PyTorch twin (benchmarks/torch_twin) eager and under `torch.compile`.

Each backend of a row runs in its own process (in one process, PyTorch slows XLA's CPU
step; docs/performance.md), is built and warmed up (compilation excluded), then the
backends run in turn, `--repeats` times, so that machine noise hits all of them alike;
the median is reported. What each JAX step does beyond the twin: it takes uint8 images and head
points and normalises and renders the density targets inside the step, while the twin
gets normalised float images and finished targets (its step does less work).

On a GPU, the JAX rows also report XLA's FLOP count of the compiled step, the achieved
TFLOP/s and the fraction of the GPU's dense peak (TF32 for float32 - JAX's default
precision for float32 convolutions and matmuls on GPU, which the twin is also allowed -
and BF16). A row whose JAX step needs more memory than the machine has (XLA's estimate)
is skipped with the figure.
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
# Several backends share one GPU: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.torch_twin import model as twin  # noqa: E402
from cfrnet_jax import evaluation  # noqa: E402
from cfrnet_jax.data.device_ops import normalize_images  # noqa: E402
from cfrnet_jax.data.targets import batch_density_targets  # noqa: E402
from cfrnet_jax.models.backbone import VGG16_WIDTHS, VGG16BN  # noqa: E402
from cfrnet_jax.models.cfrnet import HEAD_STRIDES  # noqa: E402
from cfrnet_jax.state import ModelVariables, local_copy, model_graphdef  # noqa: E402
from cfrnet_jax.training import sharding, trainer  # noqa: E402
from configs.base import get_config  # noqa: E402

ROWS = {  # name: (kind, batch, height, width)
    "train_4": ("train", 4, 256, 256),
    "train_32": ("train", 32, 256, 256),
    "infer_1024x768": ("infer", 1, 768, 1024),
    "infer_2048x1536": ("infer", 1, 1536, 2048),
    "backbone_train_4": ("backbone", 4, 256, 256),
}
BACKENDS = ("jax_fp32", "jax_bf16", "torch_eager", "torch_compile")
# Dense peak FLOP/s by GPU name fragment: (TF32, BF16), NVIDIA's SXM datasheets.
GPU_PEAKS = {"H100": (494.7e12, 989.4e12), "H200": (494.7e12, 989.4e12), "A100": (156e12, 312e12)}
TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
  if TORCH_DEVICE == "cuda":
    torch.cuda.synchronize()


def make_batch(batch: int, height: int, width: int, seed: int = 0) -> dict:
  """Random crops with 64 heads each, in the fields of `data.pipeline.TrainCrop`."""
  rng = np.random.default_rng(seed)
  points = rng.uniform(0, [width, height], (batch, 256, 2)).astype(np.float32)
  return {
      "image": rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8),
      "points": points,
      "valid": np.arange(256)[None].repeat(batch, 0) < 64,
      "valid_size": np.tile(np.array([height, width], np.int32), (batch, 1)),
      "count": np.full((batch,), 64, np.int32),
  }


def _jax_memory_gb(compiled) -> float:
  memory = compiled.memory_analysis()
  return (
      memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
  ) / 1e9


def jax_runner(kind: str, dtype: str, batch_size: int, height: int, width: int):
  """(run, flops, memory GB) for our JAX code on `kind`."""
  config = get_config()
  config.model.dtype = dtype
  config.batch_size = batch_size
  if kind == "backbone":
    return _jax_backbone_runner(batch_size, height, width)
  mesh = sharding.create_mesh(("data",))
  graphdef = model_graphdef(config.model)
  state, state_sharding = trainer.create_train_state(config, mesh)
  if kind == "train":
    step = trainer.jit_train_step(config, graphdef, mesh, state_sharding)
    batch = sharding.make_global_batch(make_batch(batch_size, height, width), mesh)
    compiled = step.lower(state, batch).compile()
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])

  else:
    count_fn = evaluation.make_count_fn(graphdef, config.data)
    variables = ModelVariables(local_copy(state.params), local_copy(state.batch_stats))
    image = jnp.asarray(make_batch(1, height, width)["image"])
    valid = jnp.array([[height, width]], jnp.int32)
    compiled = count_fn.lower(variables, image, valid).compile()

    def run():
      jax.block_until_ready(compiled(variables, image, valid))

  return run, compiled.cost_analysis().get("flops"), _jax_memory_gb(compiled)


def _jax_backbone_runner(batch_size, height, width):
  model = VGG16BN(VGG16_WIDTHS, rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  tx = optax.adam(1e-5)

  def step(params, stats, opt_state, images):
    def loss_fn(params, stats):
      network = nnx.merge(graphdef, params, stats)
      network.train()
      return sum(jnp.mean(jnp.square(tap)) for tap in network(images).values())

    loss, grads = jax.value_and_grad(loss_fn)(params, stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  images = jnp.asarray(
      np.random.default_rng(0).normal(size=(batch_size, height, width, 3)), jnp.float32
  )
  holder = {"params": params, "opt": tx.init(params)}
  compiled = (
      jax.jit(step, donate_argnums=(0, 2))
      .lower(holder["params"], stats, holder["opt"], images)
      .compile()
  )

  def run():
    holder["params"], holder["opt"], loss = compiled(holder["params"], stats, holder["opt"], images)
    jax.block_until_ready(loss)

  return run, compiled.cost_analysis().get("flops"), _jax_memory_gb(compiled)


def torch_runner(kind: str, compiled: bool, batch_size: int, height: int, width: int):
  config = get_config()
  torch.manual_seed(0)
  if kind == "backbone":
    network = twin.VGG16BN(tuple(config.model.vgg_widths)).to(TORCH_DEVICE)
  else:
    network = twin.CFRNet(config.model).to(TORCH_DEVICE)
  batch = make_batch(batch_size, height, width)
  images = (
      torch.from_numpy(
          np.array(
              normalize_images(
                  jnp.asarray(batch["image"]),
                  jnp.asarray(batch["valid_size"]),
                  config.data.mean,
                  config.data.std,
              )
          )
      )
      .permute(0, 3, 1, 2)
      .contiguous()
      .to(TORCH_DEVICE)
  )
  if kind == "infer":
    network.eval()
    forward = torch.compile(network) if compiled else network

    def run():
      with torch.inference_mode():
        forward(images)["density"].sum().item()

    return run
  network.train()
  optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
  if kind == "backbone":

    def loss_fn(x):
      return sum(tap.square().mean() for tap in network(x).values())

  else:
    targets = batch_density_targets(
        jnp.asarray(batch["points"]),
        jnp.asarray(batch["valid"]),
        (height, width),
        strides=sorted(set(HEAD_STRIDES.values())),
        sigma=config.targets.sigma,
        foreground_radius=config.targets.foreground_radius,
    )
    targets = {
        kind: {s: torch.from_numpy(np.array(v)).to(TORCH_DEVICE) for s, v in targets[kind].items()}
        for kind in ("density", "foreground")
    }

    def loss_fn(x):
      return twin.cfrnet_loss(network(x), targets, config.loss.gamma, config.model.density_scale)

  loss_fn = torch.compile(loss_fn) if compiled else loss_fn

  def run():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(images)
    loss.backward()
    optimizer.step()
    loss.item()

  return run


def available_memory_gb() -> float:
  if jax.devices()[0].platform == "cpu":
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
  return jax.devices()[0].memory_stats()["bytes_limit"] / 1e9


def gpu_peak(dtype: str) -> float | None:
  kind = jax.devices()[0].device_kind
  for fragment, (tf32, bf16) in GPU_PEAKS.items():
    if fragment in kind:
      return bf16 if dtype == "bfloat16" else tf32
  return None


def _worker(
    connection, backend: str, kind: str, batch_size: int, height: int, width: int, warmup: int
) -> None:
  """One backend in its own process: build, warm up, then time one unit per request."""
  try:
    start = time.perf_counter()
    if backend.startswith("jax"):
      dtype = "bfloat16" if backend == "jax_bf16" else "float32"
      run, flops, memory = jax_runner(kind, dtype, batch_size, height, width)
      info = {"flops": flops, "memory_gb": round(memory, 2)}
      if memory > 0.9 * available_memory_gb():
        info["skipped"] = (
            f"needs {memory:.1f} GB (XLA), the machine has {available_memory_gb():.0f} GB"
        )
        connection.send(info)
        return
    else:
      run, info = torch_runner(kind, backend == "torch_compile", batch_size, height, width), {}
    for _ in range(warmup):
      run()
    _sync()
    info["setup_s"] = round(time.perf_counter() - start, 1)
  except Exception as error:  # one backend failing is a result, not the end of the run.
    connection.send({"failed": f"{type(error).__name__}: {error}"[:300]})
    return
  connection.send(info)
  while connection.recv() == "run":
    start = time.perf_counter()
    run()
    _sync()
    connection.send(time.perf_counter() - start)


def bench_row(
    name: str, backends: list[str], repeats: int, warmup: int, setup_limit_s: float
) -> dict:
  """Every backend in its own process (PyTorch and XLA in one process slow XLA's CPU
  step), built one after the other, then timed in turns."""
  kind, batch_size, height, width = ROWS[name]
  row = {"row": name, "batch": batch_size, "size": f"{width}x{height}", "results": {}}
  context = multiprocessing.get_context("spawn")
  workers, too_big = {}, None
  for backend in backends:
    if kind == "backbone" and backend not in ("jax_fp32", "torch_eager"):
      continue
    if too_big and not backend.startswith("jax"):
      # PyTorch keeps the same activations for backward: do not risk the machine.
      row["results"][backend] = {"skipped": too_big}
      continue
    connection, child = context.Pipe()
    process = context.Process(
        target=_worker, args=(child, backend, kind, batch_size, height, width, warmup)
    )
    process.start()
    if connection.poll(setup_limit_s):
      row["results"][backend] = connection.recv()
    else:
      row["results"][backend] = {
          "failed": f"not ready (compiled and warmed up) within {setup_limit_s:.0f} s"
      }
    result = row["results"][backend]
    too_big = too_big or result.get("skipped")
    if "setup_s" in result:
      workers[backend] = (process, connection)
    else:
      process.kill()
    print(f"  {name} {backend}: {result}", flush=True)
  times = {backend: [] for backend in workers}
  for _ in range(repeats):
    for backend, (_, connection) in workers.items():
      connection.send("run")
      times[backend].append(connection.recv())
  for process, connection in workers.values():
    connection.send("stop")
    process.join()
  for backend, values in times.items():
    result = row["results"][backend]
    result["median_s"] = statistics.median(values)
    result["runs_s"] = [round(v, 4) for v in values]
    peak = gpu_peak("bfloat16" if backend == "jax_bf16" else "float32")
    if result.get("flops") and jax.devices()[0].platform == "gpu":
      result["tflops"] = result["flops"] / result["median_s"] / 1e12
      if peak:
        result["peak_fraction"] = result["tflops"] * 1e12 / peak
  eager = row["results"].get("torch_eager", {}).get("median_s")
  for backend in ("jax_fp32", "jax_bf16"):
    if eager and "median_s" in row["results"].get(backend, {}):
      row["results"][backend]["ratio_to_torch_eager"] = row["results"][backend]["median_s"] / eager
  return row


def markdown(rows: list[dict]) -> str:
  lines = [
      "| row | " + " | ".join(BACKENDS) + " | JAX fp32 / eager | JAX bf16 / eager |",
      "|---" * (len(BACKENDS) + 3) + "|",
  ]
  for row in rows:
    cells = []
    for backend in BACKENDS:
      result = row["results"].get(backend)
      if result is None:
        cells.append("-")
      elif "median_s" in result:
        cells.append(f"{result['median_s']:.3f} s")
      else:
        cells.append(result.get("skipped") or "failed")
    ratios = [
        f"{row['results'][b]['ratio_to_torch_eager']:.2f}"
        if "ratio_to_torch_eager" in row["results"].get(b, {})
        else "-"
        for b in ("jax_fp32", "jax_bf16")
    ]
    lines.append(
        f"| {row['row']} ({row['batch']} x {row['size']}) | "
        + " | ".join(cells)
        + " | "
        + " | ".join(ratios)
        + " |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
  parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument(
      "--setup_limit_s",
      type=float,
      default=900,
      help="a backend not compiled and warmed up by then is reported as failed "
      "(torch.compile of the larger inference rows takes minutes on 2 CPU cores)",
  )
  parser.add_argument("--out", help="also write the results as JSON here")
  args = parser.parse_args()
  if TORCH_DEVICE == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default on GPU.
  header = {
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
      f"{jax.devices()[0].device_kind}",
      "date": time.strftime("%Y-%m-%d"),
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "repeats": args.repeats,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  print(json.dumps(header), flush=True)
  rows = []
  for name in args.rows:
    rows.append(bench_row(name, args.backends, args.repeats, args.warmup, args.setup_limit_s))
    print(json.dumps(rows[-1]), flush=True)
  print(markdown(rows))
  if args.out:
    with open(args.out, "w") as out:
      json.dump({**header, "rows": rows}, out, indent=2)


if __name__ == "__main__":
  main()
