"""Checkpoints: what inference restores (parameters and statistics only), damaged
checkpoints, run configs, the workdir lock."""

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cfrnet_jax import checkpoint_repair, checkpointing, orbax_noise, run_config, workdir_lock
from cfrnet_jax.inference.counter import CrowdCounter
from configs import base


def _plain_orbax_state(workdir, step):
  """The saved training state read with plain Orbax, as the docs show."""
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def _flat(tree) -> dict:
  """{'a/0/kernel': array}: integer and string keys alike (Orbax stores strings)."""
  return {
      "/".join(str(getattr(k, "key", k)) for k in path): value
      for path, value in jax.tree_util.tree_leaves_with_path(tree)
  }


def test_restore_variables_reads_the_saved_parameters_and_statistics(trained_workdir):
  config = run_config.load_run_config(trained_workdir)
  step, variables = checkpointing.restore_variables(trained_workdir, config.model)
  assert step == 2  # the only (and so the best) evaluated step
  full = _plain_orbax_state(trained_workdir, 2)
  for name in ("params", "batch_stats"):
    saved, restored = _flat(full[name]), _flat(getattr(variables, name))
    assert sorted(saved) == sorted(restored) and saved
    for key, value in saved.items():
      np.testing.assert_array_equal(np.asarray(restored[key]), value, err_msg=key)


