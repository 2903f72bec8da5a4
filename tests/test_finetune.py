"""Fine-tuning: `init_from` starts from a trained run's model, `freeze` keeps parts fixed.
The runs that train start from a run of `configs/tiny.py:plain` (none of this depends on
the model's parts)."""

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from cfrnet_jax import checkpointing, evaluation, run_config
from cfrnet_jax.data import pipeline
from cfrnet_jax.training import finetune, sharding, train_step, trainer
from configs import folder
from tests.conftest import tiny_train_config
from tfds_crowd.folder import build_folder

REPO = Path(__file__).resolve().parents[1]


def leaves(tree) -> dict:
  return {
      jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, trained_plain_workdir, synthetic_data_dir):
  """Two steps of fine-tuning the shared trained run with its backbone frozen,
  checkpointed after each."""
  workdir = tmp_path_factory.mktemp("finetuned")
  config = tiny_train_config(
      synthetic_data_dir,
      "plain",
      init_from=str(trained_plain_workdir),
      freeze="backbone",
      num_train_steps=2,
      eval_every_steps=2,
      checkpoint_every_steps=1,
      log_every_steps=1,
  )
  result = trainer.train_and_evaluate(config, workdir)
  return workdir, config, result


def test_the_new_state_holds_the_source_checkpoint_and_a_fresh_optimizer(
    trained_plain_workdir, synthetic_data_dir
):
  config = tiny_train_config(synthetic_data_dir, "plain", init_from=str(trained_plain_workdir))
  state, _ = trainer._new_state(config, sharding.create_mesh(config.mesh_axes), None)
  _, source = checkpointing.restore_variables(trained_plain_workdir, config.model)
  for mine, theirs in ((state.params, source.params), (state.batch_stats, source.batch_stats)):
    mine, theirs = leaves(mine), leaves(theirs)
    assert mine.keys() == theirs.keys()
    for name in mine:
      np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
  assert int(state.step) == 0
  assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x))  # Adam at 0


def test_before_any_update_it_counts_as_the_source_run(finetuned, trained_plain_workdir):
  workdir, _, _ = finetuned
  before = evaluation.read_predictions(workdir / "eval" / "step_0" / "predictions.csv")
  best = checkpointing.best_step(checkpointing.create_checkpoint_manager(trained_plain_workdir))
  source = evaluation.read_predictions(
      trained_plain_workdir / "eval" / f"step_{best}" / "predictions.csv"
  )
  assert before == source  # every image's count, to the 3 decimals written


def test_a_frozen_part_is_unchanged_and_the_rest_trains(finetuned, trained_plain_workdir):
  workdir, config, result = finetuned
  _, source = checkpointing.restore_variables(trained_plain_workdir, config.model)
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
  assert saved["init_from"] == str(trained_plain_workdir) and saved["freeze"] == "backbone"


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


def test_configs_folder_on_a_folder_without_val_resumes_without_its_source(
    trained_plain_workdir, tmp_path, caplog
):
  """configs/folder.py fine-tuning on LabelMe files built without val: the last
  checkpoint is the result, on test, and config.json records it. Resumed after the source
  workdir is deleted, the run finishes from its own config.json and checkpoint."""
  data_dir = labelme_dataset(tmp_path, {"train": [0, 1, 2, 3], "test": [4, 5]})
  source, workdir = tmp_path / "source", tmp_path / "run"
  shutil.copytree(trained_plain_workdir, source)
  config = folder.get_config()
  config.data.update(name="my_pictures", data_dir=str(data_dir), crop_size=64, num_workers=0)
  config.update(init_from=str(source), num_train_steps=2, eval_every_steps=2, batch_size=2)
  caplog.set_level(logging.INFO, logger="absl")
  result = trainer.train_and_evaluate(finetune.inherit_model(config, (), workdir), workdir)
  assert "no val split: the last checkpoint is the result" in caplog.text
  assert (result["selection"], result["step"], result["split"]) == ("last", 2, "test")
  recorded = run_config.load_run_config(workdir)
  assert (recorded.data.eval_split, recorded.data.validation) == ("test", False)
  assert recorded.model.channels == 16  # the source's model, not folder.py's
  assert recorded.learning_rate == run_config.load_run_config(source).learning_rate
  shutil.rmtree(source)  # moved or deleted after the first part
  config.num_train_steps = 4
  resumed = finetune.inherit_model(config, (), workdir)  # from the run's own config.json
  assert resumed.learning_rate == recorded.learning_rate
  result = trainer.train_and_evaluate(resumed, workdir)
  assert (result["selection"], result["step"], result["split"]) == ("last", 4, "test")
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "4" / "state")
  assert int(state["step"]) == 4


