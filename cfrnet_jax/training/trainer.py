"""The training loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom like big_vision's trainer:
1. setup: the run's config settled (a folder dataset's splits, an unset learning rate),
   checked and written (`config.json`, final before it is written); mesh over all
   devices (`config.mesh_axes`, a `data` axis); this host's shard of the training split
   through grain (`data.pipeline`);
2. state: resumed from the newest intact checkpoint (state + data position), or new,
   already replicated (`jax.jit(init, out_shardings=...)`), from a trained run's model
   (`init_from`, `training.finetune`) or with the ImageNet backbone;
3. loop (`_train_loop`): global batch -> the jitted step (donating the old state);
   every `log_every_steps` a progress line and TensorBoard scalars; every
   `eval_every_steps` whole-image evaluation through one jitted count function per run;
   every `checkpoint_every_steps` an asynchronous checkpoint (`checkpointing.AsyncSaves`,
   which reports a failed save). SIGTERM ends the run within `config.preemption_grace_s`,
   on every host after the same step, saving it when that fits (`training.preemption`,
   the one mechanism), even when it arrives during compilation;
4. result: the checkpoint the model-selection rule picks (`training.run_result`),
   recorded in the workdir so that a later command returns it.

The step itself is `training.train_step`: a pure function of (state, batch); a
non-finite loss leaves the state untouched and records its step, which the host checks
before every checkpoint and log line, so nothing corrupt is ever saved.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cfrnet_jax import (
    checkpoint_repair,
    checkpointing,
    cross_validation,
    evaluation,
    run_config,
    workdir_lock,
)
from cfrnet_jax.data import pipeline
from cfrnet_jax.models import pretrained
from cfrnet_jax.state import ModelVariables, local_copy, model_graphdef
from cfrnet_jax.training import finetune, run_result, sharding, step_cost, train_step
from cfrnet_jax.training.preemption import Preempted, PreemptionGuard


def resume_worker_count(config: ml_collections.ConfigDict, saved: int | None):
  """`config` with the grain worker count of the checkpoint being resumed (`saved`):
  with `data.num_workers = -1` the automatic count could differ on another host, and
  grain restores a data position only with the count that made it."""
  if saved is None or pipeline.worker_count(config.data) == saved:
    return config
  if config.data.num_workers != -1:
    raise ValueError(
        f"The checkpoint to resume was written with {saved} grain workers, and "
        f"data.num_workers = {config.data.num_workers} asks for another count. Batches are "
        f"formed inside the workers, so the data position exists only for that count: "
        f"use --config.data.num_workers={saved} (or -1, which resumes with it)."
    )
  config = copy.deepcopy(config)
  config.data.num_workers = saved
  logging.info("Resuming with the %d grain workers the run was started with.", saved)
  return config


def compile_train_step(config, graphdef, mesh, state_sharding, state, batches):
  """The step compiled ahead of the first batch (the shapes of `batches`' next one), with
  its memory and FLOPs logged before anything runs (`step_cost.report`: the model FLOPs
  counted from the traced step, which is then lowered, and XLA's figures)."""
  logging.info("Compiling the training step.")
  traced = train_step.jit_train_step(config, graphdef, mesh, state_sharding).trace(
      state, batches.peek()
  )
  compiled = traced.lower().compile()
  step_cost.report(
      compiled,
      f"training step ({config.batch_size} x {config.data.crop_size}x{config.data.crop_size}, "
      f"{config.model.dtype}, remat {config.model.remat})",
      traced=traced,
      dtype=config.model.dtype,
      devices=mesh.size,
  )
  return compiled


def _check_finite(state: train_step.TrainState) -> None:
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    raise FloatingPointError(
        f"The training loss became NaN or inf at step {bad}. The state was not updated "
        f"from that step on and no checkpoint after it was written; lower the learning "
        f"rate or check the data, then restart from the last checkpoint."
    )


def _write_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict | None:
  """Trains on `data.train_split`, evaluates on `data.eval_split` and checkpoints in
  `workdir`; resumes if it holds a checkpoint. Returns the run's result (`run_result.final_result`;
  the same on every host; None when the evaluation split is unlabeled), also when the
  run had finished before (from `workdir/result.json`). Raises `Preempted` when SIGTERM
  arrived during the run (before its last step, or while the last one was evaluated:
  the command then stops rather than start another run). Refuses a workdir that
  another live run is training in (`workdir_lock.held`)."""
  cross_validation.check_single_run(config)
  with (
      workdir_lock.held(workdir),
      PreemptionGuard(config.preemption_grace_s, config.preemption_save_fraction) as preemption,
  ):
    return _train_and_evaluate(config, Path(workdir), preemption)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: Path, preemption: PreemptionGuard
) -> dict | None:
  config = _final_config(config)
  checkpoint_repair.prepare_for_training(workdir)
  manager = checkpointing.create_checkpoint_manager(workdir, config.keep_checkpoints)
  resume_step = manager.latest_step()
  if resume_step is not None:
    run_config.check_resumable(workdir, config)
    if resume_step >= config.num_train_steps:
      return run_result.finished_result(config, manager, workdir)
    config = resume_worker_count(config, checkpointing.saved_worker_count(manager, resume_step))
  else:
    backbone_weights = _check_start(config)  # before anything compiles
  _write_config(config, workdir)
  mesh = sharding.create_mesh(config.mesh_axes)
  graphdef = model_graphdef(config.model)
  iterator = iter(
      pipeline.create_train_loader(
          config, pipeline.open_split(config.data, config.data.train_split)
      )
  )
  count_fn = evaluation.make_count_fn(graphdef, config.data)  # one per run: compiled once
  writer = _metric_writer(workdir)
  try:
    if resume_step is not None:
      abstract, state_sharding = train_step.abstract_train_state(config, mesh)
      state = checkpointing.restore_newest_intact(manager, workdir, abstract, iterator)
      logging.info("Resumed from the checkpoint of step %d in %s.", int(state.step), workdir)
    else:
      state, state_sharding = _new_state(config, mesh, backbone_weights)
      if config.init_from:  # the source model on this run's data, before any update
        _evaluate(config, count_fn, state, writer, workdir)
    _check_steps_per_jit(config, int(state.step))
    batches = sharding.DevicePrefetch(
        iterator, mesh, config.data.device_prefetch, config.steps_per_jit
    )
    step_fn = compile_train_step(config, graphdef, mesh, state_sharding, state, batches)
    step, metrics = _train_loop(
        config, count_fn, workdir, manager, preemption, writer, state, batches, step_fn
    )
  finally:
    _close(writer, workdir)
  if step < config.num_train_steps:
    raise Preempted(
        f"Preempted at step {step} of {config.num_train_steps}: rerun the same command to "
        f"resume from the newest checkpoint in {workdir}."
    )
  result = (
      None
      if metrics is None
      else run_result.final_result(config, count_fn, manager, workdir, metrics)
  )
  run_result.record(workdir, result)
  if preemption.stop_agreed():  # during the last evaluation: this run is done, the command stops
    raise Preempted(
        f"Preempted after the last step of {workdir}, whose result is recorded: rerun the "
        "same command to go on."
    )
  return result


def _final_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What the run trains with, settled before it is checked against a resumed run's
  `config.json` or written: a folder dataset's evaluation split and model selection
  (`pipeline.with_folder_splits`: without `val`, the last checkpoint on `test`) and an
  unset learning rate (`finetune.default_learning_rate`), each logged when it applies."""
  return finetune.default_learning_rate(pipeline.with_folder_splits(config))


def _check_start(config: ml_collections.ConfigDict) -> str | None:
  """What a new run starts from, checked before anything compiles so that missing
  weights end it in seconds: the source run of `init_from` (its model must be this
  config's), or the backbone weights file (None: random weights)."""
  if config.init_from:
    finetune.check_source_model(config)
    return None
  backbone_weights = pretrained.resolve_backbone_weights(
      config.backbone_weights, tuple(config.model.vgg_widths)
  )
  if backbone_weights is None:
    logging.info(
        "backbone_weights=%r: the backbone starts from random weights (the paper starts "
        "from ImageNet: --config.backbone_weights=imagenet).",
        config.backbone_weights,
    )
  return backbone_weights


def _new_state(config, mesh, backbone_weights: str | None) -> tuple[train_step.TrainState, Any]:
  """A new run's state and its sharding: the source run's parameters and BatchNorm
  statistics (`init_from`), or fresh ones with the ImageNet backbone when given."""
  state, state_sharding = train_step.create_train_state(config, mesh)
  if config.init_from:
    source = finetune.load_source_variables(config)
    put = lambda new, current: jax.device_put(np.asarray(new, current.dtype), current.sharding)
    state = state.replace(
        params=jax.tree.map(put, source.params, state.params),
        batch_stats=jax.tree.map(put, source.batch_stats, state.batch_stats),
    )
  elif backbone_weights is not None:
    params, batch_stats, loaded = pretrained.load_backbone(
        state.params, state.batch_stats, backbone_weights
    )
    state = state.replace(params=params, batch_stats=batch_stats)
    logging.info(
        "Loaded ImageNet VGG16-BN weights from %s: %d arrays, 13 conv + 13 "
        "BatchNorm layers of the backbone; the rest is freshly initialised.",
        backbone_weights,
        loaded,
    )
  return state, state_sharding


def _evaluate(config, count_fn, state: train_step.TrainState, writer, workdir: Path) -> dict | None:
  """Whole-image evaluation of `state` on `data.eval_split`, logged and kept in
  `workdir/eval/step_N`."""
  _check_finite(state)
  step = int(state.step)
  variables = ModelVariables(local_copy(state.params), local_copy(state.batch_stats))
  metrics = evaluation.evaluate(
      config, count_fn, variables, config.data.eval_split, workdir / f"eval/step_{step}"
  )
  if metrics is not None:
    _log_eval(writer, step, metrics)
  return metrics


def _train_loop(config, count_fn, workdir, manager, preemption, writer, state, batches, step_fn):
  """Steps until `num_train_steps` or an agreed preemption: every `log_every_steps` a
  progress line, every `eval_every_steps` an evaluation, every `checkpoint_every_steps`
  (and after each evaluation) an asynchronous save; on preemption the finished step is
  saved when that fits (`PreemptionGuard.save_fits`). Failed saves are
  `checkpointing.AsyncSaves`' to report. Returns (last step, last evaluation's metrics)."""
  ranked = run_result.ranks_checkpoints(config)
  per_call = config.steps_per_jit
  # Whether a multiple of `every` was reached by the call that ended at `step`.
  due = lambda every: step // every > (step - per_call) // every or step == config.num_train_steps
  metrics = None
  step = start = int(state.step)
  window, window_start = [], time.perf_counter()
  stop = preemption.stop_agreed()  # during the restore or compilation
  with checkpointing.AsyncSaves(manager, step) as saves:
    while not stop and step < config.num_train_steps:
      state, step_metrics = step_fn(state, next(batches))
      step += per_call
      window.append(step_metrics)
      if due(config.log_every_steps):
        _check_finite(state)
        _log_progress(writer, step, config, window, time.perf_counter() - window_start)
        window, window_start = [], time.perf_counter()
      evaluate_now = due(config.eval_every_steps)
      if evaluate_now:
        metrics = _evaluate(config, count_fn, state, writer, workdir)
      stop = preemption.stop_agreed()
      if evaluate_now or due(config.checkpoint_every_steps) or (stop and preemption.save_fits()):
        _check_finite(state)
        ranked_by = metrics if evaluate_now and metrics and ranked else None
        saves.save(step, state, batches, metrics=ranked_by)
  if stop:
    preemption.log_stop(step, saves.last_saved, ran=step > start)
  return step, metrics


def _close(writer, workdir: Path) -> None:
  if writer is not None:
    try:
      writer.close()
    except OSError as error:  # a full disk: the checkpoint's error is the one to report
      logging.warning("Could not write the TensorBoard log in %s: %s", workdir, error)


def _metric_writer(workdir: Path):
  if jax.process_index() != 0:
    return None
  with _torch_hidden():
    from tensorboardX import SummaryWriter

  return SummaryWriter(str(workdir / "tensorboard"))


@contextlib.contextmanager
def _torch_hidden():
  """PyTorch made unimportable, unless already imported: tensorboardX imports it when it is
  installed, only to accept torch tensors, which this trainer never logs, and loading it
  is a large part of a short run's start-up (docs/testing.md). Made in the main thread
  before any other imports, so no other import of torch can fall in between."""
  if "torch" in sys.modules:
    yield
    return
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    yield
  finally:
    if "torch" in sys.modules and sys.modules["torch"] is None:
      del sys.modules["torch"]


def _check_steps_per_jit(config: ml_collections.ConfigDict, start: int) -> None:
  """Refuses a `steps_per_jit` that cannot end the run at `num_train_steps` exactly."""
  per_call = config.steps_per_jit
  if per_call < 1 or (config.num_train_steps - start) % per_call:
    raise ValueError(
        f"steps_per_jit = {per_call} must be at least 1 and divide the "
        f"{config.num_train_steps - start} steps left (num_train_steps "
        f"{config.num_train_steps}, from step {start}): choose another steps_per_jit or "
        "num_train_steps."
    )


def _log_progress(writer, step, config, window, seconds):
  """The mean metrics of the steps since the last line (`window`: one entry per call)."""
  means = {k: float(np.mean([jax.device_get(m[k]) for m in window])) for k in window[0]}
  steps = len(window) * config.steps_per_jit
  images_per_second = steps * config.batch_size / max(seconds, 1e-9)
  remaining = (config.num_train_steps - step) * seconds / max(steps, 1)
  logging.info(
      "step %d/%d  loss %.4f  crop count MAE %.2f  %.1f images/s  ETA %s",
      step,
      config.num_train_steps,
      means["loss"],
      means["crop_count_mae"],
      images_per_second,
      time.strftime("%H:%M:%S", time.gmtime(remaining)),
  )
  if writer is not None:
    for key, value in means.items():
      writer.add_scalar(f"train/{key}", value, step)
    writer.add_scalar("train/images_per_second", images_per_second, step)
    writer.flush()


def _log_eval(writer, step, metrics):
  evaluation.log_metrics(step, metrics)
  if writer is not None:
    for key in evaluation.METRICS:
      writer.add_scalar(f"eval/{key}", metrics[key], step)
    writer.flush()
