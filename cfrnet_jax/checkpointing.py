"""Orbax checkpoints: written by training, read by training, evaluation and prediction.

One `CheckpointManager` per run under `WORKDIR/checkpoints`, with two items per step:
  state      the `TrainState` pytree (step, params, batch_stats, opt_state, ...);
  data_iter  grain's iterator state, so that a resumed run sees exactly the batches an
             uninterrupted run would have seen.
Saves are asynchronous. Kept: the latest `config.keep_checkpoints` steps and the
`BEST_KEPT` (2) best steps by evaluation MAE, so that a ranked run whose best checkpoint
is damaged still has the next best on the same rule.

Training restores everything (`restore`). Evaluation and prediction restore only the
parameters and BatchNorm statistics (`restore_variables`, a partial restore: the Adam
moments, twice the parameters' size, are never read). Restoring without this package is
plain Orbax:
    ocp.StandardCheckpointer().restore(WORKDIR + "/checkpoints/STEP/state")

One training run per workdir (`workdir_lock`): a second run started on a workdir that a
live run is training in stops at once, naming the first, instead of interleaving its
checkpoints with the other's.

Damaged checkpoints (a file truncated or missing, say after a disk filled up or a copy
broke off): training tries the newest first and falls back to the next newest;
evaluation and prediction try the steps in order of their saved MAE (best first), then
the unranked ones newest first; each fallback is a warning that names the step, its
folder and what failed. Training moves a damaged
step to `WORKDIR/damaged_checkpoints/` (kept for inspection, out of the manager's way)
and resumes from the newest intact one; when every checkpoint is damaged it stops rather
than start from scratch over them. A save that fails (a full disk) stops the run naming
the step, the folder and the error (`CheckpointSaveError`); the steps saved before are
untouched, and the same command resumes from them once there is space.

A run's `config.json` binds its later uses (`config_differences`): resuming refuses a
config that trains something else (`check_resumable`), and evaluation and prediction
refuse one that counts differently (`check_counting_config`), naming each field.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import grain.python as grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cfrnet_jax.state import ModelVariables, abstract_variables
from configs import base

ITEMS = ("state", "data_iter")
DAMAGED_DIR = "damaged_checkpoints"  # under the workdir: where training moves damaged steps
# Ranked runs keep this many best steps by MAE: a damaged best falls back to the next best.
BEST_KEPT = 2


class DamagedCheckpointError(RuntimeError):
  """No checkpoint that was asked for, or none at all, can be read."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, a lost mount, no permission)."""


def create_checkpoint_manager(
    workdir: str | Path, keep_checkpoints: int | None = None
) -> ocp.CheckpointManager:
  """The run's manager. `keep_checkpoints` (a training run passes its
  `config.keep_checkpoints`; None: the default of `configs/base.py`) is how many of the
  latest steps a save keeps, besides the `BEST_KEPT` best by MAE. The policy runs only
  after a save, so for a reader, which never saves, the count changes nothing."""
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
  directory = Path(workdir).absolute() / "checkpoints"
  damaged = _damaged_metrics(directory)
  if damaged:  # Orbax reads every step's metrics when it opens the folder, and fails
    raise DamagedCheckpointError(
        "; ".join(f"{path} cannot be read ({reason})" for path, reason in damaged)
        + ". Orbax reads these evaluation metrics to rank checkpoints: move the step "
        f"folders away (a training run moves them to {Path(workdir) / DAMAGED_DIR} itself)."
    )
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def _damaged_metrics(directory: Path) -> list[tuple[Path, str]]:
  """(file, reason) for each finished step whose metrics file is not valid JSON."""
  found = []
  for step in _finished_steps(directory):
    path = directory / str(step) / "metrics" / "metrics"
    if path.exists():
      try:
        json.loads(path.read_text())
      except (ValueError, OSError) as error:
        found.append((path, _reason(error)))
  return found


