"""What a compiled step costs, from XLA, before it runs: memory and FLOPs.

The trainer compiles its step ahead of the first batch and logs this, so that a step that
will not fit the accelerator shows up as a clear line with the figures and the ways out
(`config.model.remat`, a smaller `config.batch_size`, bfloat16) instead of an
out-of-memory error after minutes of compilation and data loading. The benchmarks report
the same figures (`benchmarks/speed.py`, `benchmarks/step_memory.py`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

# Above this share of the device's memory the step is reported as unlikely to fit: XLA's
# figure excludes the allocator's fragmentation and the evaluation's own buffers.
FIT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class StepCost:
  """XLA's figures for one compiled function, per device."""

  flops: float | None  # per call, per device (cost analysis).
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


def describe(cost: StepCost, available: int | None) -> str:
  gb = lambda n: f"{n / 1e9:.2f} GB"
  if not cost.flops:
    flops = "FLOPs not reported"
  elif cost.flops >= 1e12:
    flops = f"{cost.flops / 1e12:.2f} TFLOP"
  else:
    flops = f"{cost.flops / 1e9:.2f} GFLOP"
  fits = f" of the {gb(available)} the device has" if available else ""
  return (
      f"{flops} per step per device; memory {gb(cost.memory_bytes)}{fits} (arguments "
      f"{gb(cost.argument_bytes)}, temporaries {gb(cost.temp_bytes)}, outputs "
      f"{gb(cost.output_bytes - cost.alias_bytes)} beyond the donated state)"
  )


def report(compiled: jax.stages.Compiled, what: str, device: jax.Device | None = None) -> StepCost:
  """Logs `what`'s cost; warns when it needs more than FIT_FRACTION of the device."""
  device = device or jax.local_devices()[0]
  cost = step_cost(compiled)
  available = device_memory_bytes(device)
  logging.info("Compiled %s: %s.", what, describe(cost, available))
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