@pytest.mark.slow  # CI runs it; the default selection stays under 10 minutes
def test_a_checkpoint_without_optimizer_state_still_predicts(trained_workdir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  full = _plain_orbax_state(workdir, 2)
  assert "opt_state" in full
  state_dir = workdir / "checkpoints" / "2" / "state"
  shutil.rmtree(state_dir)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(state_dir, {k: v for k, v in full.items() if k != "opt_state"})
  assert "opt_state" not in _plain_orbax_state(workdir, 2)
  picture = np.random.default_rng(0).integers(0, 255, (96, 160, 3)).astype(np.uint8)
  expected = CrowdCounter.from_checkpoint(trained_workdir).count(picture)
  assert CrowdCounter.from_checkpoint(workdir).count(picture) == pytest.approx(expected, rel=1e-6)


def test_missing_step_and_missing_workdir_are_named(trained_workdir, tmp_path):
  config = run_config.load_run_config(trained_workdir)
  with pytest.raises(FileNotFoundError, match="No checkpoint of step 7 .* steps \\[2\\]"):
    checkpointing.restore_variables(trained_workdir, config.model, step=7)
  with pytest.raises(FileNotFoundError, match="No checkpoint in"):
    checkpointing.restore_variables(tmp_path / "typo", config.model)
  assert not (tmp_path / "typo").exists()  # reading creates nothing
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    run_config.load_run_config(tmp_path)


def test_a_run_saved_before_the_predict_settings_existed_loads(trained_workdir, tmp_path):
  saved = json.loads((trained_workdir / "config.json").read_text())
  del saved["predict"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = run_config.load_run_config(tmp_path)
  assert config.predict.to_dict() == base.get_config().predict.to_dict()
  assert config.model.to_dict() == run_config.load_run_config(trained_workdir).model.to_dict()


def test_the_worker_count_of_a_checkpoint_is_read_from_its_data_position(trained_workdir):
  from cfrnet_jax.training.trainer import resume_worker_count
  from configs import tiny

  manager = checkpointing.create_checkpoint_manager(trained_workdir)
  try:
    saved = checkpointing.saved_worker_count(manager, manager.latest_step())
  finally:
    manager.close()
  assert saved == 0  # configs/tiny.py loads inline.
  # Automatic (-1) resumes with the saved count whatever this host has ...
  config = tiny.get_config()
  config.data.num_workers = -1
  assert resume_worker_count(config, 3).data.num_workers == 3
  assert config.data.num_workers == -1  # the caller's config is left alone.
  # ... an explicit other count is refused naming the one that works.
  config.data.num_workers = 2
  with pytest.raises(ValueError, match="num_workers=3"):
    resume_worker_count(config, 3)
  assert resume_worker_count(config, 2) is config


def test_resuming_with_another_loss_is_refused_and_the_saved_config_kept(trained_workdir, tmp_path):
  """The loss defines the run: a resume with another one would train on with it and
  record it as the run's in config.json, losing the original."""
  from cfrnet_jax.training import trainer

  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  saved_text = (workdir / "config.json").read_text()
  changed = run_config.load_run_config(workdir)
  assert changed.loss.level_balance == "area"
  changed.loss.level_balance = "sum"
  changed.loss.level_weights.f5 = 0.5
  with pytest.raises(run_config.ConfigMismatchError) as raised:
    trainer.train_and_evaluate(changed, workdir)  # refused before anything compiles
  message = str(raised.value)
  assert "loss.level_balance: 'area' -> 'sum'" in message
  assert "loss.level_weights.f5: 1.0 -> 0.5" in message
  assert (workdir / "config.json").read_text() == saved_text


def test_an_old_config_without_level_balance_completes_to_the_sum_it_trained_with(
    trained_workdir, tmp_path
):
  """Runs saved before `loss.level_balance` existed trained with Eq. 11 ("sum"), not
  today's default: completed so, today's config does not resume them, an explicit
  `--config.loss.level_balance=sum` does."""
  saved = json.loads((trained_workdir / "config.json").read_text())
  del saved["loss"]["level_balance"]
  del saved["best_on_test"]
  completed = base.complete(saved)
  assert completed.loss.level_balance == "sum" != base.get_config().loss.level_balance
  assert completed.best_on_test  # checkpoints were ranked by every evaluation then
  assert "level_balance" not in saved["loss"]  # complete leaves its argument alone
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert run_config.load_run_config(tmp_path).loss.level_balance == "sum"
  today = run_config.load_run_config(trained_workdir)  # level_balance "area", the default
  with pytest.raises(run_config.ConfigMismatchError, match="level_balance: 'sum' -> 'area'"):
    run_config.check_resumable(tmp_path, today)
  today.loss.level_balance = "sum"
  run_config.check_resumable(tmp_path, today)


def test_resuming_with_another_model_or_data_names_the_fields(trained_workdir, tmp_path):
  """A workdir's run resumes only with a config that trains the same thing; how it
  computes (dtype, remat, attention), where it reads and how many steps may change."""
  from cfrnet_jax.training import trainer

  saved = run_config.load_run_config(trained_workdir)
  run_config.check_resumable(trained_workdir, saved)  # the same config resumes
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  changed = run_config.load_run_config(workdir)
  changed.model.channels = 32
  changed.data.crop_size = 64
  changed.model.update(dtype="bfloat16", remat="all")
  changed.num_train_steps = 10
  with pytest.raises(ValueError) as raised:
    trainer.train_and_evaluate(changed, workdir)  # refused before anything compiles
  message = str(raised.value)
  assert "model.channels: 16 -> 32" in message and "data.crop_size: 128 -> 64" in message
  assert "dtype" not in message and "remat" not in message and "num_train_steps" not in message
  assert str(workdir / "config.json") in message
  # The saved config is left as it was, for the resume that follows.
  assert run_config.load_run_config(workdir).model.channels == 16
  relaxed = run_config.load_run_config(workdir)
  relaxed.model.update(dtype="bfloat16", remat="all", attention="xla")
  relaxed.data.update(num_workers=-1, data_dir="/elsewhere", eval_split="test[:2]")
  run_config.check_resumable(workdir, relaxed)


HOLD_THE_LOCK = """
import sys, time
from cfrnet_jax import workdir_lock
with workdir_lock.held(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def test_a_second_run_in_a_live_runs_workdir_is_refused(tmp_path):
  """The first run (here a process holding the lock) keeps the workdir; a second
  `train_and_evaluate` stops before writing anything, naming the holder. After the
  holder is SIGKILLed, which runs no cleanup, the workdir is free again."""
  from cfrnet_jax.training import trainer
  from tests.conftest import REPO, tiny_train_config

  holder = subprocess.Popen(
      [
          sys.executable,
          "-c",
          HOLD_THE_LOCK,
          str(tmp_path),
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(
        RuntimeError,
        match=rf"{tmp_path} is in use by a running training run \(host .+, pid {holder.pid}, ",
    ):
      trainer.train_and_evaluate(tiny_train_config(None), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]
  finally:
    holder.kill()
    holder.wait()
  with workdir_lock.held(tmp_path):
    assert f"pid {os.getpid()}," in (tmp_path / workdir_lock.LOCK_FILE).read_text()


def _data_files(step_dir) -> list:
  """The array-data files of a checkpoint's state (OCDBT's `d/` folder), largest first."""
  files = (step_dir / "state").glob("ocdbt.process_*/d/*")
  return sorted(files, key=lambda p: -p.stat().st_size)


def _truncate_all(step_dir):
  for path in _data_files(step_dir):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# How a checkpoint gets damaged: a copy broken off, files lost, a full disk. (Every data
# file: one may hold only Adam moments, which inference never reads, and read fine.)
DAMAGES = {
    "truncated data files": _truncate_all,
    "missing data files": lambda step: [path.unlink() for path in _data_files(step)],
    "emptied data files": lambda step: [path.write_bytes(b"") for path in _data_files(step)],
    "missing manifest": lambda step: (step / "state" / "manifest.ocdbt").unlink(),
}


@pytest.fixture
def two_step_workdir(trained_workdir, tmp_path):
  """The trained run with a second, older checkpoint (step 1: a copy of step 2 without
  an evaluation, so step 2 stays the best)."""
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  shutil.copytree(workdir / "checkpoints" / "2", workdir / "checkpoints" / "1")
  shutil.rmtree(workdir / "checkpoints" / "1" / "metrics")
  return workdir


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_predict_falls_back_past_a_damaged_checkpoint_and_says_so(
    two_step_workdir, trained_workdir, damage, caplog
):
  config = run_config.load_run_config(two_step_workdir)
  DAMAGES[damage](two_step_workdir / "checkpoints" / "2")
  with caplog.at_level("WARNING"):
    step, variables = checkpointing.restore_variables(two_step_workdir, config.model)
  assert step == 1
  warned = caplog.text
  assert (
      f"The checkpoint of step 2 ({two_step_workdir / 'checkpoints' / '2'}) cannot be read"
      in warned
  )
  assert "Using the checkpoint of step 1 instead of step 2" in warned
  assert len(warned) < 3000  # one warning, not Orbax's thousands of abandoned reads
  _, intact = checkpointing.restore_variables(trained_workdir, config.model)
  for key, value in _flat(intact.params).items():
    np.testing.assert_array_equal(_flat(variables.params)[key], value, err_msg=key)
  # An explicit step is not replaced by another: its damage is the error.
  with pytest.raises(
      checkpoint_repair.DamagedCheckpointError, match=r"step 2: .*also has steps \[1\]"
  ):
    checkpointing.restore_variables(two_step_workdir, config.model, step=2)


def test_when_every_checkpoint_is_damaged_the_error_lists_each(two_step_workdir):
  config = run_config.load_run_config(two_step_workdir)
  for step in ("1", "2"):
    DAMAGES["truncated data files"](two_step_workdir / "checkpoints" / step)
  with pytest.raises(
      checkpoint_repair.DamagedCheckpointError,
      match=r"No checkpoint in .* can be read: step 2: .*; step 1: ",
  ):
    checkpointing.restore_variables(two_step_workdir, config.model)


def test_a_damaged_metrics_file_is_named_and_training_sets_its_step_aside(two_step_workdir):
  """Orbax reads every step's evaluation metrics when it opens the folder; a damaged one
  would fail there with a bare JSON error, before any fallback."""
  config = run_config.load_run_config(two_step_workdir)
  metrics = two_step_workdir / "checkpoints" / "2" / "metrics" / "metrics"
  metrics.write_text(metrics.read_text()[:5])
  with pytest.raises(checkpoint_repair.DamagedCheckpointError, match=rf"{metrics} cannot be read"):
    checkpointing.restore_variables(two_step_workdir, config.model)
  checkpoint_repair.prepare_for_training(two_step_workdir)  # what training does first
  assert (two_step_workdir / checkpoint_repair.DAMAGED_DIR / "2" / "metrics").is_dir()
  assert checkpointing.restore_variables(two_step_workdir, config.model)[0] == 1


def test_only_training_deletes_what_an_interrupted_save_left(two_step_workdir, caplog):
  """A reader (evaluate, predict) must not touch a save that a live run may be writing;
  training deletes such folders before it opens the checkpoints, and says so."""
  config = run_config.load_run_config(two_step_workdir)
  unfinished = two_step_workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1764000000"
  (unfinished / "state").mkdir(parents=True)
  step = checkpointing.restore_variables(two_step_workdir, config.model)[0]
  assert unfinished.is_dir()
  with caplog.at_level(logging.WARNING):
    checkpoint_repair.prepare_for_training(two_step_workdir)
  assert not unfinished.exists()
  assert "Deleted 1 unfinished save(s) that an interrupted run left: 4.orbax" in caplog.text
  assert checkpointing.restore_variables(two_step_workdir, config.model)[0] == step


def test_launch_turns_a_damaged_checkpoint_into_one_message(two_step_workdir, tmp_path):
  from PIL import Image

  from tests.conftest import REPO

  DAMAGES["missing manifest"](two_step_workdir / "checkpoints" / "2")
  picture = tmp_path / "picture.png"
  Image.new("RGB", (64, 48)).save(picture)
  command = [sys.executable, "launch.py", "--mode", "predict", "--workdir"]
  result = subprocess.run(
      [*command, str(two_step_workdir), "--step", "2", "--images", str(picture)],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert (
      f"No checkpoint in {two_step_workdir / 'checkpoints'} can be read: step 2:" in result.stderr
  )
  assert "also has steps [1]" in result.stderr
  assert "Traceback" not in result.stderr


def _unraisable(error: BaseException, where=None):
  """What Python hands `sys.unraisablehook` for `error`, raised with no one to catch it."""
  return types.SimpleNamespace(
      exc_type=type(error),
      exc_value=error,
      exc_traceback=error.__traceback__,
      err_msg=None,
      object=where,
  )


def test_only_the_abandoned_reads_reports_are_dropped(monkeypatch):
  """A read result that TensorStore delivers to the event loop Orbax closed is dropped
  once a reader installed the filter; other reports, the same error from elsewhere
  included, go through."""
  reached = []
  monkeypatch.setattr(sys, "unraisablehook", reached.append)
  orbax_noise.drop_abandoned_reads()
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)  # what TensorStore's thread does with a late result
  except RuntimeError as error:
    late_result = _unraisable(error)
  try:
    raise RuntimeError("Event loop is closed")
  except RuntimeError as error:
    elsewhere = _unraisable(error)
  try:
    raise ValueError("a user's callback failed")
  except ValueError as error:
    other = _unraisable(error, where="<function callback>")
  for report in (late_result, elsewhere, other):
    sys.unraisablehook(report)
  assert reached == [elsewhere, other]


def test_only_abandoned_reads_never_retrieved_exceptions_are_dropped_from_the_log():
  """asyncio's "exception was never retrieved" of a gathered Orbax read (named only as
  TensorStore in its message) or of a TensorStore read's Future (naming the OCDBT
  database) is dropped; the same record of a user's task or future is kept."""
  record = lambda message: logging.LogRecord("asyncio", logging.ERROR, "", 0, message, (), None)
  abandoned = record(
      "_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished "
      'exception=Exception("Encountered error while reading array index. See full '
      'TensorStore details")>'
  )
  # A TensorStore read's own Future (collected during a later test in a CI run).
  read = record(
      "Future exception was never retrieved\nfuture: <Future finished exception=ValueError("
      '\'OUT_OF_RANGE: Error reading "params.heads.f1.kernel/0.0" in OCDBT database at local '
      'file "/run/checkpoints/2/state/": Requested byte range [0, 65) is not valid\')>'
  )
  users = record("Task exception was never retrieved\nfuture: <Task finished coro=<fetch()>>")
  other = record(
      "Future exception was never retrieved\nfuture: <Future finished "
      "exception=ValueError('OUT_OF_RANGE: reading the user\\'s file')>"
  )
  assert orbax_noise._is_abandoned_record(abandoned)
  assert orbax_noise._is_abandoned_record(read)
  assert not orbax_noise._is_abandoned_record(users)
  assert not orbax_noise._is_abandoned_record(other)


