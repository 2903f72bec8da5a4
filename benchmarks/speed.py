"""JAX vs PyTorch: CFRNet's training step and inference, timed in one run, alternating.

    python benchmarks/speed.py                                  # every row
    python benchmarks/speed.py --rows train_4 infer_1024x768 --repeats 5
    python benchmarks/speed.py --backends jax_fp32 torch_eager
    python benchmarks/speed.py --runs train_4:jax_bf16 train_4_k8:jax_bf16 \
        train_32:jax_bf16,jax_bf16@triton_gemm_any          # row:backend[@flag set], ...

Rows: the training step (forward, backward, Adam update) of the paper model at 4 and 32
crops of 256x256; inference of one 1024x768 and one 2048x1536 image; and, to follow the
backbone alone, a VGG16-BN training step at 4 x 256x256 (loss: mean square of its taps).
train_4_k8 and train_4_k32 run K = 8 and 32 training steps of 4 crops per call
(`config.steps_per_jit`, the product's `make_train_steps`: a `lax.scan` over K stacked
batches); their "s per call" is K steps, and steps/s and images/s count every step.
Backends: JAX float32 and bfloat16 (our `train_step.jit_train_step` / `make_count_fn`, the code
users run; `jax_bf16_cudnn` with cuDNN's fused attention, NVIDIA GPUs only), the PyTorch
twin (benchmarks/torch_twin) eager in float32 and under bfloat16 autocast, and under
`torch.compile` in float32 and under bfloat16 autocast; for inference rows also the model
exported to ONNX (`cfrnet_jax.export`) in ONNX Runtime's CPU provider (float32;
`benchmarks/export.py`).
`--smoke` runs a small model at small sizes, to check the script quickly on a CPU.

`--runs ROW:BACKEND[@FLAG_SET],...` names each row's backends instead of `--rows` x
`--backends`; `@FLAG_SET` runs that JAX backend with the XLA flags of `FLAG_SETS` (in its
own process: XLA reads XLA_FLAGS once, when its backend starts). The flag sets are GPU
flags: on another platform such a run goes without them and says so in its result.

Each backend of a row runs in its own process (in one process, PyTorch slows XLA's CPU
step; docs/performance.md), is built and warmed up (compilation excluded), then the
backends run in turn, `--repeats` times, so that machine noise hits all of them alike;
the median is reported. What each JAX step does beyond the twin: it takes uint8 images and head
points and normalises and renders the density targets inside the step, while the twin
gets normalised float images and finished targets (its step does less work).

FLOPs: each JAX row reports the model FLOPs of its program (`model_flops`: counted from
the traced step's convolutions, matmuls and attention, recomputation excluded,
`cfrnet_jax.training.flops`), XLA's cost analysis beside it (`xla_flops`; on a GPU it
leaves out the cuDNN convolutions and cuBLAS matmuls, custom calls), the achieved model
TFLOP/s and, on a device of `device_peaks.PEAKS`, the MFU: model FLOPs / time / the devices' dense
peak (TF32 for float32 on NVIDIA GPUs - JAX's default precision for float32 convolutions
and matmuls there, which the twin is also allowed - and BF16). Memory: XLA's plan for each
JAX row (`memory_gb`), and on a GPU the allocator's peak of every backend (`peak_gb`). A row
whose JAX step needs more memory than the machine has (XLA's estimate) is skipped with the
figure. Each run must be built and warmed up within `--setup_limit_s` of its process's
start. `--parallel_setup` starts every run of every row at once, in parallel processes
(compilation is CPU work; a GPU host has the cores), and times each, alone and in the order
named, as soon as it is built, while later ones may still compile (their count is its
`timed_while_building`). The script exits 1 when a run failed (not built in time, or its
process ended); a skipped one (a GPU-only backend elsewhere, a step too big) is no failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Several backends share one GPU: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.batches import device_batch, make_batch, model_config  # noqa: E402
from benchmarks.torch_twin import model as twin  # noqa: E402
from cfrnet_jax import evaluation  # noqa: E402
from cfrnet_jax.data.device_ops import normalize_images  # noqa: E402
from cfrnet_jax.data.targets import batch_density_targets  # noqa: E402
from cfrnet_jax.models.backbone import VGG16BN  # noqa: E402
from cfrnet_jax.models.cfrnet import HEAD_STRIDES  # noqa: E402
from cfrnet_jax.state import (  # noqa: E402
    ModelVariables,
    init_variables,
    local_copy,
    model_graphdef,
)
from cfrnet_jax.training import device_peaks, flops, sharding, step_cost, train_step  # noqa: E402

ROWS = {  # name: (kind, batch, height, width)
    "train_4": ("train", 4, 256, 256),
    "train_4_k8": ("train", 4, 256, 256),
    "train_4_k32": ("train", 4, 256, 256),
    "train_32": ("train", 32, 256, 256),
    "infer_1024x768": ("infer", 1, 768, 1024),
    "infer_2048x1536": ("infer", 1, 1536, 2048),
    "backbone_train_4": ("backbone", 4, 256, 256),
}
# Training rows of K steps per call (`config.steps_per_jit`); every other row is one step.
ROW_STEPS = {"train_4_k8": 8, "train_4_k32": 32}
BACKENDS = (
    "jax_fp32",
    "jax_bf16",
    "jax_bf16_cudnn",
    "torch_eager",
    "torch_bf16",
    "torch_compile",
    "torch_compile_bf16",
    "onnxruntime",
)
# XLA flags a JAX run may take (`--runs ROW:BACKEND@NAME`), appended to the XLA_FLAGS of
# the environment. Command buffers (CUDA graphs): the command types recorded (XLA's
# DebugOptions.CommandBufferCmdType), here the convolutions (CONVOLUTION) and cuDNN's graph
# fusions and fused attention (CUDNN) beside the fusions, the cuBLAS/cuBLASLt matmuls and
# the custom calls.
FLAG_SETS = {
    "baseline": "",
    "triton_gemm_any": "--xla_gpu_triton_gemm_any=true",
    "command_buffer_conv": (
        "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION"
    ),
}
GPU_ONLY = ("jax_bf16_cudnn",)
# The model exported by cfrnet_jax.export and run by ONNX Runtime's CPU provider.
INFER_ONLY = ("onnxruntime",)
# --smoke: (batch, height, width) of every row for the tiny model.
SMOKE_SIZES = {"train": (2, 64, 64), "infer": (1, 96, 128), "backbone": (2, 64, 64)}
TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
  if TORCH_DEVICE == "cuda":
    torch.cuda.synchronize()


def flop_figures(traced: jax.stages.Traced, compiled: jax.stages.Compiled) -> dict:
  """The model FLOPs of one call of `traced` (its jaxpr) and XLA's cost analysis of it."""
  figures = {"xla_flops": step_cost.step_cost(compiled).flops}
  try:
    figures["model_flops"] = flops.checked_total(flops.count_jaxpr(traced.jaxpr))
  except flops.FlopCountError as error:
    figures["model_flops_error"] = str(error)
  return figures