def prepare_for_training(workdir: str | Path) -> None:
  """Makes `WORKDIR/checkpoints` openable and tidy before a training run opens it, on
  the first host (the others wait): each step whose metrics file is damaged moves to
  `WORKDIR/damaged_checkpoints/` (readers get `create_checkpoint_manager`'s error
  instead), and the temporary folders of saves that a killed or failed run left are
  deleted (they never become checkpoints); each is logged."""
  directory = Path(workdir).absolute() / "checkpoints"
  if jax.process_index() == 0:
    for path, reason in _damaged_metrics(directory):
      step = int(path.parent.parent.name)
      logging.warning("The checkpoint of step %d (%s) cannot be read: %s.", step, path, reason)
      _move_aside(directory, workdir, step)
    unfinished = [
        p for p in sorted(directory.glob(f"*{ocp.path.step.TMP_DIR_SUFFIX}*")) if p.is_dir()
    ]
    for path in unfinished:
      shutil.rmtree(path)
    if unfinished:
      logging.warning(
          "Deleted %d unfinished save(s) that an interrupted run left: %s.",
          len(unfinished),
          ", ".join(p.name for p in unfinished),
      )
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("prepare the checkpoint folder")


def _move_aside(directory: Path, workdir: str | Path, step: int) -> None:
  target = Path(workdir) / DAMAGED_DIR / str(step)
  if target.exists():
    target = target.with_name(f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.move(str(Path(directory) / str(step)), target)
  logging.warning("Moved the damaged checkpoint of step %d to %s.", step, target)


def save(
    manager: ocp.CheckpointManager, step: int, state, iterator, metrics: dict | None = None
) -> None:
  """Starts an asynchronous save of `state` and the iterator's position at `step`.

  Call `wait_for_saves` first: Orbax waits for the previous save here and would raise
  its failure as this step's. Raises `CheckpointSaveError` when the save cannot start."""
  try:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data_iter=grain.PyGrainCheckpointSave(iterator)
        ),
        metrics=metrics,
        force=True,
    )
  except Exception as error:
    raise _save_error(manager, step, error) from error


def wait_for_saves(manager: ocp.CheckpointManager, step: int) -> None:
  """Waits for the asynchronous saves under way; a failed one (a full disk, say) raises
  `CheckpointSaveError` naming `step`, the last one started, and what is kept."""
  try:
    manager.wait_until_finished()
  except Exception as error:
    raise _save_error(manager, step, error) from error


def _save_error(manager: ocp.CheckpointManager, step: int, error: Exception) -> CheckpointSaveError:
  kept = _finished_steps(manager.directory)
  return CheckpointSaveError(
      f"Could not write the checkpoint of step {step} in {manager.directory}: "
      f"{_reason(error)}. "
      + (
          f"The checkpoints of steps {kept} are intact; free some space (or fix the "
          "folder) and rerun the same command to resume from the newest of them."
          if kept
          else "No earlier checkpoint exists; free some space and rerun the command."
      )
  )


def _finished_steps(directory: Path) -> list[int]:
  """Steps whose folders Orbax finalised (a save in progress is a temporary folder)."""
  if not Path(directory).is_dir():
    return []
  return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def _reason(error: BaseException) -> str:
  """The first line of an error and of its cause, shortened: Orbax's messages for a bad
  file carry a whole TensorStore spec after it, and paths of temporary folders."""
  lines = []
  while error is not None and len(lines) < 3:
    text = str(error).strip().splitlines()
    line = (text[0] if text else type(error).__name__).split(" See full TensorStore")[0]
    # The start says what failed, the end why (an OS error comes last): keep both.
    lines.append(line if len(line) <= 300 else f"{line[:150]} ... {line[-150:]}")
    error = error.__cause__ or error.__context__
  return " <- ".join(dict.fromkeys(lines))


_ABANDONED_READERS = ("orbax", "tensorstore", "_read_array_index")


