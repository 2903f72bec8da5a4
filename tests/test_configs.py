"""Configs: plain ml_collections, no heavy imports, old saved configs still load."""

import json

import pytest

from configs import base, default, folder, jhu, nwpu, shha, shhb, tiny, ucf_cc_50
from tests.conftest import modules_imported_by


def test_parsing_any_config_imports_no_jax_or_data_stack():
  loaded = modules_imported_by(
      "from configs import base, default, folder, jhu, nwpu, shha, shhb, tiny, ucf_cc_50\n"
      "for module in (base, default, folder, jhu, nwpu, shha, shhb, tiny, ucf_cc_50):\n"
      "  module.get_config()"
  )
  assert "ml_collections" in loaded
  heavy = {"jax", "flax", "orbax", "grain", "tensorflow_datasets", "cfrnet_jax"}
  assert not heavy & loaded


@pytest.mark.parametrize("module", [base, default, folder, jhu, nwpu, shha, shhb, tiny, ucf_cc_50])
def test_every_config_has_the_prediction_settings(module):
  config = module.get_config()
  assert config.predict.tile_size % 128 == 0 and 0 < config.predict.tile_overlap


def test_a_saved_config_without_newer_sections_is_completed():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["predict"]
  del saved["targets"]["sigma"]
  saved["data"]["eval_bucket"] = 128  # a field no longer used: kept, ignored
  saved["model"]["channels"] = 24  # saved values win
  config = base.complete(saved)
  assert config.predict.tile_size == base.get_config().predict.tile_size
  assert config.targets.sigma == 4.0 and config.model.channels == 24
  assert config.data.eval_bucket == 128
