"""Which checkpoint is a run's result, and the record of a finished run's result.

The model-selection rule (`configs/base.py`, `data.validation` and `best_on_test`):

* a validation split: the best checkpoint by validation MAE is the result, evaluated
  once on `data.test_split` when the config names a labeled one;
* no validation split (ShanghaiTech, UCF_CC_50): the last checkpoint's figures, or, with
  `best_on_test`, the best checkpoint on the test split itself, labelled as such.

A finished run keeps its result in `WORKDIR/result.json`, so that a later command on the
same workdir (a five-fold run resumed after its first folds finished) returns it instead
of training or evaluating again.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
from absl import logging

from cfrnet_jax import checkpointing, evaluation
from cfrnet_jax.state import model_graphdef

RESULT_FILE = "result.json"  # in the workdir: what a finished run returned


def ranks_checkpoints(config: ml_collections.ConfigDict) -> bool:
  """Whether checkpoints are ranked by their evaluation MAE: only where that is honest,
  on a validation split, or on the test split when asked (`best_on_test`)."""
  return config.data.validation or config.best_on_test


def final_result(config, count_fn, manager, workdir: Path, last: dict) -> dict:
  """The run's reported metrics, by the model-selection rule of `configs/base.py`:

  * validation split: the best checkpoint by validation MAE, evaluated once on
    `data.test_split` (when the config names a labeled one), else its validation figures;
  * no validation split: the last checkpoint's test figures ("last"), or, with
    `best_on_test`, the best checkpoint's, labelled "best_on_test" (optimistic).

  `last` is the final evaluation's metrics; `selection`, `step` and `split` say which
  checkpoint and split the returned figures are of."""
  labelled = lambda metrics, selection, step, split: {
      **metrics,
      "selection": selection,
      "step": int(step),
      "split": split,
  }
  if not ranks_checkpoints(config):
    return labelled(last, "last", manager.latest_step(), config.data.eval_split)
  best = checkpointing.best_step(manager)
  best_metrics = checkpointing.saved_metrics(manager, best)
  if config.best_on_test:
    logging.warning(
        "Reporting the best checkpoint on the test split (step %d, MAE %.2f): chosen on the "
        "test data itself, so optimistic (best_on_test).",
        best,
        best_metrics["mae"],
    )
    return labelled(best_metrics, "best_on_test", best, config.data.eval_split)
  tested = None
  if config.data.test_split:  # the best that reads (a damaged one falls back by rank)
    found, variables = checkpointing.restore_variables(workdir, config.model)
    if found != best:
      best, best_metrics = found, checkpointing.saved_metrics(manager, found)
    tested = evaluation.evaluate(
        config, count_fn, variables, config.data.test_split, workdir / f"eval/test_step_{best}"
    )  # None for an unlabeled test split, whose submission file is written
  if tested is None:
    return labelled(best_metrics, "best_on_validation", best, config.data.eval_split)
  logging.info(
      "%s, the checkpoint of step %d (best on %s): MAE %.2f, MSE %.2f.",
      config.data.test_split,
      best,
      config.data.eval_split,
      tested["mae"],
      tested["mse"],
  )
  return labelled(tested, "best_on_validation", best, config.data.test_split)


def record(workdir: Path, result: dict | None) -> None:
  """Keeps a finished run's result, for a later command on the same workdir (a
  five-fold run resumed after its first folds finished)."""
  if jax.process_index() == 0:
    path = workdir / RESULT_FILE
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=2))
    path.with_suffix(".tmp").replace(path)


def finished_result(config, manager, workdir: Path) -> dict | None:
  """The result of a run that reached `num_train_steps` before this command: the one
  it recorded, or, when it was stopped between its last save and that record, the same
  result computed again from its checkpoints."""
  path = workdir / RESULT_FILE
  if path.exists():
    logging.info(
        "%s finished at step %d; its result is in %s.", workdir, config.num_train_steps, path
    )
    return json.loads(path.read_text())
  step = manager.latest_step()
  logging.info(
      "%s finished at step %d before its result was recorded: evaluating it again.",
      workdir,
      step,
  )
  count_fn = evaluation.make_count_fn(model_graphdef(config.model), config.data)
  _, variables = checkpointing.restore_variables(workdir, config.model, step)
  last = evaluation.evaluate(
      config, count_fn, variables, config.data.eval_split, workdir / f"eval/step_{step}"
  )
  result = None if last is None else final_result(config, count_fn, manager, workdir, last)
  record(workdir, result)
  return result
