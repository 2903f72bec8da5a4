"""Which accelerator JAX runs on, and the warning when it misses one that is there.

The most common way to lose days on a GPU or TPU VM is to train on its CPU: `pip install
jax` installs the CPU build, which runs everything, only far slower (CPU and GPU figures:
docs/performance.md). `report()` logs the platform and device kinds at start and warns
when the machine shows an NVIDIA GPU (`/dev/nvidia0`, `nvidia-smi`) or a TPU
(`/dev/accel*`, `/dev/vfio/*`) while JAX has only CPU devices, naming the extra that
installs the right JAX build.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import jax
from absl import logging

# What to install for each kind of accelerator (pyproject's extras), and its article.
INSTALL_HINTS = {
    "NVIDIA GPU": ("an", 'pip install -e ".[cuda]" (JAX with its CUDA 13 plugin)'),
    "TPU": ("a", 'pip install -e ".[tpu]" (JAX with libtpu)'),
}


def visible_accelerators(
    dev_dir: str | Path = "/dev", which: Callable[[str], str | None] = shutil.which
) -> dict[str, str]:
  """{kind: evidence} for every accelerator the operating system shows, whatever JAX
  sees. `dev_dir` and `which` are parameters so that tests can fake the machine."""
  dev_dir = Path(dev_dir)
  found = {}
  nvidia = sorted(dev_dir.glob("nvidia[0-9]*")) or [which("nvidia-smi")]
  if nvidia[0]:
    found["NVIDIA GPU"] = str(nvidia[0])
  tpu = sorted(dev_dir.glob("accel[0-9]*")) or sorted((dev_dir / "vfio").glob("[0-9]*"))
  if tpu:
    found["TPU"] = str(tpu[0])
  return found


def cpu_fallback_warning(platform: str, accelerators: dict[str, str]) -> str | None:
  """The warning for JAX on `platform` on a machine with `accelerators`, or None."""
  if platform != "cpu" or not accelerators:
    return None
  lines = [
      f"JAX runs on the CPU, but this machine has {INSTALL_HINTS[kind][0]} {kind} ({evidence})."
      f" Training and prediction will be many times slower than they should. Install the "
      f"JAX build for it: {INSTALL_HINTS[kind][1]}, then check with "
      f'`python -c "import jax; print(jax.devices())"`.'
      for kind, evidence in accelerators.items()
  ]
  return " ".join(lines)


def describe_devices() -> str:
  """One line: JAX version, platform, processes, and the device kinds with their counts."""
  kinds: dict[str, int] = {}
  for device in jax.devices():
    kinds[device.device_kind] = kinds.get(device.device_kind, 0) + 1
  listed = ", ".join(f"{count} x {kind}" for kind, count in kinds.items())
  return (
      f"JAX {jax.__version__} on {jax.default_backend()}: process {jax.process_index()} of "
      f"{jax.process_count()}, {jax.device_count()} devices ({listed})"
  )


def report(dev_dir: str | Path = "/dev", which: Callable[[str], str | None] = shutil.which) -> None:
  """Logs `describe_devices()` and, where it applies, `cpu_fallback_warning`."""
  logging.info("%s", describe_devices())
  warning = cpu_fallback_warning(jax.default_backend(), visible_accelerators(dev_dir, which))
  if warning:
    logging.warning("%s", warning)