def _jax_memory_gb(compiled) -> float:
  return step_cost.step_cost(compiled).memory_bytes / 1e9


def peak_memory_gb() -> float | None:
  """The allocator's peak on the first GPU since start, for JAX or PyTorch; None on CPU."""
  if TORCH_DEVICE == "cuda" and torch.cuda.max_memory_allocated():
    return torch.cuda.max_memory_allocated() / 1e9
  stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
  return stats["peak_bytes_in_use"] / 1e9 if stats and "peak_bytes_in_use" in stats else None


def jax_runner(
    kind: str,
    dtype: str,
    batch_size: int,
    height: int,
    width: int,
    model: str = "paper",
    steps: int = 1,
):
  """(run, FLOP figures (`flop_figures`, with the device count), memory GB) for our JAX
  code on `kind`; a training `run` takes `steps` steps in one call (`steps_per_jit`)."""
  config = model_config(model)
  config.steps_per_jit = steps
  config.model.dtype = "bfloat16" if dtype.startswith("bfloat16") else dtype
  config.model.attention = "cudnn" if dtype.endswith("cudnn") else "xla"
  config.batch_size = batch_size
  if kind == "backbone":
    return _jax_backbone_runner(tuple(config.model.vgg_widths), batch_size, height, width)
  mesh = sharding.create_mesh(("data",))
  graphdef = model_graphdef(config.model)
  state, state_sharding = train_step.create_train_state(config, mesh)
  if kind == "train":
    step = train_step.jit_train_step(config, graphdef, mesh, state_sharding)
    batch = device_batch(batch_size, height, width, mesh, steps)  # K stacked when K > 1
    traced = step.trace(state, batch)
    compiled = traced.lower().compile()
    devices = mesh.size
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])

  else:
    count_fn = evaluation.make_count_fn(graphdef, config.data)
    variables = ModelVariables(local_copy(state.params), local_copy(state.batch_stats))
    image = jnp.asarray(make_batch(1, height, width)["image"])
    valid = jnp.array([[height, width]], jnp.int32)
    traced = count_fn.trace(variables, image, valid)
    compiled = traced.lower().compile()
    devices = 1

    def run():
      jax.block_until_ready(compiled(variables, image, valid))

  figures = {**flop_figures(traced, compiled), "devices": devices}
  return run, figures, _jax_memory_gb(compiled)


