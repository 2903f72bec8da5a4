"""What the benchmarks run the product's training step on: synthetic batches, the models,
and the step itself compiled (`train_step.jit_train_step`, the config's loss).

One place for these, so that every benchmark times the same work (`benchmarks/speed.py`,
`benchmarks/step_memory.py`, `benchmarks/input_pipeline.py`), and so that a benchmark that
does not compare with PyTorch need not import it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from cfrnet_jax.state import model_graphdef
from cfrnet_jax.training import sharding, train_step
from configs import tiny
from configs.base import get_config

MODELS = ("paper", "smoke")


def make_batch(batch: int, height: int, width: int, seed: int = 0) -> dict:
  """Random crops with 64 heads each, in the fields of `data.pipeline.TrainCrop`."""
  rng = np.random.default_rng(seed)
  points = rng.uniform(0, [width, height], (batch, 256, 2)).astype(np.float32)
  return {
      "image": rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8),
      "points": points,
      "valid": np.arange(256)[None].repeat(batch, 0) < 64,
      "valid_size": np.tile(np.array([height, width], np.int32), (batch, 1)),
      "count": np.full((batch,), 64, np.int32),
  }


class _SeededBatches:
  """`make_batch` with seeds 0, 1, 2, ...: a host iterator for `sharding.DevicePrefetch`."""

  def __init__(self, batch: int, height: int, width: int):
    self._shape, self._seed = (batch, height, width), 0

  def __next__(self) -> dict:
    self._seed += 1
    return make_batch(*self._shape, self._seed - 1)

  def get_state(self) -> int:
    return self._seed


def device_batch(batch: int, height: int, width: int, mesh, steps: int = 1) -> dict:
  """The global batch of a training step that takes `steps` steps per call
  (`config.steps_per_jit`), as the product's `DevicePrefetch` hands it to the step: one
  `make_batch` (seed 0), or with `steps` > 1 that many different ones (seeds 0 to
  steps - 1) stacked on a new leading axis."""
  host = _SeededBatches(batch, height, width)
  return sharding.DevicePrefetch(host, mesh, size=1, steps=steps).peek()


def model_config(model: str) -> ml_collections.ConfigDict:
  """The config whose model a benchmark runs: "paper", or "smoke": `configs/tiny.py:plain`
  with the dual-head predictor (so that its loss has both terms), which XLA compiles in a
  fraction of the time on a CPU, for checking the benchmark scripts themselves."""
  if model == "paper":
    return get_config()
  if model != "smoke":
    raise ValueError(f"model must be one of {MODELS}, got {model!r}.")
  config = tiny.get_config("plain")
  config.model.use_dhp = True
  return config


def compiled_train_step(
    config: ml_collections.ConfigDict, host_batch: dict
) -> tuple[Callable[[], jax.Array], jax.stages.Compiled]:
  """The product's training step for `config`, compiled for `host_batch` laid out over all
  devices, and `step()`, which takes one step on that batch (the state donated and carried
  from call to call) and returns its loss without waiting for it."""
  mesh = sharding.create_mesh()
  state, state_sharding = train_step.create_train_state(config, mesh)
  batch = sharding.make_global_batch(host_batch, mesh)
  compiled = (
      train_step.jit_train_step(config, model_graphdef(config.model), mesh, state_sharding)
      .lower(state, batch)
      .compile()
  )
  holder = {"state": state}

  def step() -> jax.Array:
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics["loss"]

  return step, compiled
