"""What a compiled step costs, before it runs: memory (XLA) and FLOPs.

The trainer compiles its step ahead of the first batch and logs this, so that a step that
will not fit the accelerator shows up as a clear line with the figures and the ways out
(`config.model.remat`, a smaller `config.batch_size`, bfloat16) instead of an
out-of-memory error after minutes of compilation and data loading. The benchmarks report
the same figures (`benchmarks/speed.py`, `benchmarks/step_memory.py`).

FLOPs: the line leads with the model FLOPs counted from the traced program
(`training/flops.py`), with the shortest step the device's dense peak allows (the step
time at 100% MFU), and keeps XLA's cost analysis beside it, labelled: on a GPU that figure
leaves out the cuDNN convolutions and cuBLAS matmuls (custom calls), most of the work.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

from cfrnet_jax.training import device_peaks
from cfrnet_jax.training import flops as model_flops

# Above this share of the device's memory the step is reported as unlikely to fit: XLA's
# figure excludes the allocator's fragmentation and the evaluation's own buffers.
FIT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class StepCost:
  """XLA's figures for one compiled function, per device."""

  flops: float | None  # per call, per device (XLA's cost analysis).
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written into donated arguments.
  temp_bytes: int

  @property
  def memory_bytes(self) -> int:
    """Arguments + outputs not aliased to them + temporaries: the device memory the call
    needs at once (what XLA's buffer assignment plans; the allocator adds a little)."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def step_cost(compiled: jax.stages.Compiled) -> StepCost:
  memory = compiled.memory_analysis()
  costs = compiled.cost_analysis()
  if isinstance(costs, list):  # older JAX: one dict per device program.
    costs = costs[0] if costs else {}
  return StepCost(
      flops=(costs or {}).get("flops"),
      argument_bytes=memory.argument_size_in_bytes,
      output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes,
  )


def device_memory_bytes(device: jax.Device) -> int | None:
  """What one device can hold: the allocator's limit on GPU/TPU, the RAM on CPU."""
  if device.platform == "cpu":
    try:
      return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
      return None
  stats = device.memory_stats() or {}
  return stats.get("bytes_limit")


def describe_model_flops(
    count: model_flops.FlopCount | None, peak: float | None, devices: int = 1
) -> str:
  """Model FLOPs per step (per device too when there are several) and, with the
  device's peak FLOP/s, the step time at 100% MFU."""
  if count is None:
    return "model FLOPs not counted"
  if count.uncounted:
    return "model FLOPs not counted (" + "; ".join(count.uncounted) + ")"
  text = f"model FLOPs {model_flops.format_flops(count.total)} per step"
  if devices > 1:
    text += f" ({model_flops.format_flops(count.total / devices)} per device)"
  if peak:
    shortest = count.total / devices / peak
    text += f", {shortest * 1e3:.1f} ms per step at 100% MFU (peak {peak / 1e12:.1f} TFLOP/s)"
  else:
    text += ", the device's peak FLOP/s unknown (no MFU)"
  return text


def describe(
    cost: StepCost,
    available: int | None,
    count: model_flops.FlopCount | None = None,
    peak: float | None = None,
    devices: int = 1,
    gpu: bool = False,
) -> str:
  """The log line's figures: model FLOPs, XLA's FLOPs (on a GPU, said to leave out the
  custom calls) and memory."""
  gb = lambda n: f"{n / 1e9:.2f} GB"
  if not cost.flops:
    xla = "XLA cost analysis: FLOPs not reported"
  else:
    xla = f"XLA cost analysis: {model_flops.format_flops(cost.flops)} per step per device"
    if gpu:
      xla += " (without cuDNN's and cuBLAS's custom calls)"
  fits = f" of the {gb(available)} the device has" if available else ""
  return (
      f"{describe_model_flops(count, peak, devices)}; {xla}; memory "
      f"{gb(cost.memory_bytes)}{fits} (arguments {gb(cost.argument_bytes)}, temporaries "
      f"{gb(cost.temp_bytes)}, outputs {gb(cost.output_bytes - cost.alias_bytes)} beyond the "
      "donated state)"
  )


def count_traced(traced: jax.stages.Traced) -> model_flops.FlopCount | None:
  """The model FLOPs of a traced function; None, with a warning, if counting fails (the
  figure is worth a log line, not a stopped run)."""
  try:
    return model_flops.count_jaxpr(traced.jaxpr)
  except Exception as error:  # any failure to count loses the figure, nothing else
    logging.warning("Model FLOPs not counted: %s: %s", type(error).__name__, error)
    return None


def report(
    compiled: jax.stages.Compiled,
    what: str,
    device: jax.Device | None = None,
    *,
    traced: jax.stages.Traced | None = None,
    dtype: str = "float32",
    devices: int = 1,
) -> StepCost:
  """Logs `what`'s cost (model FLOPs of `traced`, the program `compiled` was lowered from,
  over `devices` devices computing in `dtype`); warns when it needs more than
  FIT_FRACTION of the device."""
  device = device or jax.local_devices()[0]
  cost = step_cost(compiled)
  available = device_memory_bytes(device)
  count = count_traced(traced) if traced is not None else None
  peak = device_peaks.peak_flops(device.device_kind, dtype)
  line = describe(cost, available, count, peak, devices, gpu=device.platform == "gpu")
  logging.info("Compiled %s: %s.", what, line)
  if available and cost.memory_bytes > FIT_FRACTION * available:
    logging.warning(
        "The %s needs %.1f GB but the device (%s) has %.1f GB: it will probably run out of "
        "memory. Ways out: --config.model.remat=backbone (or =all), a smaller "
        "--config.batch_size, or --config.model.dtype=bfloat16.",
        what,
        cost.memory_bytes / 1e9,
        device.device_kind,
        available / 1e9,
    )
  return cost
