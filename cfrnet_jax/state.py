"""The model's structure and variables, apart from any training machinery.

CFRNet is a Flax NNX module; everything that runs it under `jax.jit` splits it into a
static graph definition and two pure trees of arrays:

    graphdef      the module structure (`model_graphdef`, built abstractly: no arrays);
    params        trainable parameters (`nnx.Param`);
    batch_stats   BatchNorm running statistics (`nnx.BatchStat`).

`nnx.merge(graphdef, params, batch_stats)` rebuilds the model inside a jitted function.
Training adds the optimizer state and the step around these (`training.trainer`);
evaluation, prediction and export need only `ModelVariables`, which is what
`checkpointing.restore_variables` reads from a checkpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import ml_collections
from flax import nnx

from cfrnet_jax.models.cfrnet import build_model


class ModelVariables(NamedTuple):
  """The arrays a forward pass needs: parameters and BatchNorm statistics (pure dicts)."""

  params: dict
  batch_stats: dict


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, ModelVariables]:
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, ModelVariables(nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats))


def model_graphdef(model_config: ml_collections.ConfigDict) -> nnx.GraphDef:
  """The model's static structure, built abstractly (no parameters allocated)."""
  graphdef, _ = split_model(nnx.eval_shape(lambda: build_model(model_config)))
  return graphdef


def init_variables(model_config: ml_collections.ConfigDict, seed: int) -> ModelVariables:
  """A freshly initialised model's variables (traceable: `jax.eval_shape` gives their
  shapes without allocating them)."""
  return split_model(build_model(model_config, seed))[1]


def abstract_variables(model_config: ml_collections.ConfigDict) -> ModelVariables:
  """Shapes and dtypes of the variables, as `jax.ShapeDtypeStruct`s."""
  return jax.eval_shape(lambda: init_variables(model_config, 0))


def local_copy(tree):
  """This host's copy of replicated arrays (for per-host evaluation of whole images)."""
  return jax.tree.map(lambda x: x.addressable_data(0), tree)
