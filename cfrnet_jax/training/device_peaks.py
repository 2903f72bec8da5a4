"""Peak FLOP/s of accelerators, and model FLOPs utilisation (MFU).

MFU = model FLOPs per step / step time / peak FLOP/s of the devices (PaLM, Chowdhery et
al. 2022, appendix B): `mfu`, with the model FLOPs counted from the program
(`training.flops`) and `PEAKS` the vendors' dense figures.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense peak FLOP/s of one device as its vendor publishes it (no structured sparsity).

  `bfloat16`: tensor-core / MXU bfloat16 with float32 accumulation. `float32`: what JAX's
  default precision gives float32 convolutions and matmuls there: TF32 tensor cores on
  NVIDIA Ampere and later; the CUDA cores' FP32 on V100 (no TF32, no bfloat16 units); on
  TPUs one bfloat16 pass of the MXU, i.e. the bfloat16 peak (precision "highest" takes
  several passes, not modelled)."""

  name: str
  pattern: str  # regular expression, matched against device_kind in lower case
  bfloat16: float | None
  float32: float | None


# Per device (one GPU; one TPU chip, which JAX shows as one device from v4 on), from
# NVIDIA's datasheets (dense: half their structured-sparsity figures) and Google Cloud's
# TPU system architecture pages.
PEAKS = (
    Peak("NVIDIA H100 PCIe", r".*h100.*pcie.*", 756.5e12, 378e12),
    Peak("NVIDIA H100 SXM", r".*h100(?!.*(pcie|nvl)).*", 989.4e12, 494.7e12),
    Peak("NVIDIA H200 SXM", r".*h200(?!.*nvl).*", 989.4e12, 494.7e12),
    Peak("NVIDIA A100", r".*a100.*", 312e12, 156e12),
    Peak("NVIDIA L4", r".*\bl4\b.*", 121e12, 60e12),
    Peak("NVIDIA V100 PCIe", r".*v100.*pcie.*", None, 14e12),
    Peak("NVIDIA V100 SXM2", r".*v100.*", None, 15.7e12),
    Peak("TPU v4", r"tpu v4", 275e12, 275e12),
    Peak("TPU v5e", r"tpu v5 ?(lite|e)", 197e12, 197e12),
    Peak("TPU v5p", r"tpu v5p?", 459e12, 459e12),
    Peak("TPU v6e", r"tpu v6 ?(lite|e)", 918e12, 918e12),
)


def find_peak(device_kind: str) -> Peak | None:
  """The PEAKS entry of a `jax.Device.device_kind`; None for devices not in the table
  (CPUs among them: their peak depends on the host)."""
  kind = device_kind.lower().strip()
  return next((p for p in PEAKS if re.fullmatch(p.pattern, kind)), None)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device for `dtype` ("bfloat16" or "float32"); None when
  the device is unknown or has no such units."""
  peak = find_peak(device_kind)
  if peak is None:
    return None
  return peak.bfloat16 if str(dtype).startswith("bfloat16") else peak.float32


def mfu(flops_per_step: float, step_seconds: float, peak_per_device: float, devices: int = 1):
  """Model FLOPs utilisation: flops_per_step / step_seconds / (peak_per_device x devices)."""
  return flops_per_step / step_seconds / (peak_per_device * devices)
