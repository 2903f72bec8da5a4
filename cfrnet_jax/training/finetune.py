"""Starting a run from a trained model (`config.init_from`) and keeping parts fixed
(`config.freeze`): fine-tuning a counter on a user's own pictures.

A fine-tuning run is a new run: its own workdir, a fresh optimizer (Adam's moments at
zero) and a fresh data position, but the parameters and BatchNorm statistics of the
source run's checkpoint (`config.init_step`, by default the source run's result: its best
checkpoint on validation when it ranked them, else its last). The model it trains is the
source's: `inherit_model` takes every `model.*` field from the source run's
`config.json`, so any trained model can be fine-tuned with `configs/folder.py`, and
refuses a `--config.model.*` that contradicts it, naming the field. Only the fields that
change how the model computes, not its parameters or what it counts
(`COMPUTE_MODEL_FIELDS`), are this run's own. `config.backbone_weights` is not used:
nothing is downloaded. Resuming the fine-tuning run resumes as any run does: its model
fields and learning rate then come from its own `config.json` and its state from its own
checkpoint, so the source workdir is not read (it may have moved or been deleted).
Without `init_from`, `configs/folder.py`'s unset learning rate becomes configs/base.py's
(`default_learning_rate`).

`config.freeze` names parts of the model (`FREEZABLE`, the model's top-level modules)
whose parameters get no updates and whose BatchNorm layers normalise with, and keep,
their running statistics, as they do at inference. Their gradients are not computed
(`stop_gradient`), which also saves the backward pass through a frozen backbone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path

import jax
import ml_collections
import optax
from absl import logging
from flax import nnx

from cfrnet_jax import checkpointing, run_config
from cfrnet_jax.state import ModelVariables
from configs import base

# The model's top-level modules (section 3: VGG16-BN, GAM, the 1x1 compressors to c
# channels, the two CFRM decoders and the dual-head predictors).
FREEZABLE = (
    "backbone",
    "gam",
    "compressors",
    "hierarchical_decoder",
    "axial_decoder",
    "heads",
)
# Model fields that change how the model computes, not its parameters or what it counts.
COMPUTE_MODEL_FIELDS = ("dtype", "remat", "attention", "foreground_gate")


def _as_json(value):
  return json.loads(json.dumps(value, default=list))


def model_differences(
    model: ml_collections.ConfigDict, source: ml_collections.ConfigDict
) -> dict[str, str]:
  """{field: 'model.field: source -> given'} for each field of `model` that defines
  parameters or counts and differs from the source run's `source` model."""
  return {
      name: f"model.{name}: {_as_json(source.get(name))!r} -> {_as_json(model[name])!r}"
      for name in sorted(model.keys())
      if name not in COMPUTE_MODEL_FIELDS and _as_json(model[name]) != _as_json(source.get(name))
  }


def source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the source run `config.init_from` saved (completed with defaults)."""
  return run_config.load_run_config(config.init_from)


def _model_source(
    config: ml_collections.ConfigDict, workdir
) -> tuple[ml_collections.ConfigDict, str]:
  """(config, what it is) whose model and learning rate a fine-tuning run takes: its own
  `workdir/config.json` when that records a run from the same `init_from` (a resume,
  which then needs nothing of the source run: it may have moved or been deleted since),
  else the source run's."""
  if workdir is not None and (Path(workdir) / "config.json").exists():
    own = run_config.load_run_config(workdir)
    if own.init_from == config.init_from:
      return own, f"this run's own {Path(workdir) / 'config.json'}"
  return source_config(config), f"the source run's {Path(config.init_from) / 'config.json'}"


