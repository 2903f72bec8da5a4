"""The device check's run plan (benchmarks/speed.py `--runs`): rows, backends, XLA flag sets."""

import pytest

from tests.conftest import import_torch

import_torch()  # benchmarks/speed.py times the PyTorch twin beside JAX.
from benchmarks import speed  # noqa: E402


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
  assert "CUDNN" in speed.FLAG_SETS["command_buffer_cudnn"].split("=")[1].split(",")


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
