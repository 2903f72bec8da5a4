"""Shared test fixtures: a tiny CFRNet that keeps the paper's structure.

The tiny model has the same layers, windows and switches as the paper's, with narrow
channels so that a forward and backward pass take well under a second on 2 CPU cores.
"""

import ml_collections
import pytest

from configs.default import get_model_config

# Every ablation of the paper's Tables 1-3, as overrides of the full model.
ABLATIONS = {
    "full": {},
    "fusion_add": {"fusion": "add"},
    "fusion_concat": {"fusion": "concat"},
    "no_gam": {"use_gam": False},
    "no_dhp": {"use_dhp": False},
    "no_gam_no_dhp": {"use_gam": False, "use_dhp": False},
    "no_hierarchical": {"hierarchical": False},
    "no_axial": {"axial": False},
    "no_decoders": {"hierarchical": False, "axial": False},
}


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  config = get_model_config()
  config.update(vgg_widths=(8, 8, 16, 16, 16), channels=16, num_heads=2, gam_heads=2,
                head_channels=8, head_hidden_channels=8)
  config.update(overrides)
  return config


@pytest.fixture
def tiny_config():
  return tiny_model_config()