def inherit_model(
    config: ml_collections.ConfigDict, overridden: Iterable[str] = (), workdir=None
) -> ml_collections.ConfigDict:
  """`config` with the source run's model fields when `config.init_from` is set (a copy;
  `config` itself unless it is). `overridden` names the fields the user set
  (`model.channels`, ...): one that defines parameters or counts and contradicts the
  source run is refused. An unset `learning_rate` (`configs/folder.py`'s) becomes the
  source run's. With `workdir` (the run's own), a resumed run takes both from its own
  `config.json`, which holds them (`_model_source`), not from the source run."""
  if not config.init_from:
    return config
  source_run, where = _model_source(config, workdir)
  source = source_run.model
  given = {name.removeprefix("model.") for name in overridden if name.startswith("model.")}
  differences = model_differences(config.model, source)
  contradictions = [line for name, line in differences.items() if name in given]
  if contradictions:
    raise ValueError(
        f"init_from={config.init_from!r} fine-tunes that run's model, and the command line "
        "asks for another: "
        + "; ".join(contradictions)
        + ". Drop those --config.model.* flags (only "
        + ", ".join(f"model.{name}" for name in COMPUTE_MODEL_FIELDS)
        + " may differ), or train a new model without init_from."
    )
  config = copy.deepcopy(config)
  for name in config.model.keys():
    if name not in COMPUTE_MODEL_FIELDS and name in source:
      config.model[name] = source[name]
  if config.learning_rate is None:  # configs/folder.py: the source run's own rate
    config.learning_rate = source_run.learning_rate
    logging.info(
        "learning_rate %g, from %s: configs/folder.py fine-tunes at the rate the source run "
        "trained with (benchmarks/finetune_study.py: a tenth of it made every model "
        "worse); --config.learning_rate sets another.",
        config.learning_rate,
        where,
    )
  logging.info("The model's fields come from %s.", where)
  return config


def default_learning_rate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (a copy when changed) with an unset `learning_rate` (`configs/folder.py`'s)
  settled for a run without `init_from`: configs/base.py's, the paper's rate (section
  4.1) for its model trained from `backbone_weights` (ImageNet), logged with why. With
  `init_from`, `inherit_model` sets the source run's."""
  if config.learning_rate is not None or config.init_from:
    return config
  config = copy.deepcopy(config)
  config.learning_rate = base.get_config().learning_rate
  logging.info(
      "learning_rate %g, configs/base.py's: without init_from the model trains from "
      "backbone_weights=%s at the paper's rate (section 4.1); --config.learning_rate sets "
      "another.",
      config.learning_rate,
      config.backbone_weights,
  )
  return config


def check_source_model(config: ml_collections.ConfigDict) -> None:
  """Refuses a fine-tuning config whose model is not the source run's (a config built
  in Python without `inherit_model`), naming each field."""
  differences = model_differences(config.model, source_config(config).model)
  if differences:
    raise ValueError(
        f"init_from={config.init_from!r}: this config's model is not that run's ("
        + "; ".join(differences.values())
        + "). Pass the config through cfrnet_jax.training.finetune.inherit_model first."
    )


def load_source_variables(config: ml_collections.ConfigDict) -> ModelVariables:
  """The source run's parameters and BatchNorm statistics (`config.init_step`, default
  its result), on this host's first device; logs what was loaded."""
  step, variables = checkpointing.restore_variables(
      config.init_from, config.model, config.init_step
  )
  arrays = len(jax.tree.leaves(variables))
  frozen = frozen_parts(config)
  logging.info(
      "Fine-tuning from step %d of %s: loaded %d arrays (every parameter and BatchNorm "
      "statistic of its model); fresh optimizer and data position%s. backbone_weights is "
      "not used.",
      step,
      config.init_from,
      arrays,
      f"; frozen: {', '.join(frozen)}" if frozen else "",
  )
  return variables


def frozen_parts(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The parts `config.freeze` names ("backbone", "backbone,gam", ...; "" for none)."""
  parts = tuple(part.strip() for part in config.freeze.split(",") if part.strip())
  unknown = sorted(set(parts) - set(FREEZABLE))
  if unknown:
    raise ValueError(f"freeze: unknown part(s) {unknown}; choose from {list(FREEZABLE)}.")
  return parts


def without_updates(
    tx: optax.GradientTransformation, frozen: tuple[str, ...]
) -> optax.GradientTransformation:
  """`tx` for the trainable parameters, no update (and no optimizer state) for the
  frozen parts."""
  if not frozen:
    return tx

  def labels(params: dict) -> dict:
    return {
        part: jax.tree.map(lambda _, frozen_part=part in frozen: frozen_part, tree)
        for part, tree in params.items()
    }

  return optax.multi_transform({False: tx, True: optax.set_to_zero()}, labels)


def stop_gradients(params: dict, frozen: tuple[str, ...]) -> dict:
  """`params` with the frozen parts cut from differentiation."""
  return {
      part: jax.lax.stop_gradient(tree) if part in frozen else tree for part, tree in params.items()
  }


def hold_statistics(model: nnx.Module, frozen: tuple[str, ...]) -> None:
  """Makes the frozen parts' BatchNorm layers of a model in training mode normalise
  with their running statistics and leave them unchanged (as at inference; other
  inference-only behaviour, such as the foreground gate, stays off)."""
  for part in frozen:
    getattr(model, part).set_attributes(use_running_average=True, raise_if_not_found=False)
