"""Shared test fixtures: a tiny CFRNet that keeps the paper's structure.

The tiny model has the same layers, windows and switches as the paper's, with narrow
channels so that a forward and backward pass take well under a second on 2 CPU cores.
"""

import os
from pathlib import Path

import ml_collections
import pytest

from configs.base import get_model_config

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


# A training run small enough for CPU tests: the tiny model on synthetic crowds.
TINY_TRAIN_FLAGS = (
    "--config.model.vgg_widths=(8,8,16,16,16)", "--config.model.channels=16",
    "--config.model.num_heads=2", "--config.model.gam_heads=2",
    "--config.model.head_channels=8", "--config.model.head_hidden_channels=8",
    "--config.batch_size=4", "--config.data.num_workers=0",
    "--config.data.eval_split=test[:4]", "--config.learning_rate=1e-3",
)


def tiny_train_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """`configs/default.py` with the tiny model and `TINY_TRAIN_FLAGS`'s settings."""
  from configs import default
  config = default.get_config()
  config.model = tiny_model_config(density_scale=config.model.density_scale)
  config.update(batch_size=4, learning_rate=1e-3)
  config.data.update(num_workers=0, eval_split="test[:4]", data_dir=data_dir)
  config.update(overrides)
  return config


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """synthetic_crowd built once per test session."""
  from tfds_crowd.build import build
  data_dir = tmp_path_factory.mktemp("tfds")
  build("synthetic_crowd", str(data_dir))
  return str(data_dir)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
  """A folder of ../shared/data; CI must have it, a user's fresh clone may not."""
  path = SHARED_DATA / name
  if not path.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"{path} is missing: CI must run the real-data tests.")
    pytest.skip(f"{path} is absent (real data lives in ../shared/data beside the repo).")
  return path


def import_torch():
  """PyTorch: CI installs it (requirements-dev.txt) and must run the tests that need
  it; elsewhere they skip when it is absent."""
  if os.environ.get("CI"):
    import torch
    return torch
  return pytest.importorskip("torch", reason="needs PyTorch (requirements-dev.txt)")
