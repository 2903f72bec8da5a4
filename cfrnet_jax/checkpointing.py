"""Orbax checkpoints: written by training, read by training, evaluation and prediction.

One `CheckpointManager` per run under `WORKDIR/checkpoints`, with two items per step:
  state      the `TrainState` pytree (step, params, batch_stats, opt_state, ...);
  data_iter  grain's iterator state, so that a resumed run sees exactly the batches an
             uninterrupted run would have seen.
Saves are asynchronous. Kept: the latest `config.keep_checkpoints` steps and the best
step by evaluation MAE.

Training restores everything (`restore`). Evaluation and prediction restore only the
parameters and BatchNorm statistics (`restore_variables`, a partial restore: the Adam
moments, twice the parameters' size, are never read). Restoring without this package is
plain Orbax:
    ocp.StandardCheckpointer().restore(WORKDIR + "/checkpoints/STEP/state")

One training run per workdir (`workdir_lock`): a second run started on a workdir that a
live run is training in stops at once, naming the first, instead of interleaving its
checkpoints with the other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grain.python as grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cfrnet_jax.state import ModelVariables, abstract_variables
from configs import base

ITEMS = ("state", "data_iter")


def create_checkpoint_manager(
    workdir: str | Path, keep_checkpoints: int = 1
) -> ocp.CheckpointManager:
  """The run's manager; `keep_checkpoints` is how many of the latest steps a training
  run keeps (besides the best by MAE); readers need not set it."""
  policy = checkpoint_managers.AnyPreservationPolicy(
      [
          checkpoint_managers.LatestN(keep_checkpoints),
          checkpoint_managers.BestN(
              get_metric_fn=lambda metrics: metrics["mae"],
              reverse=True,
              n=1,
              keep_checkpoints_without_metrics=False,
          ),
      ]
  )
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      best_fn=lambda metrics: metrics["mae"],
      best_mode="min",
      enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(
      Path(workdir).absolute() / "checkpoints", options=options, item_names=ITEMS
  )


def save(
    manager: ocp.CheckpointManager, step: int, state, iterator, metrics: dict | None = None
) -> None:
  """Starts an asynchronous save of `state` and the iterator's position at `step`."""
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data_iter=grain.PyGrainCheckpointSave(iterator)
      ),
      metrics=metrics,
      force=True,
  )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator=None):
  """The whole state at `step` (shaped and sharded like `abstract_state`); restores the
  iterator's position in place when one is given."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if iterator is not None:
    items["data_iter"] = grain.PyGrainCheckpointRestore(iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def saved_worker_count(manager: ocp.CheckpointManager, step: int) -> int | None:
  """The grain worker count of the run that saved `step`, from its iterator state (None
  if it cannot be read). Batches are formed inside the workers, so it is part of the
  data position: grain restores that position only with the same count."""
  files = sorted((Path(manager.directory) / str(step) / "data_iter").glob("process_*.json"))
  try:
    return int(json.loads(files[0].read_text())["worker_count"]) if files else None
  except (ValueError, KeyError, TypeError):
    return None


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the lowest MAE, or the latest when none was evaluated."""
  best = manager.best_step()
  return manager.latest_step() if best is None else best


def restore_variables(
    workdir: str | Path, model_config: ml_collections.ConfigDict, step: int | None = None
) -> tuple[int, ModelVariables]:
  """(step, parameters and BatchNorm statistics) of `workdir`'s checkpoint at `step`
  (default: the best by evaluation MAE, else the latest), on this host's first device.
  Nothing else of the checkpoint is read, and nothing is written."""
  if not (Path(workdir) / "checkpoints").is_dir():  # the manager would create it
    raise FileNotFoundError(f"No checkpoint in {Path(workdir).absolute() / 'checkpoints'}.")
  manager = create_checkpoint_manager(workdir)
  try:
    step = best_step(manager) if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
    if step not in manager.all_steps():
      raise FileNotFoundError(
          f"No checkpoint of step {step} in {manager.directory} "
          f"(it has steps {sorted(manager.all_steps())})."
      )
    directory = manager.directory / str(step) / "state"
  finally:
    manager.close()
  abstract = abstract_variables(model_config)._asdict()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(
        directory,
        args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
    )
  return step, ModelVariables(**restored)


# Fields a resumed run may change: how it computes, reads or evaluates, not what it trains.
RESUMABLE_CHANGES = (
    "model.dtype",
    "model.remat",
    "model.attention",
    "data.data_dir",
    "data.num_workers",
    "data.worker_buffer_size",
    "data.device_prefetch",
    "data.eval_split",
)
# Sections whose other fields define the parameters, the data and its order, and the
# optimizer state's structure (a schedule adds a step count to it).
RUN_DEFINING = ("model", "data", "targets", "seed", "batch_size", "lr_schedule")


def _flatten(values: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for every run-defining field in which `config` differs from
  a run's saved config (as JSON values, so tuples and lists compare equal)."""
  now = json.loads(config.to_json_best_effort())
  saved = json.loads(json.dumps(base.complete(saved).to_dict()))
  picked = lambda values: {
      path: value
      for path, value in _flatten({k: values.get(k) for k in RUN_DEFINING}).items()
      if path not in RESUMABLE_CHANGES
  }
  before, after = picked(saved), picked(now)
  return [
      f"{path}: {before.get(path)!r} -> {after.get(path)!r}"
      for path in sorted(set(before) | set(after))
      if before.get(path) != after.get(path)
  ]


def check_resumable(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume `workdir`'s run with a config that trains something else (another
  model, data or order), naming the fields, instead of failing on a shape deep in Orbax
  or silently training on other data. Fields in RESUMABLE_CHANGES may differ."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    return
  differences = config_differences(json.loads(path.read_text()), config)
  if differences:
    raise ValueError(
        f"{workdir} holds checkpoints of a run with another configuration ("
        + "; ".join(differences)
        + f"). Resume it with the config it was started with ({path}), or start the new "
        f"run in another workdir."
    )


LOCK_FILE = "training.lock"


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[None]:
  """Holds `workdir/training.lock` for a training run (process 0 of a multi-host job;
  the other hosts share its fate).

  An advisory `flock` on the file: the kernel releases it when the process ends in any
  way, SIGKILL included, so a crashed run never leaves a stale lock, and no one has to
  delete a file by hand. The file says who holds it (host, pid, start time) for the
  message that refuses a second run."""
  if jax.process_index() != 0:
    yield
    return
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  handle = open(path, "a+")
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      raise RuntimeError(
          f"{workdir} is in use by a running training run ({holder}; lock {path}). Two runs "
          "in one workdir would overwrite each other's checkpoints: wait for it to end, "
          "stop it, or give this run another --workdir."
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"host {socket.gethostname()}, pid {os.getpid()}, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    handle.flush()
    yield
  finally:
    handle.close()  # releases the lock


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
