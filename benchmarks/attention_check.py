"""How far XLA's and cuDNN's attention leave the model from the PyTorch twin: the twin test's
measure, per attention kernel and dtype.

    python benchmarks/attention_check.py                      # paper model, 2 x 256x256
    python benchmarks/attention_check.py --model tiny --size 64   # a check of the script

tests/test_torch_twin.py holds the Flax model to the twin (benchmarks/torch_twin) in
float32 at max |flax - torch| <= 1e-4 x max |flax| over every output of every head. This
script takes that test's randomised state and its measure, and prints the measure for
the inference outputs of `model.attention` "xla" in float32 and bfloat16 and "cudnn" in
bfloat16 (cuDNN's fused kernel, NVIDIA GPUs only: elsewhere its row says so), each
against the twin in float32 on the same pictures: what tolerance a bfloat16 twin test
would need with each kernel, and whether cuDNN's moves the model further from the twin
than bfloat16 itself does. Run it in true float32 on a GPU (NVIDIA_TF32_OVERRIDE=0,
JAX_DEFAULT_MATMUL_PRECISION=highest), as the device check does, so that the float32 row
is the test's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from configs import tiny  # noqa: E402
from configs.base import get_config  # noqa: E402
from tests.test_torch_twin import TOLERANCE, flax_model, randomized_state, twin  # noqa: E402

# (model.attention, model.dtype) of each row.
VARIANTS = (("xla", "float32"), ("xla", "bfloat16"), ("cudnn", "bfloat16"))


def relative_error(flax_out: dict, torch_out: dict) -> float:
  """The twin test's measure: max over every output of every head of max |flax - torch|
  / max |flax| (tests/test_torch_twin.py, `assert_outputs_match`)."""
  errors = []
  for name, head in flax_out["heads"].items():
    for key, value in head.items():
      expected = np.asarray(value, np.float32)
      got = torch_out["heads"][name][key].detach().float().permute(0, 2, 3, 1).cpu().numpy()
      errors.append(np.abs(got - expected).max() / np.abs(expected).max())
  return float(max(errors))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("paper", "tiny"), default="paper")
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=2)
  args = parser.parse_args()
  model_config = get_config().model if args.model == "paper" else tiny.get_config().model
  on_gpu = jax.devices()[0].platform == "gpu"
  print(
      json.dumps(
          {
              "benchmark": "attention_check",
              "device": jax.devices()[0].device_kind,
              "jax": jax.__version__,
              "torch": torch.__version__,
              "model": args.model,
              "pictures": f"{args.batch} x {args.size}x{args.size}",
              "tolerance_of_the_twin_test": TOLERANCE,
          }
      ),
      flush=True,
  )
  params, batch_stats = randomized_state(model_config)
  images = np.random.default_rng(1).normal(size=(args.batch, args.size, args.size, 3))
  images = images.astype(np.float32)
  with torch.no_grad():  # the reference: the twin in float32 on the CPU.
    reference = twin(model_config, params, batch_stats).eval()(
        torch.from_numpy(images).permute(0, 3, 1, 2)
    )
  print("| attention | dtype | max abs diff / max abs (twin test's measure) | within 1e-4 |")
  print("|---|---|---|---|", flush=True)
  for attention, dtype in VARIANTS:
    if attention == "cudnn" and not on_gpu:
      print(f"| {attention} | {dtype} | not run: cuDNN's attention needs an NVIDIA GPU | - |")
      continue
    config = model_config.copy_and_resolve_references()
    config.update(attention=attention, dtype=dtype)
    start = time.perf_counter()
    model = flax_model(config, params, batch_stats)
    model.eval()
    outputs = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images))
    error = relative_error(jax.device_get(outputs), reference)
    print(
        f"| {attention} | {dtype} | {error:.2e} | {'yes' if error <= TOLERANCE else 'no'} |"
        f" ({time.perf_counter() - start:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
  main()
