"""Time to trace the model's initialisation with `jax.eval_shape`, as training,
evaluation and predict trace it before anything is allocated (the jitted initialisation
traces it once more): `build_model`'s keys (`InitKeys`, a count in Python) against Flax's
`nnx.Rngs` streams (a count in a Variable), which give the same parameters
(tests/test_model.py).

    python benchmarks/model_init.py [--repeats 5] [--configs tiny paper]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from cfrnet_jax.models.cfrnet import CFRNet, build_model  # noqa: E402
from configs import base, tiny  # noqa: E402

CONFIGS = {"tiny": lambda: tiny.get_config().model, "paper": base.get_model_config}
INITIALISERS = {
    "build_model (InitKeys)": lambda config: build_model(config, 0),
    "nnx.Rngs": lambda config: CFRNet(config, rngs=nnx.Rngs(0)),
}


def traced_seconds(initialise, config, repeats: int) -> float:
  """Median seconds of `jax.eval_shape` over the model's variables."""
  times = []
  for _ in range(repeats):
    began = time.perf_counter()
    jax.eval_shape(lambda: nnx.state(initialise(config)))
    times.append(time.perf_counter() - began)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "paper"])
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}; median of {args.repeats} traced initialisations")
  print("| model | initialiser | seconds |\n|---|---|---|")
  for name in args.configs:
    config = CONFIGS[name]()
    for label, initialise in INITIALISERS.items():
      print(f"| {name} | {label} | {traced_seconds(initialise, config, args.repeats):.3f} |")


if __name__ == "__main__":
  main()