def _jax_backbone_runner(widths, batch_size, height, width):
  model = VGG16BN(widths, rngs=nnx.Rngs(0))
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
  traced = jax.jit(step, donate_argnums=(0, 2)).trace(
      holder["params"], stats, holder["opt"], images
  )
  compiled = traced.lower().compile()

  def run():
    holder["params"], holder["opt"], loss = compiled(holder["params"], stats, holder["opt"], images)
    jax.block_until_ready(loss)

  return run, {**flop_figures(traced, compiled), "devices": 1}, _jax_memory_gb(compiled)


def torch_runner(
    kind: str,
    backend: str,
    batch_size: int,
    height: int,
    width: int,
    model: str = "paper",
    compile_backend: str = "inductor",
):
  """`run` for the PyTorch twin: `backend` torch_eager, torch_bf16 (eager under bfloat16
  autocast, PyTorch's usual mixed precision), torch_compile or torch_compile_bf16 (the
  same under autocast), compiled by torch.compile's `compile_backend`."""
  compiled = backend.startswith("torch_compile")
  autocast = torch.autocast(TORCH_DEVICE, torch.bfloat16, enabled=backend.endswith("bf16"))
  config = model_config(model)
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
    forward = torch.compile(network, backend=compile_backend) if compiled else network

    def run():
      with torch.inference_mode(), autocast:
        forward(images)["density"].float().sum().item()

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
      return twin.cfrnet_loss(
          network(x),
          targets,
          config.loss.gamma,
          config.model.density_scale,
          config.loss.level_balance,
      )

  loss_fn = torch.compile(loss_fn, backend=compile_backend) if compiled else loss_fn

  def run():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(images)
    loss.backward()
    optimizer.step()
    loss.item()

  return run


def onnx_runner(height: int, width: int, model: str = "paper"):
  """(run, info) for one picture through the model exported to ONNX (float32, uint8 input,
  `cfrnet_jax.export`, verified against JAX there) in ONNX Runtime on the CPU."""
  import onnxruntime

  from cfrnet_jax import export

  config = model_config(model)
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.onnx")
    report = export.export_variables(
        config, init_variables(config.model, 0), path, height=height, width=width
    )
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  image = make_batch(1, height, width)["image"]

  def run():
    session.run(["density", "count"], {"pictures": image})

  return run, {"export_max_abs_diff": report.max_abs_diff, "onnxruntime": onnxruntime.__version__}


def available_memory_gb() -> float:
  return step_cost.device_memory_bytes(jax.devices()[0]) / 1e9


def device_peak(dtype: str) -> float | None:
  """Dense peak FLOP/s of this machine's first device for `dtype`; None if unknown."""
  return device_peaks.peak_flops(jax.devices()[0].device_kind, dtype)


JAX_DTYPES = {"jax_fp32": "float32", "jax_bf16": "bfloat16", "jax_bf16_cudnn": "bfloat16_cudnn"}