def _quiet_abandoned_reads() -> None:
  """When one array of a checkpoint cannot be read, Orbax abandons the reads of all the
  others, and Python prints each abandoned coroutine and asyncio task when it is
  collected, up to the process's exit: thousands of lines that hide the one-line
  warning. Once a checkpoint failed to read, those reports are dropped: only those whose
  coroutine or traceback is Orbax's or TensorStore's; every other report goes through."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_reads", False):
    return

  def hook(unraisable):
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    where = repr(unraisable.object) + " ".join(frame.filename for frame in frames)
    if not any(name in where for name in _ABANDONED_READERS):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(
      lambda record: not (
          "exception was never retrieved" in record.getMessage()
          and any(name in record.getMessage() for name in _ABANDONED_READERS)
      )
  )


def _read_everywhere(read_here: bool) -> bool:
  """Whether every process read the step: hosts of one run must agree on the step they
  resume from (and on the steps they move aside), even when one host's read fails."""
  if jax.process_count() == 1:
    return read_here
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.int32(read_here))))


# The tracebacks TensorStore's native threads print straight to file descriptor 2 when
# the callbacks of abandoned reads find Orbax's event loop closed (several threads at
# once: their lines can be spliced into others).
_LATE_CALLBACK_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\):"
    r"|\s*File \"[^\"]*asyncio/base_events\.py\", line \d+, in \w+"
    r"|\s*self\._check_closed\(\)"
    r"|\s*raise RuntimeError\('Event loop is closed'\)"
    r"|RuntimeError: Event loop is closed"
)


@contextlib.contextmanager
def _without_late_callback_tracebacks(settle_s: float = 0.5) -> Iterator[None]:
  """Captures file descriptor 2 while a checkpoint is tried (and `settle_s` after a
  failure, while the abandoned reads finish), then passes on everything except those
  tracebacks: they come from native threads, past any Python hook."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      if failed:
        time.sleep(settle_s)
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = _LATE_CALLBACK_TRACEBACK.sub("", capture.read().decode(errors="replace"))
      kept = [line for line in text.splitlines() if line.strip(" ^~")]
      if kept:
        sys.stderr.write("\n".join(kept) + "\n")


def _try_steps(steps: list[int], directory: Path, read, fall_back: bool):
  """(step, read(step)) for the first step of `steps` that reads; each one that fails is
  logged, and with `fall_back=False` the first failure raises. Raises
  `DamagedCheckpointError` listing every failure when none reads."""
  failures = []
  for step in steps:
    try:
      with _without_late_callback_tracebacks():
        result, reason = read(step), None
    except Exception as error:  # Orbax and TensorStore raise many types for bad files.
      _quiet_abandoned_reads()
      gc.collect()
      result, reason = None, _reason(error)
    if _read_everywhere(reason is None):
      return step, result, failures
    failures.append((step, reason or "another host could not read it"))
    logging.warning(
        "The checkpoint of step %d (%s) cannot be read: %s.%s",
        step,
        Path(directory) / str(step),
        failures[-1][1],
        " Trying the next one." if fall_back and step != steps[-1] else "",
    )
    if not fall_back:
      break
  raise DamagedCheckpointError(
      f"No checkpoint in {directory} can be read: "
      + "; ".join(f"step {step}: {reason}" for step, reason in failures)
      + ("." if fall_back else f" (the folder also has steps {[s for s in steps[1:]]}).")
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
  `WORKDIR/damaged_checkpoints/STEP` (by process 0) with a warning, so that the run saves
  that step again when it gets there. Raises `DamagedCheckpointError` when none reads:
  a run never starts from scratch over checkpoints it could not read."""
  steps = sorted(manager.all_steps(), reverse=True)
  step, state, failures = _try_steps(
      steps,
      manager.directory,
      lambda step: restore(manager, step, abstract_state, iterator),
      fall_back=True,
  )
  if failures:
    if jax.process_index() == 0:
      for damaged, _ in failures:
        _move_aside(manager.directory, workdir, damaged)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("moved the damaged checkpoints")
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

  found, restored, failures = _try_steps(order, directory, read, fall_back=step is None)
  if failures:
    logging.warning("Using the checkpoint of step %d instead of step %d.", found, order[0])
  return found, ModelVariables(**restored)


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
