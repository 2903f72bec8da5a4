"""Orbax checkpoints: the training state and the data iterator, saved together.

One `CheckpointManager` per run under `WORKDIR/checkpoints`, with two items per step:
  state      the `TrainState` pytree (step, params, batch_stats, opt_state, ...);
  data_iter  grain's iterator state, so that a resumed run sees exactly the batches an
             uninterrupted run would have seen.
Saves are asynchronous. Kept: the latest `config.keep_checkpoints` steps and the best
step by evaluation MAE. Restoring without this code is plain Orbax (see README):
    ocp.CheckpointManager(WORKDIR + "/checkpoints").restore(step)["state"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain.python as grain
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

ITEMS = ("state", "data_iter")


class _WithoutMetricsNotice(logging.Filter):
  """Orbax warns at every save without metrics when a best-by-metric policy is set; our
  training saves are metric-free by design (only evaluations have an MAE)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()



def create_checkpoint_manager(workdir: str | Path,
                              config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _WithoutMetricsNotice) for f in absl_logger.filters):
    absl_logger.addFilter(_WithoutMetricsNotice())
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(config.keep_checkpoints),
      checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics["mae"], reverse=True,
                                n=1, keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=lambda metrics: metrics["mae"], best_mode="min",
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                               item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state, iterator,
         metrics: dict | None = None) -> None:
  """Starts an asynchronous save of `state` and the iterator's position at `step`."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.PyGrainCheckpointSave(iterator)), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator=None):
  """The state at `step` (shaped and sharded like `abstract_state`); restores the
  iterator's position in place when one is given."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if iterator is not None:
    items["data_iter"] = grain.PyGrainCheckpointRestore(iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the lowest MAE, or the latest when none was evaluated."""
  best = manager.best_step()
  return manager.latest_step() if best is None else best