def parse_runs(specs: list[str]) -> list[tuple[str, list[tuple[str, str, str | None]]]]:
  """`--runs` specs "ROW:BACKEND[@FLAG_SET],..." -> [(row, [(key, backend, flag set)])],
  rows in the order first named, a row named twice gathering its runs; `key` (how results
  are named) is the backend, with "@FLAG_SET" when it has one. Raises ValueError on an
  unknown row, backend or flag set, a flag set on a PyTorch or ONNX backend, or a run
  named twice."""
  rows: dict[str, list[tuple[str, str, str | None]]] = {}
  for spec in specs:
    row, colon, runs = spec.partition(":")
    if row not in ROWS or not colon or not runs:
      raise ValueError(f"{spec!r}: expected ROW:BACKEND[@FLAG_SET],... with ROW of {list(ROWS)}")
    for key in runs.split(","):
      backend, at, flag_set = key.partition("@")
      if backend not in BACKENDS:
        raise ValueError(f"{spec!r}: unknown backend {backend!r} (one of {BACKENDS})")
      if at and flag_set not in FLAG_SETS:
        raise ValueError(f"{spec!r}: unknown flag set {flag_set!r} (one of {list(FLAG_SETS)})")
      if at and backend not in JAX_DTYPES:
        raise ValueError(f"{spec!r}: XLA flags apply to JAX backends, not {backend!r}")
      if any(k == key for k, _, _ in rows.get(row, [])):
        raise ValueError(f"{spec!r}: {row}:{key} named twice")
      rows.setdefault(row, []).append((key, backend, flag_set if at else None))
  return list(rows.items())


def run_xla_flags(flag_set: str | None, on_gpu: bool, environment: str) -> tuple[str | None, str]:
  """(XLA_FLAGS for a run's process, None to leave them; a note for its result): the flag
  set's flags after the environment's, on a GPU; elsewhere none of a set's (GPU flags)."""
  if flag_set is None:
    return None, ""
  flags = FLAG_SETS[flag_set]
  if flags and not on_gpu:
    return environment, f"gpu flags: ran without {flags}"
  return " ".join(f for f in (environment, flags) if f), flags or "no extra flags"


def _worker(
    connection,
    backend: str,
    kind: str,
    batch_size: int,
    height: int,
    width: int,
    warmup: int,
    model: str,
    steps: int = 1,
    xla_flags: str | None = None,
    compile_backend: str = "inductor",
) -> None:
  """One backend in its own process. Builds it (XLA compiles here) and reports; on
  "warmup" runs it `warmup` times (torch.compile compiles here) and reports again; then
  times one unit per "run" until "stop". `xla_flags` replaces XLA_FLAGS first (XLA reads
  them when this process first uses JAX)."""
  if xla_flags is not None:
    os.environ["XLA_FLAGS"] = xla_flags
  if TORCH_DEVICE == "cuda":  # per process: the settings do not travel to spawned ones.
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default on GPU.
  try:
    start = time.perf_counter()
    if backend.startswith("jax"):
      run, figures, memory = jax_runner(
          kind, JAX_DTYPES[backend], batch_size, height, width, model, steps
      )
      info = {**figures, "memory_gb": round(memory, 2)}
      if memory > 0.9 * available_memory_gb():
        info["skipped"] = (
            f"needs {memory:.1f} GB (XLA), the machine has {available_memory_gb():.0f} GB"
        )
    elif backend == "onnxruntime":
      run, info = onnx_runner(height, width, model)
    else:
      run = torch_runner(kind, backend, batch_size, height, width, model, compile_backend)
      info = {}
      if backend.startswith("torch_compile") and compile_backend != "inductor":
        info["compile_backend"] = compile_backend
    connection.send(info)
    if "skipped" in info or connection.recv() != "warmup":
      return
    for _ in range(warmup):
      run()
    _sync()
    info = {"setup_s": round(time.perf_counter() - start, 1)}
    peak = peak_memory_gb()
    if peak is not None:
      info["peak_gb"] = round(peak, 2)
  except Exception as error:  # one backend failing is a result, not the end of the run.
    connection.send({"failed": f"{type(error).__name__}: {error}"[:300]})
    return
  connection.send(info)
  while connection.recv() == "run":
    start = time.perf_counter()
    run()
    _sync()
    connection.send(time.perf_counter() - start)


