"""Orbax checkpoints: written by training, read by training, evaluation and prediction.

One `CheckpointManager` per run under `WORKDIR/checkpoints`, with two items per step:
  state      the `TrainState` pytree (step, params, batch_stats, opt_state, ...);
  data_iter  grain's iterator state, so that a resumed run sees exactly the batches an
             uninterrupted run would have seen.
Saves are asynchronous. Kept: the latest `config.keep_checkpoints` steps and the
`BEST_KEPT` (2) best steps by evaluation MAE, so that a ranked run whose best checkpoint
is damaged still has the next best on the same rule.

Training restores everything (`restore`, `restore_newest_intact`). Evaluation and
prediction restore only the parameters and BatchNorm statistics (`restore_variables`, a
partial restore: the Adam moments, twice the parameters' size, are never read).
Restoring without this package is plain Orbax:
    ocp.StandardCheckpointer().restore(WORKDIR + "/checkpoints/STEP/state")

A checkpoint that does not read is replaced by the next one on the reader's rule:
training's newest first, evaluation's and prediction's by saved MAE (`steps_by_rank`);
`checkpoint_repair` says how, and moves what training cannot read aside. A save that
fails (a full disk) stops the run naming the step, the folder and the error
(`CheckpointSaveError`); the steps saved before are untouched, and the same command
resumes from them once there is space.

What else binds a workdir: its `config.json` (`run_config`) and its one training run at a
time (`workdir_lock`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grain.python as grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cfrnet_jax import checkpoint_repair, run_config
from cfrnet_jax.state import ModelVariables, abstract_variables
from configs import base

ITEMS = ("state", "data_iter")
# Ranked runs keep this many best steps by MAE: a damaged best falls back to the next best.
BEST_KEPT = 2


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, a lost mount, no permission)."""


def create_checkpoint_manager(
    workdir: str | Path, keep_checkpoints: int | None = None
) -> ocp.CheckpointManager:
  """The run's manager. `keep_checkpoints` (a training run passes its
  `config.keep_checkpoints`; None: the default of `configs/base.py`) is how many of the
  latest steps a save keeps, besides the `BEST_KEPT` best by MAE. The policy runs only
  after a save, so for a reader, which never saves, the count changes nothing. Raises
  `checkpoint_repair.DamagedCheckpointError` when a step's metrics file does not read."""
  if keep_checkpoints is None:
    keep_checkpoints = base.get_config().keep_checkpoints
  policy = checkpoint_managers.AnyPreservationPolicy(
      [
          checkpoint_managers.LatestN(keep_checkpoints),
          checkpoint_managers.BestN(
              get_metric_fn=lambda metrics: metrics["mae"],
              reverse=True,
              n=BEST_KEPT,
              keep_checkpoints_without_metrics=False,
          ),
      ]
  )
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      best_fn=lambda metrics: metrics["mae"],
      best_mode="min",
      enable_async_checkpointing=True,
      # Orbax's own cleanup runs in a background thread that a run stopping early
      # (a bad config, missing weights) leaves running at exit, and in a reader it would
      # delete a save that a live training run is writing: `prepare_for_training`
      # removes what a killed or failed save left instead, in training only.
      cleanup_tmp_directories=False,
  )
  checkpoint_repair.refuse_damaged_metrics(workdir)  # Orbax would fail on them here
  directory = Path(workdir).absolute() / "checkpoints"
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


class AsyncSaves:
  """A training run's asynchronous saves, as a context manager around its loop.

  `save` starts a save of the state and the iterator's position at a step after waiting
  for the one under way (Orbax would raise a failed previous save as the new step's);
  leaving waits for the last one. A save that fails (a full disk, say) raises
  `CheckpointSaveError` naming the step, the folder and what is kept. When the loop is
  left by another exception, the saves under way are still waited for, and a failure
  among them is logged rather than raised, so that the first error is the one reported."""

  def __init__(self, manager: ocp.CheckpointManager, last_saved: int):
    self.manager = manager
    self.last_saved = last_saved  # the newest step saved or being saved

  def __enter__(self) -> AsyncSaves:
    return self

  def save(self, step: int, state, iterator, metrics: dict | None = None) -> None:
    self._wait()
    try:
      self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data_iter=grain.PyGrainCheckpointSave(iterator),
          ),
          metrics=metrics,
          force=True,
      )
    except Exception as error:
      raise _save_error(self.manager, step, error) from error
    self.last_saved = step

  def _wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as error:
      raise _save_error(self.manager, self.last_saved, error) from error

  def __exit__(self, error_type, error, traceback) -> None:
    if error_type is None:
      self._wait()
      return
    try:
      self._wait()
    except CheckpointSaveError as save_error:
      logging.warning("%s", save_error)


