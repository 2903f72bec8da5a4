"""The PyTorch twin computes what the Flax model computes (benchmarks/torch_twin).

Agreement is measured relative to the output's scale: max |flax - torch| <= 1e-4 x
max |flax| over every output of every head (element-wise relative error is meaningless
for densities near zero). Every parameter and BatchNorm statistic is randomised first,
so that a transposed, swapped or dropped tensor cannot hide behind a zero bias or a unit
variance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfrnet_jax
from cfrnet_jax.data.targets import batch_density_targets
from cfrnet_jax.training.losses import cfrnet_loss
from configs.base import get_config
from tests.conftest import import_torch, tiny_model_config

torch = import_torch()
from benchmarks.torch_twin import convert  # noqa: E402
from benchmarks.torch_twin import model as twin_model  # noqa: E402

TOLERANCE = 1e-4


def randomized_state(model_config, seed=0):
  """A Flax CFRNet's (params, batch_stats) with every array drawn at random."""
  model = cfrnet_jax.build_model(model_config, seed)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  rng = np.random.default_rng(seed)

  def randomize(path, value):
    leaf = str(path[-1].key)
    if leaf == "var":
      return rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    if leaf in ("mean", "bias"):
      return rng.normal(0.0, 0.1, value.shape).astype(np.float32)
    if leaf == "scale":
      return rng.uniform(0.7, 1.3, value.shape).astype(np.float32)
    return np.asarray(value) * rng.uniform(0.8, 1.2, value.shape).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(randomize, nnx.to_pure_dict(params))
  batch_stats = jax.tree_util.tree_map_with_path(randomize, nnx.to_pure_dict(batch_stats))
  return params, batch_stats


def flax_model(model_config, params, batch_stats):
  graphdef, _, _ = nnx.split(
      nnx.eval_shape(lambda: cfrnet_jax.build_model(model_config)), nnx.Param, nnx.BatchStat
  )
  return nnx.merge(graphdef, params, batch_stats)


def twin(model_config, params, batch_stats):
  network = twin_model.CFRNet(model_config)
  convert.load_flax_state(network, params, batch_stats)
  return network


# The Flax side compiled as one program: run op by op, the tiny model's forward pass
# compiles each operation apart, about four times as long on a CPU.
forward = nnx.jit(lambda model, images: model(images))


def assert_outputs_match(flax_out, torch_out):
  for name, head in flax_out["heads"].items():
    for key, value in head.items():
      expected = np.asarray(value)
      got = torch_out["heads"][name][key].detach().permute(0, 2, 3, 1).numpy()
      assert got.shape == expected.shape, (name, key)
      error = np.abs(got - expected).max() / np.abs(expected).max()
      assert error <= TOLERANCE, f"{name}/{key}: {error:.2e}"


PAPER = get_config().model


@pytest.mark.parametrize(
    "name, model_config, size",
    [
        pytest.param("paper model, c=256", PAPER, (256, 256), marks=pytest.mark.slow),
        (
            "add fusion, no axial decoder, odd size",
            tiny_model_config(fusion="add", axial=False),
            (200, 300),
        ),
        (
            "concat fusion, no GAM, no DHP",
            tiny_model_config(fusion="concat", use_gam=False, use_dhp=False),
            (128, 160),
        ),
    ],
)
def test_inference_outputs_match(name, model_config, size):
  params, batch_stats = randomized_state(model_config)
  model = flax_model(model_config, params, batch_stats)
  model.eval()
  network = twin(model_config, params, batch_stats).eval()
  images = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
  expected = forward(model, jnp.asarray(images))
  with torch.no_grad():
    got = network(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert_outputs_match(expected, got)


def test_a_wrong_state_is_refused_by_name():
  config = tiny_model_config()
  params, batch_stats = randomized_state(config)
  del params["heads"]["f2"]
  with pytest.raises(ValueError, match="missing heads.f2.density_branch"):
    twin(config, params, batch_stats)


@pytest.mark.parametrize(
    "model_config, size",
    [
        pytest.param(PAPER, 256, marks=pytest.mark.slow, id="paper"),
        pytest.param(tiny_model_config(use_gam=False), 128, id="tiny_no_gam"),
    ],
)
def test_training_mode_losses_match_on_the_same_batch(model_config, size):
  config = get_config()
  params, batch_stats = randomized_state(model_config)
  rng = np.random.default_rng(2)
  images = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  points = rng.uniform(0, size, (2, 40, 2)).astype(np.float32)
  valid = np.arange(40)[None] < np.array([[25], [40]])
  targets = batch_density_targets(
      jnp.asarray(points),
      jnp.asarray(valid),
      (size, size),
      strides=(4, 8, 16),
      sigma=config.targets.sigma,
      foreground_radius=config.targets.foreground_radius,
  )
  model = flax_model(model_config, params, batch_stats)
  model.train()
  balance = config.loss.level_balance  # the configs' default, "area"
  expected, _ = nnx.jit(
      lambda model, images: cfrnet_loss(
          model(images), targets, config.loss.gamma, model_config.density_scale, balance
      )
  )(model, jnp.asarray(images))
  network = twin(model_config, params, batch_stats).train()
  torch_targets = {
      kind: {stride: torch.from_numpy(np.asarray(value)) for stride, value in targets[kind].items()}
      for kind in ("density", "foreground")
  }
  got = twin_model.cfrnet_loss(
      network(torch.from_numpy(images).permute(0, 3, 1, 2)),
      torch_targets,
      config.loss.gamma,
      model_config.density_scale,
      balance,
  )
  assert float(got.detach()) == pytest.approx(float(expected), rel=TOLERANCE)