def row_shape(name: str, smoke: bool) -> tuple[str, int, int, int]:
  kind, batch_size, height, width = ROWS[name]
  return (kind, *SMOKE_SIZES[kind]) if smoke else (kind, batch_size, height, width)


def row_runs(name: str, runs: list[tuple[str, str, str | None]], on_gpu: bool) -> list:
  """The runs of row `name` that apply to it and to this machine, JAX first: a JAX step
  that cannot fit means PyTorch's will not either (it keeps the same activations for
  backward), so those are not started in sequential setup."""
  kind = ROWS[name][0]
  chosen = [
      run
      for run in runs
      if (kind != "backbone" or run[1] in ("jax_fp32", "torch_eager"))
      and (on_gpu or run[1] not in GPU_ONLY)
      and (kind == "infer" or run[1] not in INFER_ONLY)
  ]
  return sorted(chosen, key=lambda run: not run[1].startswith("jax"))


def _ask(connection, process, message: str | None = None):
  """Send `message` (if any) to a worker and return its next report; a failure report
  when its process has ended without one (a crash, or XLA refusing a flag, ends it)."""
  try:
    if message is not None:
      connection.send(message)
    return connection.recv()
  except (EOFError, OSError):
    process.join(5)
    return {"failed": f"its process ended without a report (exit code {process.exitcode})"}


class Workers:
  """The processes of every run of a benchmark: started, each with one deadline for its
  build and warm-up together (`limit_s` from its start), and their build reports."""

  def __init__(self, smoke: bool, warmup: int, compile_backend: str = "inductor"):
    self.smoke, self.warmup, self.compile_backend = smoke, warmup, compile_backend
    self.context = multiprocessing.get_context("spawn")
    self.on_gpu = jax.devices()[0].platform == "gpu"
    self.started: dict[tuple[str, str], tuple] = {}  # (row, key) -> (process, connection)
    self.deadlines: dict[tuple[str, str], tuple[float, float]] = {}  # -> (deadline, limit_s)
    self.built: dict[tuple[str, str], dict] = {}  # (row, key) -> the build report
    self.notes: dict[tuple[str, str], str] = {}

  def start(self, name: str, run: tuple[str, str, str | None], limit_s: float):
    key, backend, flag_set = run
    kind, batch_size, height, width = row_shape(name, self.smoke)
    flags, note = run_xla_flags(flag_set, self.on_gpu, os.environ.get("XLA_FLAGS", ""))
    if note:
      self.notes[name, key] = note
    model, steps = "smoke" if self.smoke else "paper", ROW_STEPS.get(name, 1)
    connection, child = self.context.Pipe()
    process = self.context.Process(
        target=_worker,
        args=(child, backend, kind, batch_size, height, width, self.warmup, model, steps)
        + (flags, self.compile_backend),
    )
    process.start()
    self.started[name, key] = (process, connection)
    self.deadlines[name, key] = (time.monotonic() + limit_s, limit_s)
    return process, connection

  def _report(self, name: str, key: str, what: str) -> dict:
    """The next report of a run's process, waited for until the run's deadline."""
    process, connection = self.started[name, key]
    deadline, limit_s = self.deadlines[name, key]
    if connection.poll(max(deadline - time.monotonic(), 0.0)):
      return _ask(connection, process)
    return {"failed": f"not {what} within {limit_s:g} s of its start"}

  def build_report(self, name: str, key: str) -> dict:
    """A run's build report (XLA's figures, or why it failed or was skipped)."""
    if (name, key) not in self.built:
      self.built[name, key] = self._report(name, key, "built")
    return self.built[name, key]

  def warm_up(self, name: str, key: str) -> dict:
    """Warms a built run up; its report (`setup_s`, the allocator's peak)."""
    with contextlib.suppress(OSError):  # an ended process's failure is its report
      self.started[name, key][1].send("warmup")
    return self._report(name, key, "built and warmed up")

  def building(self) -> int:
    """How many started runs have not reported their build yet (collecting, without
    waiting, the reports that have arrived)."""
    for run, (process, connection) in self.started.items():
      if run not in self.built and connection.poll(0):
        self.built[run] = _ask(connection, process)
    return sum(run not in self.built for run in self.started)


