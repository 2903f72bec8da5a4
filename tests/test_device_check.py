"""The device check's run plan (benchmarks/speed.py `--runs`): rows, backends, XLA flag sets;
how speed.py times its runs (stubbed workers: nothing compiles) and when it fails; the
whole check, small, on the CPU (`benchmarks/device_check.sh --smoke`)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, import_torch, shared_data

import_torch()  # benchmarks/speed.py times the PyTorch twin beside JAX.
from benchmarks import batches, speed  # noqa: E402
from cfrnet_jax.training import sharding  # noqa: E402


def test_runs_gather_by_row_in_the_order_named_with_flag_sets_keyed():
  plan = speed.parse_runs(
      [
          "train_4:jax_bf16",
          "train_32:jax_bf16,jax_bf16@triton_gemm_any",
          "train_4_k8:jax_bf16",
          "train_32:torch_compile_bf16",
      ]
  )
  assert plan == [
      ("train_4", [("jax_bf16", "jax_bf16", None)]),
      (
          "train_32",
          [
              ("jax_bf16", "jax_bf16", None),
              ("jax_bf16@triton_gemm_any", "jax_bf16", "triton_gemm_any"),
              ("torch_compile_bf16", "torch_compile_bf16", None),
          ],
      ),
      ("train_4_k8", [("jax_bf16", "jax_bf16", None)]),
  ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("train_5:jax_bf16", "expected ROW:BACKEND"),
        ("train_4", "expected ROW:BACKEND"),
        ("train_4:jax_fp16", "unknown backend 'jax_fp16'"),
        ("train_4:jax_bf16@fast", "unknown flag set 'fast'"),
        ("train_4:torch_bf16@triton_gemm_any", "XLA flags apply to JAX backends"),
        ("train_4:jax_bf16,jax_bf16", "named twice"),
    ],
)
def test_a_wrong_run_is_refused_naming_what_is_wrong(spec, message):
  with pytest.raises(ValueError, match=message):
    speed.parse_runs([spec])


def test_flag_sets_add_to_the_environment_on_a_gpu_and_are_left_out_elsewhere():
  gemm = speed.FLAG_SETS["triton_gemm_any"]
  assert speed.run_xla_flags(None, True, "--a") == (None, "")  # the process inherits them
  assert speed.run_xla_flags("triton_gemm_any", True, "--a") == (f"--a {gemm}", gemm)
  assert speed.run_xla_flags("triton_gemm_any", True, "") == (gemm, gemm)
  flags, note = speed.run_xla_flags("triton_gemm_any", False, "--a")
  assert flags == "--a" and note == f"gpu flags: ran without {gemm}"
  assert speed.run_xla_flags("baseline", False, "") == ("", "no extra flags")
  command_types = speed.FLAG_SETS["command_buffer_conv"].split("=")[1].split(",")
  assert {"CONVOLUTION", "CUDNN"} <= set(command_types)  # convolutions; cuDNN's fusions


def _xla_accepts(flags: str) -> bool:
  """Whether XLA starts with `flags` in XLA_FLAGS: it parses every flag, GPU flags included,
  on any platform, and stops at an unknown flag or a wrong value."""
  code = "import jax; jax.numpy.ones(1).block_until_ready()"
  environment = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
  run = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True)
  return run.returncode == 0


def test_xla_takes_every_flag_set_by_name_here_though_a_cpu_runs_them_without():
  assert _xla_accepts(" ".join(speed.FLAG_SETS.values()))  # the smoke run drops them on a CPU
  assert not _xla_accepts("--xla_gpu_enable_command_buffer=FUSION,CONVOLUTIONS")


def test_k_rows_count_every_step_of_a_call_in_the_throughput_table():
  rows = [
      {
          "row": "train_4_k8",
          "batch": 4,
          "size": "256x256",
          "steps_per_call": 8,
          "results": {
              "jax_bf16": {
                  "median_s": 0.08,
                  "steps_per_s": 100.0,
                  "images_per_s": 400.0,
                  "model_tflop_per_s": 153.4,
                  "mfu": 0.155,
              },
              "jax_bf16_cudnn": {"failed": "not built"},
          },
      }
  ]
  lines = speed.throughput_markdown(rows).splitlines()
  assert lines[2] == (
      "| train_4_k8 (4 x 256x256) | jax_bf16 | 8 | 0.0800 | 100.00 | 400.0 | 153 | 15.5%"
      " | - | - |"
  )
  assert lines[3].startswith("| train_4_k8 | jax_bf16_cudnn | not built | |")
  assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_a_k_row_steps_on_k_different_batches_stacked_on_a_leading_axis():
  mesh = sharding.create_mesh(("data",))
  single = batches.device_batch(2, 8, 8, mesh)
  stacked = batches.device_batch(2, 8, 8, mesh, steps=3)
  assert single["image"].shape == (2, 8, 8, 3)
  assert stacked["image"].shape == (3, 2, 8, 8, 3)
  assert stacked["points"].shape == (3, 2, 256, 2)
  images = np.asarray(stacked["image"])
  np.testing.assert_array_equal(images[0], np.asarray(single["image"]))  # seed 0 first
  assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


class StubProcess:
  exitcode = None

  def kill(self):
    pass

  def join(self, timeout=None):
    pass


class StubConnection:
  """A worker's end of the pipe as bench_row sees it: its build report (or none yet, when
  `built` is False), then {"setup_s"} on "warmup" and the next of `times` on "run"."""

  def __init__(self, times, built=True):
    self.times = list(times)
    self.pending = [{"model_flops": 2e12, "devices": 1, "memory_gb": 0.1}] if built else []

  def send(self, message):
    if message == "warmup":
      self.pending.append({"setup_s": 1.0})
    elif message == "run":
      self.pending.append(self.times.pop(0))

  def poll(self, timeout=0.0):
    if not self.pending:
      time.sleep(timeout)
    return bool(self.pending)

  def recv(self):
    return self.pending.pop(0)


class StubWorkers(speed.Workers):
  """Workers whose processes are stubs: `runs` maps a row's run key to its StubConnection."""

  def __init__(self, runs):
    super().__init__(smoke=True, warmup=1)
    self.on_gpu = False
    self.runs = runs

  def start(self, name, run, limit_s):
    self.started[name, run[0]] = (StubProcess(), self.runs[name, run[0]])
    self.deadlines[name, run[0]] = (time.monotonic() + limit_s, limit_s)