def _checkpoint_listing(workdir) -> list[str]:
  return sorted(str(p.relative_to(workdir)) for p in (workdir / "checkpoints").rglob("*"))


@pytest.mark.slow  # trains twice
def test_training_resumes_from_the_newest_intact_checkpoint(tmp_path, synthetic_data_dir, caplog):
  from cfrnet_jax.training import run_result, trainer
  from tests.conftest import tiny_train_config

  config = tiny_train_config(
      synthetic_data_dir,
      "plain",
      num_train_steps=3,
      checkpoint_every_steps=1,
      log_every_steps=1,
      eval_every_steps=1000,
      keep_checkpoints=3,
  )
  config.data.eval_split = "test[:1]"
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, workdir)
  uninterrupted = _flat(_plain_orbax_state(workdir, 2))

  def killed_after_step_2():  # what a run killed after saving step 2 leaves
    shutil.rmtree(workdir / "checkpoints" / "3")
    (workdir / run_result.RESULT_FILE).unlink()

  killed_after_step_2()
  DAMAGES["truncated data files"](workdir / "checkpoints" / "2")
  with caplog.at_level("WARNING"):
    trainer.train_and_evaluate(config, workdir)
  assert "The checkpoint of step 2" in caplog.text and "Trying the next one" in caplog.text
  assert "Resuming from step 1, the newest checkpoint that reads" in caplog.text
  assert (workdir / checkpoint_repair.DAMAGED_DIR / "2" / "state").is_dir()  # kept, moved aside
  # Step 2 trained again from step 1: the same bits as the first time.
  resumed = _flat(_plain_orbax_state(workdir, 2))
  assert sorted(resumed) == sorted(uninterrupted)
  for key, value in uninterrupted.items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)

  # Every checkpoint damaged: the run stops before anything else; nothing starts from
  # scratch over them, nothing is moved or written.
  killed_after_step_2()
  for step in ("1", "2"):
    DAMAGES["truncated data files"](workdir / "checkpoints" / step)
  before = _checkpoint_listing(workdir)
  with pytest.raises(
      checkpoint_repair.DamagedCheckpointError,
      match=r"No checkpoint in .* can be read: step 2: .*step 1",
  ):
    trainer.train_and_evaluate(config, workdir)
  assert _checkpoint_listing(workdir) == before