def summarize(
    result: dict, values: list[float], kind: str, batch_size: int, steps: int, backend: str
) -> None:
  """Adds a run's figures to its `result` from the seconds of its timed calls: the median
  call, steps/s and images/s (counting each of a call's `steps` steps) and, for JAX, the
  model TFLOP/s and, on a device of known peak, the MFU."""
  result["median_s"] = statistics.median(values)
  result["runs_s"] = [round(v, 4) for v in values]
  if kind != "infer":
    result["steps_per_s"] = steps / result["median_s"]
  result["images_per_s"] = batch_size * steps / result["median_s"]
  if result.get("model_flops"):  # JAX rows: model TFLOP/s and, on a known device, MFU
    result["model_tflop_per_s"] = result["model_flops"] / result["median_s"] / 1e12
    peak = device_peak(JAX_DTYPES[backend])
    if peak:
      result["mfu"] = device_peaks.mfu(
          result["model_flops"], result["median_s"], peak, result.get("devices", 1)
      )


def _equal_precision_ratios(results: dict) -> None:
  """JAX float32 against float32 PyTorch, JAX bfloat16 against autocast: time ratios."""
  for backend, reference, field in EQUAL_PRECISION:
    baseline = results.get(reference, {}).get("median_s")
    if baseline and "median_s" in results.get(backend, {}):
      results[backend][field] = results[backend]["median_s"] / baseline


