import jax
import jax.numpy as jnp
import numpy as np

from cfrnet_jax.training.losses import cfrnet_loss


def _fake(key, with_seg=True):
  """Outputs and targets of two images at the strides of the four heads."""
  keys = iter(jax.random.split(key, 16))
  targets = {"density": {}, "foreground": {}}
  heads = {}
  for name, stride in (("f1", 4), ("f2", 8), ("f3", 16), ("f5", 4)):
    cells = (2, 64 // stride, 64 // stride)
    targets["density"][stride] = jax.random.uniform(next(keys), cells)
    targets["foreground"][stride] = (jax.random.uniform(next(keys), cells) > 0.5).astype(jnp.int32)
    heads[name] = {"density": jax.random.uniform(next(keys), cells + (1,))}
    if with_seg:
      heads[name]["seg_logits"] = jax.random.normal(next(keys), cells + (2,))
  return {"heads": heads}, targets


def test_loss_is_the_sum_of_eq_10_and_11_over_heads():
  outputs, targets = _fake(jax.random.key(0))
  loss, terms = cfrnet_loss(outputs, targets, gamma=0.5, density_scale=1.0, level_balance="sum")
  expected = 0.0
  for name, stride in (("f1", 4), ("f2", 8), ("f3", 16), ("f5", 4)):
    pred = np.asarray(outputs["heads"][name]["density"][..., 0])
    mse = np.mean(np.sum((pred - np.asarray(targets["density"][stride])) ** 2, (1, 2)))
    logits = np.asarray(outputs["heads"][name]["seg_logits"])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = np.asarray(targets["foreground"][stride])
    ce = -np.mean(np.take_along_axis(log_p, labels[..., None], -1))
    np.testing.assert_allclose(terms[f"mse/{name}"], mse, rtol=1e-5)
    np.testing.assert_allclose(terms[f"ce/{name}"], ce, rtol=1e-5)
    expected += mse + 0.5 * ce
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_perfect_density_leaves_only_cross_entropy():
  outputs, targets = _fake(jax.random.key(1))
  for name, stride in (("f1", 4), ("f2", 8), ("f3", 16), ("f5", 4)):
    outputs["heads"][name]["density"] = targets["density"][stride][..., None]
  loss, terms = cfrnet_loss(outputs, targets, gamma=1.0, density_scale=100.0, level_balance="sum")
  assert all(float(terms[f"mse/{n}"]) == 0 for n in ("f1", "f2", "f3", "f5"))
  np.testing.assert_allclose(
      loss, sum(terms[f"ce/{n}"] for n in ("f1", "f2", "f3", "f5")), rtol=1e-6
  )


def test_density_scale_scales_the_squared_error():
  outputs, targets = _fake(jax.random.key(2), with_seg=False)
  loss1, _ = cfrnet_loss(outputs, targets, gamma=1.0, density_scale=1.0, level_balance="sum")
  loss10, terms = cfrnet_loss(outputs, targets, gamma=1.0, density_scale=10.0, level_balance="sum")
  np.testing.assert_allclose(loss10, 100 * loss1, rtol=1e-5)
  assert not any(key.startswith("ce/") for key in terms)  # plain heads: no CE term.


def test_area_balance_weighs_every_level_alike_and_sum_grows_with_the_stride():
  """A uniform density of 1 person per 4x4 cell, predicted 10% high at every level: with
  sum-pooled targets Eq. 11's term grows with the stride squared; "area" evens it out."""
  heads, targets = {}, {"density": {}, "foreground": {}}
  for name, stride in (("f1", 4), ("f2", 8), ("f3", 16), ("f5", 4)):
    target = jnp.full((2, 64 // stride, 64 // stride), (stride / 4) ** 2)
    targets["density"][stride] = target
    heads[name] = {"density": 1.1 * target[..., None]}
  outputs = {"heads": heads}
  _, summed = cfrnet_loss(outputs, targets, gamma=1.0, density_scale=1.0, level_balance="sum")
  _, area = cfrnet_loss(outputs, targets, 1.0, 1.0, "area")
  for name, stride in (("f2", 8), ("f3", 16)):
    # float32 sums over up to 256 cells of 1.1x targets: good to about 1e-6, not better.
    np.testing.assert_allclose(
        summed[f"mse/{name}"] / summed["mse/f1"], (stride / 4) ** 2, rtol=1e-5
    )
    np.testing.assert_allclose(area[f"mse/{name}"], area["mse/f1"], rtol=1e-5)
  weights = {"f1": 1.0, "f2": 0.0, "f3": 2.0, "f5": 1.0}
  loss, terms = cfrnet_loss(outputs, targets, 1.0, 1.0, "area", weights)
  expected = sum(weights[n] * terms[f"mse/{n}"] for n in weights)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