def test_init_step_picks_that_checkpoint_and_the_log_says_what_was_loaded(
    finetuned, synthetic_data_dir, caplog
):
  source = finetuned[0]  # a run with checkpoints at steps 1 and 2
  steps = sorted(int(p.name) for p in (source / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) >= 2
  config = tiny_train_config(
      synthetic_data_dir, "plain", init_from=str(source), init_step=steps[0], freeze="backbone"
  )
  caplog.set_level(logging.INFO, logger="absl")
  loaded = leaves(finetune.load_source_variables(config))
  chosen = leaves(checkpointing.restore_variables(source, config.model, steps[0])[1])
  result = leaves(checkpointing.restore_variables(source, config.model)[1])
  assert loaded.keys() == chosen.keys()
  for name in loaded:
    np.testing.assert_array_equal(loaded[name], chosen[name], err_msg=name)
  assert any(not np.array_equal(loaded[name], result[name]) for name in loaded)
  assert f"Fine-tuning from step {steps[0]} of {source}: loaded {len(loaded)} arrays" in caplog.text
  assert "frozen: backbone" in caplog.text and "backbone_weights is not used" in caplog.text
  config.init_step = 7
  missing = rf"No checkpoint of step 7 .*steps {re.escape(str(steps))}"
  with pytest.raises(FileNotFoundError, match=missing):
    finetune.load_source_variables(config)


def labelme_dataset(tmp_path: Path, splits: dict[str, list[int]]) -> Path:
  """Six pictures with LabelMe points, built as the folder dataset `my_pictures` with
  `splits` (picture numbers by split) by the importer; its data_dir."""
  pictures = tmp_path / "pictures"
  pictures.mkdir()
  rng = np.random.default_rng(0)
  for i in range(6):
    points = rng.uniform([0, 0], [96, 72], (3 + i, 2)).round(2)
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), np.uint8)).save(pictures / f"p{i}.jpg")
    shapes = [{"label": "head", "points": [p], "shape_type": "point"} for p in points.tolist()]
    labelme = {"shapes": shapes, "imagePath": f"p{i}.jpg", "imageData": None,
               "imageHeight": 72, "imageWidth": 96}  # fmt: skip
    (pictures / f"p{i}.json").write_text(json.dumps(labelme))
  split_file = tmp_path / "splits.json"
  split_file.write_text(json.dumps({k: [f"p{i}.jpg" for i in v] for k, v in splits.items()}))
  build_folder(
      str(pictures), "my_pictures", data_dir=str(tmp_path / "data"), splits_file=str(split_file)
  )
  return tmp_path / "data"


@pytest.mark.parametrize(
    "splits, changed",
    [
        ({"train": [0, 1, 2], "val": [3], "test": [4, 5]}, {}),  # best on val, tested once
        ({"train": [0, 1, 2, 3], "val": [4, 5]}, {"test_split": ""}),  # val figures
        (
            {"train": [0, 1, 2, 3], "test": [4, 5]},  # the last checkpoint, on test
            {"eval_split": "test", "validation": False, "test_split": ""},
        ),
    ],
)
def test_configs_folder_selects_by_the_splits_the_folder_has(tmp_path, splits, changed):
  config = folder.get_config()
  config.data.name, config.data.data_dir = "my_pictures", str(labelme_dataset(tmp_path, splits))
  settled = pipeline.with_folder_splits(config)
  expected = {"eval_split": "val", "validation": True, "test_split": "test", **changed}
  assert {key: settled.data[key] for key in expected} == expected
  assert (config.data.eval_split, config.data.test_split) == ("val", "test")  # a copy changed