def _save_error(manager: ocp.CheckpointManager, step: int, error: Exception) -> CheckpointSaveError:
  kept = checkpoint_repair.finished_steps(manager.directory)
  return CheckpointSaveError(
      f"Could not write the checkpoint of step {step} in {manager.directory}: "
      f"{checkpoint_repair.error_reason(error)}. "
      + (
          f"The checkpoints of steps {kept} are intact; free some space (or fix the "
          "folder) and rerun the same command to resume from the newest of them."
          if kept
          else "No earlier checkpoint exists; free some space and rerun the command."
      )
  )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator=None):
  """The whole state at `step` (shaped and sharded like `abstract_state`); restores the
  iterator's position in place when one is given."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if iterator is not None:
    items["data_iter"] = grain.PyGrainCheckpointRestore(iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_newest_intact(
    manager: ocp.CheckpointManager, workdir: str | Path, abstract_state, iterator
):
  """The state and data position of the newest checkpoint that reads, for resuming.

  Each newer one that does not read on every host is moved to
  `WORKDIR/damaged_checkpoints/STEP` with a warning, so that the run saves that step
  again when it gets there. Raises `checkpoint_repair.DamagedCheckpointError` when none
  reads: a run never starts from scratch over checkpoints it could not read."""
  steps = sorted(manager.all_steps(), reverse=True)
  step, state, failures = checkpoint_repair.first_readable(
      steps,
      manager.directory,
      lambda step: restore(manager, step, abstract_state, iterator),
      fall_back=True,
  )
  if failures:
    checkpoint_repair.set_aside(manager.directory, workdir, [damaged for damaged, _ in failures])
    manager.reload()
    logging.warning("Resuming from step %d, the newest checkpoint that reads.", step)
  return state


def saved_worker_count(manager: ocp.CheckpointManager, step: int) -> int | None:
  """The grain worker count of the run that saved `step`, from its iterator state (None
  if it cannot be read). Batches are formed inside the workers, so it is part of the
  data position: grain restores that position only with the same count."""
  files = sorted((Path(manager.directory) / str(step) / "data_iter").glob("process_*.json"))
  try:
    return int(json.loads(files[0].read_text())["worker_count"]) if files else None
  except (ValueError, KeyError, TypeError):
    return None


def _metrics_path(manager: ocp.CheckpointManager, step: int) -> Path:
  return Path(manager.directory) / str(step) / "metrics" / "metrics"


def saved_metrics(manager: ocp.CheckpointManager, step: int) -> dict:
  """The evaluation metrics saved with `step`'s checkpoint (those it is ranked by)."""
  return json.loads(_metrics_path(manager, step).read_text())


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the lowest MAE, or the latest when none was evaluated."""
  best = manager.best_step()
  return manager.latest_step() if best is None else best


def steps_by_rank(manager: ocp.CheckpointManager) -> list[int]:
  """Every kept step in the order a reader falls back along: the ranked ones by their
  saved MAE, best first (equal MAEs newest first, as Orbax ranks them), then the unranked
  ones newest first. A damaged best checkpoint is so replaced by the next best on the
  same split, not by whatever step is newest."""
  newest_first = sorted(manager.all_steps(), reverse=True)
  ranked = [step for step in newest_first if _metrics_path(manager, step).exists()]
  by_mae = sorted(ranked, key=lambda step: saved_metrics(manager, step)["mae"])  # stable
  order = by_mae + [step for step in newest_first if step not in ranked]
  best = manager.best_step()
  if best in order:  # Orbax's choice, which training reports, always comes first
    order.remove(best)
    order.insert(0, best)
  return order


def restore_variables(
    workdir: str | Path, model_config: ml_collections.ConfigDict, step: int | None = None
) -> tuple[int, ModelVariables]:
  """(step, parameters and BatchNorm statistics) of `workdir`'s checkpoint at `step`
  (default: the best by evaluation MAE, else the latest), on this host's first device.
  Without `step`, a checkpoint that does not read is replaced by the next one of
  `steps_by_rank`, with a warning naming the step used; an explicit `step` that does not
  read is an error. Nothing else of the checkpoint is read, and nothing is written."""
  if not (Path(workdir) / "checkpoints").is_dir():  # the manager would create it
    raise FileNotFoundError(f"No checkpoint in {Path(workdir).absolute() / 'checkpoints'}.")
  manager = create_checkpoint_manager(workdir)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
    if step is not None and step not in steps:
      raise FileNotFoundError(
          f"No checkpoint of step {step} in {manager.directory} (it has steps {steps})."
      )
    # The chosen step first; without an explicit --step, the others by rank after it.
    order = steps_by_rank(manager)
    if step is not None:
      order = [step] + [s for s in order if s != step]
    directory = Path(manager.directory)
  finally:
    manager.close()
  abstract = abstract_variables(model_config)._asdict()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)

  def read(step: int) -> dict:
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(
          directory / str(step) / "state",
          args=ocp.args.PyTreeRestore(
              item=abstract, restore_args=restore_args, partial_restore=True
          ),
      )

  found, restored, failures = checkpoint_repair.first_readable(
      order, directory, read, fall_back=step is None
  )
  if failures:
    logging.warning("Using the checkpoint of step %d instead of step %d.", found, order[0])
  return found, ModelVariables(**restored)


def restore_model(
    workdir: str | Path, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> tuple[ml_collections.ConfigDict, int, ModelVariables]:
  """(config, step, variables) of a trained run, for inference (predict, serve, export):
  the run's own `config.json` unless `config` is given, which must then count as the
  run's does (`run_config.check_counting_config`), and `restore_variables` at `step`."""
  if config is None:
    config = run_config.load_run_config(workdir)
  else:
    run_config.check_counting_config(workdir, config)
  step, variables = restore_variables(workdir, config.model, step)
  logging.info("Restored step %d of %s.", step, workdir)
  return config, step, variables
