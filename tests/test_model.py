import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfrnet_jax
from cfrnet_jax.data.targets import batch_density_targets
from cfrnet_jax.evaluation import make_count_fn
from cfrnet_jax.models.cfrnet import HEAD_STRIDES, CFRNet, pad_multiple
from cfrnet_jax.state import init_variables, model_graphdef
from cfrnet_jax.training.losses import cfrnet_loss
from configs.base import get_config, get_model_config
from tests.conftest import ABLATIONS, tiny_model_config


def _output_shapes(config, height, width, batch=2):
  """Output shapes of a model without allocating or computing anything."""
  model = nnx.eval_shape(lambda: cfrnet_jax.build_model(config, 0))
  graphdef, state = nnx.split(model)
  forward = lambda s, x: nnx.merge(graphdef, s)(x)
  images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
  return jax.tree_util.tree_map(lambda a: a.shape, jax.eval_shape(forward, state, images))


@pytest.mark.parametrize("size", [(256, 256), (300, 452)])
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_paper_model_shapes_for_every_ablation(ablation, size):
  config = get_model_config()
  config.update(ABLATIONS[ablation])
  height, width = size
  shapes = _output_shapes(config, height, width)
  quarter = (2, -(-height // 4), -(-width // 4))
  assert shapes["density"] == quarter + (1,)
  expected_heads = {"f1", "f2", "f3", "f5"} if config.axial else {"f1", "f2", "f3"}
  assert set(shapes["heads"]) == expected_heads
  for name, head in shapes["heads"].items():
    stride = HEAD_STRIDES[name]
    cells = (2, -(-height // stride), -(-width // stride))
    assert head["density"] == cells + (1,)
    assert ("seg_logits" in head) == config.use_dhp
    if config.use_dhp:
      assert head["seg_logits"] == cells + (2,)


def test_build_model_initialises_as_nnx_rngs_would():
  """build_model's keys (`InitKeys`, counted in Python) give the parameters that
  `nnx.Rngs(seed)` gives, bit for bit; another seed gives others."""
  config = tiny_model_config()
  expected = nnx.state(CFRNet(config, rngs=nnx.Rngs(7)))
  built = nnx.state(cfrnet_jax.build_model(config, 7))
  assert jax.tree.structure(built) == jax.tree.structure(expected)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(built)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  other = nnx.state(cfrnet_jax.build_model(config, 8), nnx.Param)
  assert not np.array_equal(
      jax.tree.leaves(nnx.state(expected, nnx.Param))[0], jax.tree.leaves(other)[0]
  )


def test_pad_multiple_follows_the_windows():
  config = get_model_config()
  assert pad_multiple(config) == 128  # window 8 on F3 (stride 16).
  config.hierarchical = False
  assert pad_multiple(config) == 64  # window 16 on F1 (stride 4).
  config.fusion = "add"
  assert pad_multiple(config) == 32  # only the stride of F4.


def test_padded_pixels_never_reach_the_count(tiny_config):
  """An odd-sized image counts exactly what the same image padded by hand to the padding
  multiple gives over the original area."""
  model = cfrnet_jax.build_model(tiny_config, 0)
  model.eval()
  height, width = 130, 141
  image = jax.random.normal(jax.random.key(0), (1, height, width, 3))
  padded = jnp.pad(image, ((0, 0), (0, 256 - height), (0, 256 - width), (0, 0)))
  forward = nnx.jit(lambda m, x: m(x)["density"])
  density = forward(model, image)
  padded_density = forward(model, padded)
  rows, cols = -(-height // 4), -(-width // 4)
  assert density.shape == (1, rows, cols, 1)
  np.testing.assert_allclose(density, padded_density[:, :rows, :cols], rtol=1e-5, atol=1e-7)
  # The hand-padded image's extra area does hold density, so cropping matters.
  assert float(jnp.abs(padded_density[:, rows:]).sum()) > 0


def _random_batch(key, batch, size, max_points=40):
  k1, k2, k3 = jax.random.split(key, 3)
  images = jax.random.normal(k1, (batch, size, size, 3))
  points = jax.random.uniform(k2, (batch, max_points, 2), maxval=size)
  valid = jax.random.uniform(k3, (batch, max_points)) < 0.7
  return images, points, valid


def _loss_and_grads(model, images, points, valid):
  config = get_config()
  targets = batch_density_targets(
      points,
      valid,
      images.shape[1:3],
      strides=sorted(set(HEAD_STRIDES.values())),
      sigma=config.targets.sigma,
      foreground_radius=config.targets.foreground_radius,
  )

  def loss_fn(m):
    return cfrnet_loss(
        m(images),
        targets,
        config.loss.gamma,
        config.model.density_scale,
        config.loss.level_balance,
    )

  return nnx.value_and_grad(loss_fn, has_aux=True)(model)


@functools.cache
def _tiny_gradients(ablation: str):
  """(loss, number of parameters, flat parameter gradients) of the tiny model with
  `ablation` on a random batch of two 128x128 images; computed once per ablation."""
  model = cfrnet_jax.build_model(tiny_model_config(**ABLATIONS[ablation]), 0)
  images, points, valid = _random_batch(jax.random.key(1), 2, 128)
  (loss, _), grads = nnx.jit(_loss_and_grads)(model, images, points, valid)
  return (
      loss,
      len(nnx.to_flat_state(nnx.state(model, nnx.Param))),
      nnx.to_flat_state(nnx.state(grads, nnx.Param)),
  )


@pytest.mark.parametrize(
    "ablation",
    ["full"]
    + [pytest.param(a, marks=pytest.mark.slow) for a in ("fusion_concat", "no_dhp", "no_axial")],
)
def test_every_parameter_gets_a_gradient(ablation):
  loss, parameters, flat = _tiny_gradients(ablation)
  assert np.isfinite(loss)
  assert len(flat) == parameters
  zero = [".".join(map(str, path)) for path, g in flat if not np.any(np.asarray(g.get_value()))]
  assert not zero, f"parameters without gradient: {zero}"


@pytest.mark.parametrize("remat, rematerialised_parts", [("backbone", 5), ("all", 20)])
def test_remat_wraps_the_chosen_parts_in_checkpoints(remat, rematerialised_parts):
  """`model.remat` wraps the 5 VGG blocks ("backbone"), and with "all" also GAM, the 4
  compressors, the 6 decoder steps and the 4 heads, in jax.checkpoint. (XLA's CPU buffer
  assignment does not show the memory saved; the GPU figures are in
  docs/performance.md.)"""
  images, points, valid = _random_batch(jax.random.key(1), 2, 128)
  graphdef, state = nnx.split(cfrnet_jax.build_model(tiny_model_config(remat=remat), 0))
  loss_of = lambda state, x: _loss_and_grads(nnx.merge(graphdef, state), x, points, valid)[0][0]
  assert str(jax.make_jaxpr(loss_of)(state, images)).count("remat") == rematerialised_parts


@pytest.mark.slow  # CI runs it; the default selection stays under 10 minutes
def test_remat_changes_no_result():
  """Loss, gradients and BatchNorm statistics of the fully rematerialised model are the
  plain model's (to float32 rounding of the recomputed forward pass)."""
  images, points, valid = _random_batch(jax.random.key(1), 2, 128)
  models = {
      remat: cfrnet_jax.build_model(tiny_model_config(remat=remat), 0) for remat in ("none", "all")
  }
  results = {
      remat: nnx.jit(_loss_and_grads)(m, images, points, valid) for remat, m in models.items()
  }
  (loss, _), grads = results["all"]
  (reference, _), reference_grads = results["none"]
  np.testing.assert_allclose(loss, reference, rtol=1e-5)
  flat = lambda tree, kind: nnx.to_flat_state(nnx.state(tree, kind))
  largest = max(float(jnp.abs(r.get_value()).max()) for _, r in flat(reference_grads, nnx.Param))
  for (path, g), (_, r) in zip(flat(grads, nnx.Param), flat(reference_grads, nnx.Param)):
    tolerance = 1e-3 * float(jnp.abs(r.get_value()).max()) + 1e-5 * largest
    assert float(jnp.abs(g.get_value() - r.get_value()).max()) <= tolerance, path
  for (path, a), (_, b) in zip(
      flat(models["all"], nnx.BatchStat), flat(models["none"], nnx.BatchStat)
  ):
    np.testing.assert_allclose(
        a.get_value(), b.get_value(), rtol=1e-5, atol=1e-6, err_msg=str(path)
    )


def test_unknown_remat_or_attention_choice_is_refused():
  with pytest.raises(ValueError, match="model.remat must be one of"):
    cfrnet_jax.build_model(tiny_model_config(remat="half"), 0)
  with pytest.raises(ValueError, match="model.attention must be one of"):
    cfrnet_jax.build_model(tiny_model_config(attention="flash"), 0)
  with pytest.raises(ValueError, match="needs model.dtype bfloat16 or float16"):
    cfrnet_jax.build_model(tiny_model_config(attention="cudnn"), 0)


def test_attention_switch_reaches_gam_and_every_cfrm():
  """`model.attention` is the implementation of all 7 attention blocks (GAM and the 6
  CFRMs); on a machine without cuDNN, asking for it fails in JAX's cuDNN check."""
  from cfrnet_jax.models.attention import AttentionBlock

  model = cfrnet_jax.build_model(tiny_model_config(attention="cudnn", dtype="bfloat16"), 0)
  blocks = [m for _, m in nnx.iter_graph(model) if isinstance(m, AttentionBlock)]
  assert len(blocks) == 7 and {b.attention for b in blocks} == {"cudnn"}
  if jax.default_backend() != "gpu":
    model.eval()
    with pytest.raises(RuntimeError, match="cuDNN"):
      model(jnp.zeros((1, 128, 128, 3)))


def test_relocation_bias_table_is_fully_trained():
  """Every relative offset of a window occurs between high-resolution tokens, so every
  entry of each CFRM's bias table gets a gradient."""
  _, _, flat = _tiny_gradients("full")
  tables = [g.get_value() for path, g in flat if path[-1] == "relative_bias_table"]
  assert len(tables) == 6  # 3 hierarchical + 3 axial CFRMs.
  for table in tables:
    assert np.all(np.asarray(table) != 0)


def test_paper_model_counts_a_small_picture():
  """The real configuration (c = 256, VGG16-BN widths), jitted, at 128x128: one cell per
  4x4 pixels, finite, and the masked count of the evaluation path is its sum."""
  config = get_config()
  graphdef, variables = model_graphdef(config.model), init_variables(config.model, 0)
  image = np.random.default_rng(0).integers(0, 255, (1, 128, 128, 3)).astype(np.uint8)
  count, density = make_count_fn(graphdef, config.data)(
      variables, image, np.array([[128, 128]], np.int32)
  )
  assert density.shape == (1, 32, 32) and np.isfinite(density).all()
  np.testing.assert_allclose(float(count[0]), float(density.sum()), rtol=1e-5)


@pytest.mark.slow
def test_paper_size_model_gradients():
  """The real configuration (c = 256, VGG16-BN widths) trains, jitted: a finite loss
  with every term, and a non-zero finite gradient for every parameter, at the smallest
  input it takes whole (128; its inference is `test_paper_model_counts_a_small_picture`)."""
  model = cfrnet_jax.build_model(get_model_config(), 0)
  images, points, valid = _random_batch(jax.random.key(3), 1, 128, max_points=64)
  model.train()
  (loss, terms), grads = nnx.jit(_loss_and_grads)(model, images, points, valid)
  assert np.isfinite(loss)
  assert set(terms) == {
      f"{kind}/{head}" for kind in ("mse", "ce") for head in ("f1", "f2", "f3", "f5")
  }
  norms = [
      float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(nnx.state(grads, nnx.Param))
  ]
  assert all(np.isfinite(norms)) and min(norms) > 0


def test_zero_density_init_starts_every_head_at_zero_and_still_learns():
  model = cfrnet_jax.build_model(tiny_model_config(density_init="zeros"), 0)
  features = jax.random.normal(jax.random.key(0), (1, 8, 8, 16))  # any level's features
  for name, head in model.heads.items():
    assert not np.any(np.asarray(head(features)["density"])), name
    # The output conv's gradient is its input features times the error: not zero.
    grads = nnx.grad(lambda h: jnp.sum(h(features)["density"]))(head)
    assert np.any(np.asarray(grads["density_branch"]["layers"][2]["kernel"].get_value())), name
  with pytest.raises(ValueError, match="density_init must be one of"):
    cfrnet_jax.build_model(tiny_model_config(density_init="ones"), 0)


def test_foreground_gate_zeroes_background_cells_at_inference_only():
  """With the gate at t, eval mode keeps a cell's density where the segmentation branch's
  foreground probability is >= t and zeroes it elsewhere; training mode never gates."""
  gate = 0.5
  model = cfrnet_jax.build_model(tiny_model_config(foreground_gate=gate), 0)
  features = jax.random.normal(jax.random.key(1), (1, 8, 8, 16))
  head = model.heads["f1"]
  ungated = head(features)["density"]  # a freshly built model is in training mode
  model.eval()  # (BatchNorm's running statistics stay as they are from here)
  out = head(features)
  foreground = jax.nn.softmax(out["seg_logits"], axis=-1)[..., 1:]
  assert 0 < np.mean(np.asarray(foreground) >= gate) < 1  # some cells on each side
  model.set_attributes(foreground_gate=0.0)
  soft = head(features)["density"]
  np.testing.assert_array_equal(out["density"], np.where(foreground >= gate, soft, 0.0))
  model.set_attributes(foreground_gate=gate)
  model.train()  # batch statistics: the same output as the first call, ungated
  np.testing.assert_array_equal(head(features)["density"], ungated)
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="foreground_gate must be in"):
      cfrnet_jax.build_model(tiny_model_config(foreground_gate=bad), 0)
  with pytest.raises(ValueError, match="needs the segmentation branch"):
    cfrnet_jax.build_model(tiny_model_config(foreground_gate=gate, use_dhp=False), 0)