def bench_row(
    name: str,
    runs: list[tuple[str, str, str | None]],
    repeats: int,
    warmup: int,
    setup_limit_s: float,
    smoke: bool = False,
    parallel_setup: bool = False,
    workers: Workers | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
  """Every run (a backend, with its XLA flags) in its own process (PyTorch and XLA in one
  process slow XLA's CPU step), built and warmed up within `setup_limit_s` of its start.
  Sequential setup: built and warmed up one after the other, then timed in turns, run by
  run, so that machine noise hits all alike. `parallel_setup`: `workers` may have started
  them with other rows' (compilation is host CPU work); in the order of `runs`, each is
  warmed up, timed and stopped (one holds the GPU's memory at a time) as soon as it is
  built, while later runs may still compile (their count: `timed_while_building`).
  `on_progress(row)`: the row so far, after each run is timed."""
  kind, batch_size, height, width = row_shape(name, smoke)
  steps = ROW_STEPS.get(name, 1)
  row = {"row": name, "batch": batch_size, "size": f"{width}x{height}", "results": {}}
  if steps > 1:
    row["steps_per_call"] = steps
  workers = workers or Workers(smoke, warmup)
  chosen = row_runs(name, runs, workers.on_gpu)
  backends = {key: backend for key, backend, _ in chosen}
  for key, backend, _ in runs:
    if backend in GPU_ONLY and not workers.on_gpu:
      row["results"][key] = {"skipped": "needs an NVIDIA GPU"}
      print(f"  {name} {key}: skipped, needs an NVIDIA GPU", flush=True)

  def time_runs(key, process, connection, count):
    for _ in range(count):
      value = _ask(connection, process, "run")
      if isinstance(value, dict):  # its process ended: the times so far are not a result.
        row["results"][key].update(value)
        print(f"  {name} {key}: {value}", flush=True)
        held.pop(key, None)
        times.pop(key, None)
        return
      times[key].append(value)

  def finish(key, process, connection):
    connection.send("stop")
    process.join()
    result = row["results"][key]
    summarize(result, times.pop(key), kind, batch_size, steps, backends[key])
    _equal_precision_ratios(row["results"])
    print(f"  {name} {key}: {result['median_s']:.4f} s per call", flush=True)
    if on_progress is not None:
      on_progress(row)

  held, too_big, times = {}, None, {}
  for key, backend, flag_set in chosen:
    if too_big and not backend.startswith("jax") and (name, key) not in workers.started:
      row["results"][key] = {"skipped": too_big}
      continue
    if (name, key) not in workers.started:
      workers.start(name, (key, backend, flag_set), setup_limit_s)
    process, connection = workers.started[name, key]
    result = dict(workers.build_report(name, key))
    if not {"failed", "skipped"} & set(result):
      result.update(workers.warm_up(name, key))
    if (name, key) in workers.notes:
      result["xla_flags"] = workers.notes[name, key]
    building = workers.building() if parallel_setup and "setup_s" in result else 0
    if building:
      result["timed_while_building"] = building
    row["results"][key] = result
    too_big = too_big or result.get("skipped")
    print(f"  {name} {key}: {result}", flush=True)
    if "setup_s" not in result:
      process.kill()
      continue
    times[key] = []
    if parallel_setup:
      time_runs(key, process, connection, repeats)
      if key in times:
        finish(key, process, connection)
    else:
      held[key] = (process, connection)
  for _ in range(repeats):  # sequential setup: the backends take turns, run by run.
    for key, (process, connection) in list(held.items()):
      time_runs(key, process, connection, 1)
  for key, (process, connection) in held.items():
    finish(key, process, connection)
  return row


def failed_runs(rows: list[dict]) -> list[str]:
  """ROW:RUN of every run that failed (not built, crashed, not timed); skipped runs
  (a GPU-only backend elsewhere, a step too big for the machine) are not failures."""
  return [
      f"{row['row']}:{key}"
      for row in rows
      for key, result in row["results"].items()
      if "failed" in result
  ]


# (JAX backend, the PyTorch backend at its precision, the field of their time ratio).
EQUAL_PRECISION = (
    ("jax_fp32", "torch_eager", "ratio_to_torch"),
    ("jax_bf16", "torch_bf16", "ratio_to_torch"),
    ("jax_bf16_cudnn", "torch_bf16", "ratio_to_torch"),
    ("jax_fp32", "torch_compile", "ratio_to_torch_compile"),
    ("jax_bf16", "torch_compile_bf16", "ratio_to_torch_compile"),
)


def _flop_cell(results: dict) -> str:
  """The model FLOPs of a row's program (one figure: float32 and bfloat16 run the same
  products) and XLA's per JAX dtype."""
  jax_results = [results.get(b, {}) for b in ("jax_fp32", "jax_bf16")]
  model = next((r["model_flops"] for r in jax_results if r.get("model_flops")), None)
  if model is None:
    return "-"
  xla = " / ".join(
      flops.format_flops(r["xla_flops"]) if r.get("xla_flops") else "-" for r in jax_results
  )
  return f"{flops.format_flops(model)} ({xla})"


def markdown(rows: list[dict]) -> str:
  """Seconds per unit (median), JAX / PyTorch at equal precision, and of the JAX rows the
  model FLOPs (XLA's cost analysis beside them), the MFU on a device of known peak and
  XLA's memory figure."""
  ratios = (("jax_fp32", "fp32"), ("jax_bf16", "bf16"), ("jax_bf16_cudnn", "bf16 cuDNN"))
  lines = [
      "| row | "
      + " | ".join(BACKENDS)
      + " | "
      + " | ".join(f"JAX/torch {label}" for _, label in ratios)
      + " | model FLOPs per unit (XLA cost analysis fp32 / bf16) | JAX MFU fp32 / bf16"
      + " | JAX memory fp32 / bf16 (GB) |",
      "|---" * (len(BACKENDS) + len(ratios) + 4) + "|",
  ]
  for row in rows:
    results = row["results"]
    cells = []
    for backend in BACKENDS:
      result = results.get(backend)
      if result is None:
        cells.append("-")
      elif "median_s" in result:
        cells.append(f"{result['median_s']:.4f} s")
      else:
        cells.append(result.get("skipped") or "failed")
    for backend, _ in ratios:
      ratio = results.get(backend, {}).get("ratio_to_torch")
      cells.append(f"{ratio:.2f}" if ratio else "-")
    cells.append(_flop_cell(results))
    for key, fmt in (("mfu", "{:.1%}"), ("memory_gb", "{:.1f}")):
      cells.append(
          " / ".join(
              fmt.format(results[b][key]) if key in results.get(b, {}) else "-"
              for b in ("jax_fp32", "jax_bf16")
          )
      )
    lines.append(f"| {row['row']} ({row['batch']} x {row['size']}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def throughput_markdown(rows: list[dict]) -> str:
  """One line per run timed: steps per call (K), seconds per call, steps/s, images/s,
  model TFLOP/s and MFU (JAX), JAX / torch.compile at equal precision, XLA flags."""
  header = "| row | run | K | s per call | steps/s | images/s | model TFLOP/s | MFU"
  lines = [
      header + " | JAX/torch.compile | XLA flags |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    for key, result in row["results"].items():
      if "median_s" not in result:
        outcome = result.get("skipped") or result.get("failed") or "not timed"
        lines.append(f"| {row['row']} | {key} | {outcome} |" + " |" * 7)
        continue
      cells = [
          str(row.get("steps_per_call", 1)),
          f"{result['median_s']:.4f}",
          f"{result['steps_per_s']:.2f}" if "steps_per_s" in result else "-",
          f"{result['images_per_s']:.1f}",
          f"{result['model_tflop_per_s']:.3g}" if "model_tflop_per_s" in result else "-",
          f"{result['mfu']:.1%}" if "mfu" in result else "-",
          f"{result['ratio_to_torch_compile']:.2f}" if "ratio_to_torch_compile" in result else "-",
          result.get("xla_flags", "-"),
      ]
      label = f"{row['row']} ({row['batch']} x {row['size']})"
      lines.append(f"| {label} | {key} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
  parser.add_argument(
      "--runs",
      nargs="+",
      help="ROW:BACKEND[@FLAG_SET],... instead of --rows x --backends (FLAG_SETS: "
      + ", ".join(FLAG_SETS)
      + ")",
  )
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
  parser.add_argument(
      "--torch_compile_backend",
      default="inductor",
      help="torch.compile's backend (aot_eager: its tracing and autograd without code "
      "generation, to check the path quickly on a CPU)",
  )
  parser.add_argument("--out", help="also write the results as JSON here")
  parser.add_argument(
      "--smoke", action="store_true", help="a small model at small sizes (a check of the script)"
  )
  parser.add_argument(
      "--parallel_setup",
      action="store_true",
      help="start every row's runs at once, in parallel processes; time each, in order, "
      "once it is built",
  )
  args = parser.parse_args()
  try:
    plan = parse_runs(args.runs) if args.runs else None
  except ValueError as error:
    parser.error(str(error))
  if plan is None:
    plan = [(name, [(b, b, None) for b in args.backends]) for name in args.rows]
  header = {
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
      f"{jax.devices()[0].device_kind}",
      "date": time.strftime("%Y-%m-%d"),
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "repeats": args.repeats,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "model": "smoke" if args.smoke else "paper",
  }
  print(json.dumps(header), flush=True)
  rows = []

  def write(done):  # after every run timed: a run cut short keeps the runs done.
    if args.out:
      with open(args.out, "w") as out:
        json.dump({**header, "rows": done}, out, indent=2)

  workers = Workers(args.smoke, args.warmup, args.torch_compile_backend)
  if args.parallel_setup:  # every row's runs compile at once; each timed once it is built.
    for name, runs in plan:
      for run in row_runs(name, runs, workers.on_gpu):
        workers.start(name, run, args.setup_limit_s)
  for name, runs in plan:
    row = bench_row(
        name,
        runs,
        args.repeats,
        args.warmup,
        args.setup_limit_s,
        smoke=args.smoke,
        parallel_setup=args.parallel_setup,
        workers=workers,
        on_progress=lambda row: write([*rows, row]),
    )
    rows.append(row)
    print(json.dumps(row), flush=True)
    write(rows)
  print(markdown(rows))
  print(throughput_markdown(rows))
  failed = failed_runs(rows)
  if failed:  # the device check's section, and CI's smoke run, then fail.
    print(f"failed: {', '.join(failed)}", flush=True)
    sys.exit(1)


if __name__ == "__main__":
  main()
