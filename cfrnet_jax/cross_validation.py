"""UCF_CC_50's protocol: five-fold cross-validation, as one visible function.

UCF_CC_50 has no fixed train/test split: its 50 images form five folds, and a result is
the mean over five runs, each trained on four folds and tested on the fifth. Its config
names the test fold in `data.fold`: 1..5 is a single run, 0 means all five in turn.
`fold_runs` turns a config into the runs it stands for, each with concrete
`data.train_split` and `data.eval_split`, so that training and evaluation only need to
refuse a config that is not one run (`check_single_run`); `run_folds` runs them
(training or evaluation alike) and writes the summary. Every other dataset is a single
run with the splits its config names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from tfds_crowd.ucf_cc_50 import NUM_FOLDS, fold_splits

ALL_FOLDS = 0


def fold_runs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(sub-directory of the workdir, config) of every run `config` stands for: one
  ("", config) without `data.fold`; one per fold, in `fold_k`, for `data.fold = 0`; one
  ("", config of fold k) for `data.fold = k`."""
  if "fold" not in config.data:
    return [("", config)]
  folds = range(1, NUM_FOLDS + 1) if config.data.fold == ALL_FOLDS else [config.data.fold]
  runs = []
  for fold in folds:
    fold_config = ml_collections.ConfigDict(config.to_dict())
    fold_config.data.fold = fold
    fold_config.data.train_split, fold_config.data.eval_split = fold_splits(fold)
    runs.append((f"fold_{fold}" if config.data.fold == ALL_FOLDS else "", fold_config))
  return runs


def check_single_run(config: ml_collections.ConfigDict) -> None:
  """Refuses a config that is not one run with concrete splits: UCF_CC_50's `data.fold
  = 0` (five runs) or a fold whose splits were not set by `fold_runs`. Training and
  evaluation call it, so that a UCF_CC_50 config passed to them directly fails with
  this message rather than with a missing split."""
  if "fold" not in config.data:
    return
  if config.data.fold == ALL_FOLDS:
    raise ValueError(
        f"{config.data.name}: data.fold = 0 stands for all {NUM_FOLDS} folds, which are "
        f"{NUM_FOLDS} runs: run them with cross_validation.run_folds(config, workdir, "
        f"run) (launch.py does), or set data.fold to one fold (1..{NUM_FOLDS})."
    )
  expected = fold_splits(config.data.fold)
  if (config.data.train_split, config.data.eval_split) != expected:
    raise ValueError(
        f"{config.data.name}: data.fold = {config.data.fold} trains on {expected[0]!r} and "
        f"tests on {expected[1]!r}, but the config names {config.data.train_split!r} and "
        f"{config.data.eval_split!r}: take the config from cross_validation.fold_runs."
    )


def run_folds(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    run: Callable[[ml_collections.ConfigDict, Path], dict | None],
    summary_name: str = "folds_summary.json",
) -> dict | None:
  """`run(config, workdir)` for every run of `fold_runs(config)`. With several folds,
  returns their mean MAE and MSE with each fold's metrics and (host 0) writes them to
  `workdir/summary_name`; otherwise returns the single run's result."""
  workdir = Path(workdir)
  runs = fold_runs(config)
  if len(runs) == 1:
    return run(runs[0][1], workdir)
  results = {}
  for name, fold_config in runs:
    logging.info("%s: fold %d of %d", config.data.name, fold_config.data.fold, len(runs))
    results[fold_config.data.fold] = run(fold_config, workdir / name)
  summary = {
      "folds": results,
      "mae": float(np.mean([r["mae"] for r in results.values()])),
      "mse": float(np.mean([r["mse"] for r in results.values()])),
  }
  # Which checkpoint of each fold (training.run_result.final_result): "last" unless best_on_test.
  selections = {r.get("selection") for r in results.values()} - {None}
  if selections:
    summary["selection"] = ", ".join(sorted(selections))
  if jax.process_index() == 0:
    (workdir / summary_name).write_text(json.dumps(summary, indent=2))
  logging.info(
      "%s, %d folds: mean MAE %.2f, mean MSE %.2f",
      config.data.name,
      len(runs),
      summary["mae"],
      summary["mse"],
  )
  return summary
