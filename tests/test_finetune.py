"""Fine-tuning: `init_from` starts from a trained run's model, `freeze` keeps parts fixed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cfrnet_jax import checkpointing, evaluation, run_config
from cfrnet_jax.training import finetune, sharding, train_step, trainer
from configs import folder
from tests.conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[1]


def leaves(tree) -> dict:
  return {
      jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, trained_workdir, synthetic_data_dir):
  """Two steps of fine-tuning the shared trained run with its backbone frozen."""
  workdir = tmp_path_factory.mktemp("finetuned")
  config = tiny_train_config(
      synthetic_data_dir,
      init_from=str(trained_workdir),
      freeze="backbone",
      num_train_steps=2,
      eval_every_steps=2,
      log_every_steps=1,
  )
  result = trainer.train_and_evaluate(config, workdir)
  return workdir, config, result


def test_the_new_state_holds_the_source_checkpoint_and_a_fresh_optimizer(
    trained_workdir, synthetic_data_dir
):
  config = tiny_train_config(synthetic_data_dir, init_from=str(trained_workdir))
  state, _ = trainer._new_state(config, sharding.create_mesh(config.mesh_axes), None)
  _, source = checkpointing.restore_variables(trained_workdir, config.model)
  for mine, theirs in ((state.params, source.params), (state.batch_stats, source.batch_stats)):
    mine, theirs = leaves(mine), leaves(theirs)
    assert mine.keys() == theirs.keys()
    for name in mine:
      np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
  assert int(state.step) == 0
  assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x))  # Adam at 0


def test_before_any_update_it_counts_as_the_source_run(finetuned, trained_workdir):
  workdir, _, _ = finetuned
  before = evaluation.read_predictions(workdir / "eval" / "step_0" / "predictions.csv")
  best = checkpointing.best_step(checkpointing.create_checkpoint_manager(trained_workdir))
  source = evaluation.read_predictions(
      trained_workdir / "eval" / f"step_{best}" / "predictions.csv"
  )
  assert before == source  # every image's count, to the 3 decimals written


def test_a_frozen_part_is_unchanged_and_the_rest_trains(finetuned, trained_workdir):
  workdir, config, result = finetuned
  _, source = checkpointing.restore_variables(trained_workdir, config.model)
  _, tuned = checkpointing.restore_variables(workdir, config.model, 2)
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "2" / "state")
  assert int(state["step"]) == 2  # a new run: its own step count
  for mine, theirs in ((tuned.params, source.params), (tuned.batch_stats, source.batch_stats)):
    mine, theirs = leaves(mine["backbone"]), leaves(theirs["backbone"])
    assert mine.keys() == theirs.keys()
    for name in theirs:
      np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
  heads, source_heads = leaves(tuned.params["heads"]), leaves(source.params["heads"])
  assert any(not np.array_equal(heads[n], source_heads[n]) for n in heads)
  statistics = leaves(tuned.batch_stats["heads"]), leaves(source.batch_stats["heads"])
  assert any(not np.array_equal(statistics[0][n], statistics[1][n]) for n in statistics[0])
  assert result["selection"] == "last" and result["step"] == 2
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["init_from"] == str(trained_workdir) and saved["freeze"] == "backbone"


def test_the_model_comes_from_the_source_run(trained_workdir):
  config = folder.get_config()  # the paper's model ...
  config.init_from = str(trained_workdir)
  config.model.dtype = "bfloat16"
  inherited = finetune.inherit_model(config, {"model.dtype": "bfloat16"})
  source = run_config.load_run_config(trained_workdir).model
  assert inherited.model.channels == source.channels == 16  # ... becomes the tiny one
  assert tuple(inherited.model.vgg_widths) == tuple(source.vgg_widths)
  assert inherited.model.dtype == "bfloat16"  # how it computes stays this run's own
  assert config.learning_rate is None  # configs/folder.py: the source run's rate ...
  assert inherited.learning_rate == run_config.load_run_config(trained_workdir).learning_rate
  config.init_from = ""  # ... and without a source run, configs/base.py's (the paper's)
  assert finetune.default_learning_rate(config).learning_rate == 1e-5
  assert config.learning_rate is None  # a copy was changed, not the caller's config
  with pytest.raises(ValueError, match="learning_rate is None: launch.py settles it"):
    train_step.create_optimizer(config)  # a config that skipped both is refused
  assert config.model.channels == 256  # the caller's config is left alone


def test_a_model_field_that_contradicts_the_source_is_refused_by_name(trained_workdir):
  config = folder.get_config()
  config.init_from = str(trained_workdir)
  config.model.channels = 32
  with pytest.raises(ValueError, match=r"model\.channels: 16 -> 32") as error:
    finetune.inherit_model(config, {"model.channels": 32, "learning_rate": 1e-4})
  assert "model.vgg_widths" not in str(error.value)  # only what the command line asked
  config.model.channels = 16  # the source's own value may be given
  finetune.inherit_model(config, {"model.channels": 16})


def test_training_refuses_a_model_that_is_not_the_sources(trained_workdir, tmp_path):
  config = folder.get_config()
  config.init_from = str(trained_workdir)
  with pytest.raises(ValueError, match=r"model\.channels: 16 -> 256"):
    trainer.train_and_evaluate(config, tmp_path)


def test_unknown_frozen_parts_are_refused():
  config = tiny_train_config(None, freeze="backbone, decoder")
  with pytest.raises(ValueError, match=r"unknown part\(s\) \['decoder'\]"):
    finetune.frozen_parts(config)
  assert finetune.frozen_parts(tiny_train_config(None, freeze="backbone, heads")) == (
      "backbone",
      "heads",
  )


def test_the_command_line_refuses_a_contradicting_model_field(trained_workdir, tmp_path):
  work = tmp_path / "source"
  shutil.copytree(trained_workdir, work)
  command = [
      sys.executable,
      "launch.py",
      "--config",
      "configs/folder.py",
      "--workdir",
      str(tmp_path / "run"),
      f"--config.init_from={work}",
      "--config.model.channels=32",
  ]
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "model.channels: 16 -> 32" in proc.stderr + proc.stdout
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_resumed_fine_tuning_run_does_not_read_the_moved_source(
    trained_workdir, synthetic_data_dir, tmp_path
):
  source, workdir = tmp_path / "source", tmp_path / "run"
  shutil.copytree(trained_workdir, source)
  config = tiny_train_config(
      synthetic_data_dir, init_from=str(source), num_train_steps=2, eval_every_steps=2
  )
  config.learning_rate = None  # configs/folder.py's: the source run's
  trainer.train_and_evaluate(finetune.inherit_model(config, (), workdir), workdir)
  shutil.rmtree(source)  # moved or deleted after the first part
  config.num_train_steps = 4
  resumed = finetune.inherit_model(config, (), workdir)  # from the run's own config.json
  assert resumed.learning_rate == run_config.load_run_config(workdir).learning_rate
  result = trainer.train_and_evaluate(resumed, workdir)
  assert result["step"] == 4
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "4" / "state")
  assert int(state["step"]) == 4
