"""The platform line and the warning for JAX on the CPU of a GPU or TPU machine."""

import logging

from cfrnet_jax import accelerators

no_nvidia_smi = lambda name: None


def fake_dev(tmp_path, *names):
  for name in names:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).touch()
  return tmp_path


def test_gpu_seen_by_the_system_but_jax_on_cpu_warns_naming_the_cuda_extra(tmp_path, caplog):
  dev = fake_dev(tmp_path, "nvidia0", "nvidiactl")
  with caplog.at_level(logging.INFO):
    accelerators.report(dev, no_nvidia_smi)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "JAX runs on the CPU" in warnings[0]
  assert "an NVIDIA GPU" in warnings[0] and str(dev / "nvidia0") in warnings[0]
  assert 'pip install -e ".[cuda]"' in warnings[0]
  # The platform line comes first, naming the platform and the devices.
  infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert any("on cpu" in line and "devices" in line for line in infos)


def test_nvidia_smi_alone_is_evidence_of_a_gpu(tmp_path):
  found = accelerators.visible_accelerators(tmp_path, lambda name: "/usr/bin/nvidia-smi")
  assert found == {"NVIDIA GPU": "/usr/bin/nvidia-smi"}


def test_tpu_devices_warn_naming_the_tpu_extra(tmp_path):
  for case, names in {"v4": ("accel0", "accel1"), "v5e": ("vfio/0", "vfio/vfio")}.items():
    found = accelerators.visible_accelerators(fake_dev(tmp_path / case, *names), no_nvidia_smi)
    assert list(found) == ["TPU"]
    warning = accelerators.cpu_fallback_warning("cpu", found)
    assert "a TPU" in warning and 'pip install -e ".[tpu]"' in warning


def test_no_warning_without_accelerators_or_when_jax_uses_them(tmp_path):
  plain = fake_dev(tmp_path, "null", "vfio/vfio")
  assert accelerators.visible_accelerators(plain, no_nvidia_smi) == {}
  assert accelerators.cpu_fallback_warning("cpu", {}) is None
  assert accelerators.cpu_fallback_warning("gpu", {"NVIDIA GPU": "/dev/nvidia0"}) is None