def _set_mae(step_dir, mae: float | None):
  """Gives the checkpoint in `step_dir` an evaluation MAE (None: unranked)."""
  metrics = step_dir / "metrics" / "metrics"
  if mae is None:
    shutil.rmtree(metrics.parent)
  else:
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "mae": mae}))


def test_a_damaged_best_checkpoint_falls_back_to_the_next_best_not_the_newest(
    trained_workdir, tmp_path, caplog
):
  """Step 2 is the best by MAE, step 1 the second best, step 3 ranked worse and step 4
  unranked (both newer): with step 2 damaged, the rule "best by MAE" gives step 1."""
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  checkpoints = workdir / "checkpoints"
  for step in (1, 3, 4):
    shutil.copytree(checkpoints / "2", checkpoints / str(step))
  for step, mae in {1: 2.0, 2: 1.0, 3: 3.0, 4: None}.items():
    _set_mae(checkpoints / str(step), mae)
  manager = checkpointing.create_checkpoint_manager(workdir)
  try:
    assert checkpointing.steps_by_rank(manager) == [2, 1, 3, 4]
  finally:
    manager.close()
  config = run_config.load_run_config(workdir)
  DAMAGES["truncated data files"](checkpoints / "2")
  with caplog.at_level("WARNING"):
    step, _ = checkpointing.restore_variables(workdir, config.model)
  assert step == 1
  assert "Using the checkpoint of step 1 instead of step 2" in caplog.text
  # Then the third best, then the unranked ones newest first.
  DAMAGES["truncated data files"](checkpoints / "1")
  assert checkpointing.restore_variables(workdir, config.model)[0] == 3
  DAMAGES["truncated data files"](checkpoints / "3")
  assert checkpointing.restore_variables(workdir, config.model)[0] == 4


def test_a_ranked_run_keeps_its_two_best_checkpoints(tmp_path):
  """Besides the latest `keep_checkpoints`, the 2 best by MAE survive every save, so a
  damaged best has a next best to fall back to."""
  manager = checkpointing.create_checkpoint_manager(tmp_path, keep_checkpoints=1)
  try:
    for step, mae in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0), (5, None)]:
      manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.full(3, step)})),
          metrics=None if mae is None else {"mae": mae},
          force=True,
      )
      manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 3, 5]  # the 2 best and the latest
    assert checkpointing.steps_by_rank(manager) == [2, 3, 5]
  finally:
    manager.close()
