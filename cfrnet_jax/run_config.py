"""A run's `config.json`: what binds a workdir's later uses to the run that trained it.

Training writes the resolved config to `WORKDIR/config.json`; `load_run_config` reads it
back, completed with today's defaults for fields added since (`configs.base.complete`).
A later use must share the fields that define what it continues or counts with
(`config_differences`): resuming refuses a config that trains something else
(`check_resumable`: RUN_DEFINING, less RESUMABLE_CHANGES), and evaluation and prediction
refuse one that counts differently (`check_counting_config`: COUNT_DEFINING, less
COUNTING_CHANGES), naming each field as 'saved -> now' (`ConfigMismatchError`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_collections

from configs import base

# Which fields of a run's `config.json` a later use of the run must share. A field is
# selected by its dotted path or by a section above it ("model" selects model.channels).
#
# Resuming (`check_resumable`): the fields that define the parameters, the data and its
# order, the loss, and the optimizer state's structure (a schedule adds a step count).
RUN_DEFINING = ("model", "data", "targets", "loss", "freeze", "seed", "batch_size", "lr_schedule")
# Fields within those that a resumed run may change: how it computes, reads or
# evaluates, not what it trains or counts.
RESUMABLE_CHANGES = (
    "model.dtype",
    "model.foreground_gate",  # inference only
    "model.remat",
    "model.attention",
    "data.data_dir",
    "data.num_workers",
    "data.max_auto_workers",  # the count a run resumes with is its checkpoint's
    "data.points_multiple",  # padding of the points: same losses
    "data.worker_buffer_size",
    "data.device_prefetch",
    "data.eval_split",
)
# Counting with the run (evaluate, predict, serve: `check_counting_config`): the fields
# that change what the trained parameters compute from a picture or mean: the model's
# structure and density scale, the picture's size and normalisation, and the density
# maps it was trained to output. The loss, the data order, the training and evaluation
# splits (UCF_CC_50's folds set them), the dataset and where it is read may all differ.
COUNT_DEFINING = ("model", "data.max_side", "data.mean", "data.std", "targets")
# Fields within those that may differ when counting: the resumable ones, and the
# parameters' initialisation, which the checkpoint's values replace.
COUNTING_CHANGES = RESUMABLE_CHANGES + ("model.density_init",)


class ConfigMismatchError(ValueError):
  """A config that would resume or count a run as another run (`config_differences`)."""


def _flatten(values: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _selected(path: str, selection: tuple[str, ...]) -> bool:
  return any(path == name or path.startswith(f"{name}.") for name in selection)


def config_differences(
    saved: dict,
    config: ml_collections.ConfigDict,
    defining: tuple[str, ...] = RUN_DEFINING,
    free: tuple[str, ...] = RESUMABLE_CHANGES,
) -> list[str]:
  """'field: saved -> now' for every field selected by `defining` and not by `free` in
  which `config` differs from a run's saved config (completed by `configs.base.complete`;
  compared as JSON values, so tuples and lists compare equal). The defaults are the
  rule for resuming; `check_counting_config` passes COUNT_DEFINING and COUNTING_CHANGES."""
  return [
      line
      for path, line in _differences(saved, config).items()
      if _selected(path, defining) and not _selected(path, free)
  ]


def _differences(saved: dict, config: ml_collections.ConfigDict) -> dict[str, str]:
  """{path: 'path: saved -> now'} for every field that differs, sorted by path."""
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(json.loads(json.dumps(base.complete(saved).to_dict())))
  return {
      path: f"{path}: {before.get(path)!r} -> {now.get(path)!r}"
      for path in sorted(set(before) | set(now))
      if before.get(path) != now.get(path)
  }


def check_resumable(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume `workdir`'s run with a config that trains something else (another
  model, data, order or loss), naming the fields, instead of failing on a shape deep in
  Orbax, silently training on other data or with another loss (and then recording that
  config as the run's). Fields in RESUMABLE_CHANGES may differ."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    return
  differences = config_differences(json.loads(path.read_text()), config)
  if differences:
    raise ConfigMismatchError(
        f"{workdir} holds checkpoints of a run with another configuration ("
        + "; ".join(differences)
        + f"). Resume it with the config it was started with ({path}), or start the new "
        f"run in another workdir."
    )


def check_counting_config(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to count with `workdir`'s checkpoints under a `config` whose COUNT_DEFINING
  fields differ from the run's `config.json` (another density scale, image size or
  normalisation would give wrong counts and metrics without any error), naming each
  field as 'saved -> given'. The other differences (prediction settings, the foreground
  gate, compute dtype, splits, where the data is read, training-only fields) are
  logged. A workdir without `config.json` cannot be checked: a warning says so."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    logging.warning(
        "%s has no config.json: the given config cannot be checked against the run's.", workdir
    )
    return
  saved = json.loads(path.read_text())
  refused = config_differences(saved, config, COUNT_DEFINING, COUNTING_CHANGES)
  if refused:
    raise ConfigMismatchError(
        f"The given config counts differently from the run in {workdir}, which was trained "
        "with other values of fields that change its counts ("
        + "; ".join(refused)
        + f"). Count with the config it was trained with, saved in {path}: the same config "
        "file and overrides (predict and serve use it when --config is left out)."
    )
  others = list(_differences(saved, config).values())
  if others:
    logging.info(
        "The given config differs from %s in fields that do not change the counts: %s.",
        path,
        "; ".join(others),
    )


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a training run saved in `workdir/config.json`, completed with today's
  defaults for fields added since it was written (`configs.base.complete`)."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
        f"{path} does not exist: is {workdir} a training workdir? "
        f"Otherwise pass the config that trained it."
    )
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error}).") from error
  return base.complete(saved)
