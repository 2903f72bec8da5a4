"""Damaged checkpoints: found, fallen back past, and moved out of a training run's way.

A checkpoint is damaged when a file of it is truncated, emptied or missing (a copy that
broke off, a disk that filled up). Readers try steps in their order of preference
(`first_readable`): each one that fails is a warning naming the step, its folder and what
failed, and the next is tried; when none reads, `DamagedCheckpointError` lists each.
Hosts of a multi-host run agree on every step: one that any host cannot read counts as
damaged on all.

Training alone changes the checkpoint folder: `set_aside` moves damaged steps to
`WORKDIR/damaged_checkpoints/` (kept for inspection, out of Orbax's way, so that the run
saves those steps again), and `prepare_for_training` does so for steps whose metrics
file Orbax could not even open the folder with, and deletes the temporary folders of
saves that a killed or failed run left. Readers (evaluation, prediction) never move or
delete anything: a live training run may be writing there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from cfrnet_jax import hosts, orbax_noise

DAMAGED_DIR = "damaged_checkpoints"  # under the workdir: where training moves damaged steps


class DamagedCheckpointError(RuntimeError):
  """No checkpoint that was asked for, or none at all, can be read."""


def finished_steps(directory: str | Path) -> list[int]:
  """Steps whose folders Orbax finalised (a save in progress is a temporary folder)."""
  if not Path(directory).is_dir():
    return []
  return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def error_reason(error: BaseException) -> str:
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


def _damaged_metrics(directory: Path) -> list[tuple[Path, str]]:
  """(file, reason) for each finished step whose metrics file is not valid JSON."""
  found = []
  for step in finished_steps(directory):
    path = directory / str(step) / "metrics" / "metrics"
    if path.exists():
      try:
        json.loads(path.read_text())
      except (ValueError, OSError) as error:
        found.append((path, error_reason(error)))
  return found


def refuse_damaged_metrics(workdir: str | Path) -> None:
  """Raises `DamagedCheckpointError` naming each step's metrics file in
  `WORKDIR/checkpoints` that does not read: Orbax reads every step's metrics when it opens
  the folder, and would fail there with a bare JSON error, before any fallback."""
  damaged = _damaged_metrics(Path(workdir).absolute() / "checkpoints")
  if damaged:
    raise DamagedCheckpointError(
        "; ".join(f"{path} cannot be read ({reason})" for path, reason in damaged)
        + ". Orbax reads these evaluation metrics to rank checkpoints: move the step "
        f"folders away (a training run moves them to {Path(workdir) / DAMAGED_DIR} itself)."
    )


def prepare_for_training(workdir: str | Path) -> None:
  """Makes `WORKDIR/checkpoints` openable and tidy before a training run opens it, on
  the first host (the others wait): each step whose metrics file is damaged moves to
  `WORKDIR/damaged_checkpoints/` (readers get `refuse_damaged_metrics`'s error
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
  hosts.sync("prepare the checkpoint folder")


def set_aside(directory: str | Path, workdir: str | Path, steps: list[int]) -> None:
  """Moves each of `steps` from the checkpoint folder `directory` to
  `WORKDIR/damaged_checkpoints/STEP` (by process 0; every host waits for it)."""
  if jax.process_index() == 0:
    for step in steps:
      _move_aside(directory, workdir, step)
  hosts.sync("moved the damaged checkpoints")


def _move_aside(directory: str | Path, workdir: str | Path, step: int) -> None:
  target = Path(workdir) / DAMAGED_DIR / str(step)
  if target.exists():
    target = target.with_name(f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.move(str(Path(directory) / str(step)), target)
  logging.warning("Moved the damaged checkpoint of step %d to %s.", step, target)


def _read_everywhere(read_here: bool) -> bool:
  """Whether every process read the step: hosts of one run must agree on the step they
  resume from (and on the steps they move aside), even when one host's read fails."""
  return bool(np.all(hosts.flags_of_every_host(read_here)))


def _read(read: Callable, step: int):
  """(read(step), None), or (None, why it failed)."""
  try:
    return read(step), None
  except Exception as error:  # Orbax and TensorStore raise many types for bad files.
    return None, error_reason(error)


def first_readable(steps: list[int], directory: str | Path, read: Callable, fall_back: bool):
  """(step, read(step), failures) for the first step of `steps` that reads on every host,
  with `failures` the (step, reason) of each one before it. Each failure is logged, and
  with `fall_back=False` the first one raises. Raises `DamagedCheckpointError` listing
  every failure when none reads."""
  failures = []
  orbax_noise.drop_abandoned_reads()  # before reading: a failed read's reports start at once
  for step in steps:
    result, reason = _read(read, step)
    if reason is not None:  # the error and its abandoned reads are released by now
      orbax_noise.collect_abandoned_reads()
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