@pytest.mark.parametrize("steps_row", ["train_4_k8", "train_4_k32"])
def test_a_k_row_counts_k_steps_and_k_batches_per_timed_call(steps_row):
  k = speed.ROW_STEPS[steps_row]
  workers = StubWorkers({(steps_row, "jax_bf16"): StubConnection([0.4, 0.2, 0.3])})
  row = speed.bench_row(
      steps_row, [("jax_bf16", "jax_bf16", None)], 3, 1, 5.0, True, False, workers
  )
  result = row["results"]["jax_bf16"]
  batch = speed.SMOKE_SIZES["train"][0]
  assert row["steps_per_call"] == k and row["batch"] == batch
  assert result["median_s"] == 0.3 and result["runs_s"] == [0.4, 0.2, 0.3]
  assert result["steps_per_s"] == pytest.approx(k / 0.3)
  assert result["images_per_s"] == pytest.approx(batch * k / 0.3)
  assert result["model_tflop_per_s"] == pytest.approx(2e12 / 0.3 / 1e12)  # FLOPs of a call


def test_parallel_setup_times_a_row_once_its_own_runs_are_built_and_each_run_has_one_deadline():
  workers = StubWorkers(
      {
          ("train_4", "jax_bf16"): StubConnection([0.1, 0.1]),
          ("train_4_k32", "jax_bf16"): StubConnection([], built=False),  # compiling still
      }
  )
  plan = [
      ("train_4", [("jax_bf16", "jax_bf16", None)]),
      ("train_4_k32", [("jax_bf16", "jax_bf16", None)]),
  ]
  for name, runs in plan:
    for run in runs:
      workers.start(name, run, 0.2)
  progress = []
  began = time.monotonic()
  first = speed.bench_row(*plan[0], 2, 1, 0.2, True, True, workers, progress.append)
  assert time.monotonic() - began < 0.15  # not held back by the K = 32 build
  assert first["results"]["jax_bf16"]["median_s"] == 0.1
  assert first["results"]["jax_bf16"]["timed_while_building"] == 1
  assert progress == [first]  # written as it comes
  late = speed.bench_row(*plan[1], 2, 1, 0.2, True, True, workers)
  assert late["results"]["jax_bf16"] == {"failed": "not built within 0.2 s of its start"}
  assert time.monotonic() - began < 0.5
  assert speed.failed_runs([first, late]) == ["train_4_k32:jax_bf16"]


def test_a_failed_run_fails_the_benchmark_and_a_skipped_one_does_not():
  skipped = {"row": "train_32", "results": {"jax_bf16": {"median_s": 1.0}}}
  skipped["results"]["jax_bf16_cudnn"] = {"skipped": "needs an NVIDIA GPU"}
  assert speed.failed_runs([skipped]) == []
  crashed = {"row": "train_4_k8", "results": {"jax_bf16": {"failed": "its process ended"}}}
  assert speed.failed_runs([skipped, crashed]) == ["train_4_k8:jax_bf16"]


@pytest.mark.slow  # about 3.5 minutes of one core, beside the other tests
def test_the_device_check_runs_every_section_small_on_the_cpu(tmp_path):
  """`benchmarks/device_check.sh --smoke`: every section of the accelerator's check runs
  with the smoke model on the CPU and passes, so that the script cannot rot between the
  runs on a GPU; its speed rows are written as they are measured."""
  out = tmp_path / "out"
  run = subprocess.run(
      ["bash", "benchmarks/device_check.sh", "--smoke", str(out), str(shared_data("ucf_cc_50"))],
      cwd=REPO,
      env={**os.environ, "PYTHON": sys.executable},
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      timeout=1200,
  )
  assert run.returncode == 0, run.stdout[-5000:]
  summary = (out / "summary.md").read_text()
  for section in ("speed", "attention", "torch_compile", "step_memory", "tests", "predict"):
    assert f"| {section} | passed in " in summary, summary
  measured = json.loads((out / "speed.json").read_text())
  rows = {row["row"]: row["results"] for row in measured["rows"]}
  assert list(rows) == ["train_4_k8", "train_32"]
  assert rows["train_4_k8"]["jax_bf16"]["median_s"] > 0
  assert rows["train_32"]["jax_bf16_cudnn"] == {"skipped": "needs an NVIDIA GPU"}
  assert "ran without --xla_gpu_enable_command_buffer" in (
      rows["train_32"]["jax_bf16@command_buffer_conv"]["xla_flags"]
  )
