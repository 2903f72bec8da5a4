"""Several training steps per compiled call (`config.steps_per_jit`): one scan of K steps,
the same state as K single steps, logging, evaluation and checkpoints between calls.
Model-independent: `configs/tiny.py:plain`."""

import json

import jax
import numpy as np
import pytest

from cfrnet_jax.state import model_graphdef
from cfrnet_jax.training import sharding, train_step, trainer
from tests.conftest import tiny_train_config
from tests.test_trainer import _zero_gradient, fixed_batch

K = 4


def stacked(batches: list[dict]) -> dict:
  return jax.tree.map(lambda *rows: np.stack(rows), *batches)


@pytest.fixture(scope="module")
def batches():
  """2K different batches of 4 crops."""
  pool = fixed_batch(batch_size=4 * 2 * K, max_points=128)
  return [{key: value[4 * i : 4 * (i + 1)] for key, value in pool.items()} for i in range(2 * K)]


def test_the_step_holds_one_scan_of_k_steps(batches):
  config = tiny_train_config(None, "plain", steps_per_jit=K)
  state, _ = train_step.create_train_state(config, sharding.create_mesh())
  jaxpr = jax.make_jaxpr(train_step.make_train_steps(config, model_graphdef(config.model)))(
      state, stacked(batches[:K])
  )
  scans = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
  assert len(scans) == 1 and scans[0].params["length"] == K


@pytest.mark.slow  # CI runs it; the default selection stays under 10 minutes
def test_k_steps_per_call_give_the_state_of_single_steps(batches):
  """The same step count, parameters and BatchNorm statistics to 1e-6, and Adam's
  moments to float tolerance. The scan compiles its body apart from the single step, so
  gradients differ in their last bits (amplified a little through the BatchNorms, as
  between device layouts: tests/test_trainer.py `assert_same_step`; parameters whose
  true gradient is 0 hold only that noise in their moments and are not compared), and Adam turns a
  near-zero gradient entry into +-learning rate whatever its sign: a learning rate of
  5e-8 keeps such flips below 1e-6, while the moments and statistics, which see every
  batch, show a batch out of order or left out."""
  mesh = sharding.create_mesh()
  states = {}
  for per_call in (1, K):
    config = tiny_train_config(None, "plain", steps_per_jit=per_call, learning_rate=5e-8)
    state, state_sharding = train_step.create_train_state(config, mesh)
    step = train_step.jit_train_step(config, model_graphdef(config.model), mesh, state_sharding)
    for start in range(0, 2 * K, per_call):
      group = batches[start : start + per_call]
      batch = group[0] if per_call == 1 else stacked(group)
      state, metrics = step(state, sharding.make_global_batch(batch, mesh, per_call > 1))
    states[per_call] = jax.device_get(state)
  single, multi = states[1], states[K]
  assert int(multi.step) == int(single.step) == 2 * K
  for tree in ("params", "batch_stats"):
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(getattr(single, tree)),
        jax.tree.leaves(getattr(multi, tree)),
    ):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{tree}{path}")
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(single.opt_state), jax.tree.leaves(multi.opt_state)
  ):
    if np.ndim(a) and np.linalg.norm(a) and not _zero_gradient(jax.tree_util.keystr(path)):
      error = np.linalg.norm(a - b) / np.linalg.norm(a)
      assert error < 1e-2, (path, error)


@pytest.mark.slow  # CI runs it; the default selection stays under 10 minutes
def test_a_run_logs_evaluates_and_saves_between_calls(tmp_path, synthetic_data_dir):
  config = tiny_train_config(
      synthetic_data_dir,
      "plain",
      steps_per_jit=K,
      num_train_steps=2 * K,
      log_every_steps=2,
      eval_every_steps=2 * K,
      checkpoint_every_steps=K,
      keep_checkpoints=5,
  )
  result = trainer.train_and_evaluate(config, tmp_path)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [K, 2 * K] and result["step"] == 2 * K
  assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [f"step_{2 * K}"]
  assert json.loads((tmp_path / "config.json").read_text())["steps_per_jit"] == K


def test_a_step_count_it_cannot_end_on_is_refused(tmp_path, synthetic_data_dir):
  config = tiny_train_config(synthetic_data_dir, "plain", steps_per_jit=K, num_train_steps=K + 1)
  with pytest.raises(ValueError, match=r"steps_per_jit = 4 must be at least 1 and divide the 5"):
    trainer.train_and_evaluate(config, tmp_path)


@pytest.mark.slow
def test_a_run_of_k_steps_per_call_killed_resumes_bit_identically(tmp_path, synthetic_data_dir):
  """benchmarks/fault_trials.py with steps_per_jit = 4, 2 trials: SIGKILL while a
  checkpoint is being written and at a random moment; each resumed run ends with the
  parameters, statistics, optimizer state and data position of an uninterrupted one
  (the kill trials of CI: the loop is the one of K = 1, its calls scanned)."""
  from benchmarks import fault_trials

  out = tmp_path / "trials.json"
  status = fault_trials.main(
      [
          "--config=configs/tiny.py:plain",
          "--trials=2",
          f"--steps={4 * K}",
          f"--checkpoint_every={K}",
          f"--steps_per_jit={K}",
          f"--folder={tmp_path / 'trials'}",
          f"--data_dir={synthetic_data_dir}",
          f"--out={out}",
      ]
  )
  trials = json.loads(out.read_text())["trials"]
  assert [t["outcome"] for t in trials] == ["bit-identical"] * 2, trials
  assert status == 0
  assert [t["mode"] for t in trials] == ["save", "random"]
  for trial in trials:
    assert trial["resumed_from"] == max(trial["steps_saved_at_kill"], default=0)
    if trial["mode"] == "save":  # killed with a save's temporary folder on disk
      assert any("orbax-checkpoint-tmp" in name for name in trial["save_in_progress"])
