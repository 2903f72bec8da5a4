import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfrnet_jax.data.targets import batch_density_targets, density_targets

STRIDES = (1, 4, 8, 16)
PAPER = {"sigma": 4.0, "foreground_radius": 8.0}  # section 4; configs/base.py


def _targets(points, valid=None, size=(100, 130), **kwargs):
  points = jnp.asarray(points, jnp.float32)
  valid = jnp.ones(points.shape[0], bool) if valid is None else jnp.asarray(valid)
  kwargs = {**PAPER, **kwargs}
  return jax.jit(lambda p, v: density_targets(p, v, size, strides=STRIDES, **kwargs))(points, valid)


def test_count_is_kept_at_every_stride_including_border_points():
  rng = np.random.default_rng(0)
  inside = rng.uniform([0, 0], [130, 100], size=(50, 2))
  border = [[0, 0], [130, 100], [0, 57.3], [130, 3.0], [64.2, 100], [12.0, 0]]
  points = np.concatenate([inside, border])
  targets = _targets(points)
  assert int(targets["count"]) == 56 and int(targets["dropped"]) == 0
  for stride in STRIDES:
    density = targets["density"][stride]
    assert density.shape == (-(-100 // stride), -(-130 // stride))
    assert abs(float(density.sum()) - 56) < 1e-4


@pytest.mark.parametrize("point", [[0.0, 0.0], [130.0, 100.0], [0.0, 50.0], [3.0, 97.0]])
def test_each_head_contributes_exactly_one_even_when_cut_by_the_border(point):
  targets = _targets([point])
  for stride in STRIDES:
    assert abs(float(targets["density"][stride].sum()) - 1.0) < 1e-5


def test_interior_head_is_the_sigma_4_gaussian_at_pixel_centres():
  x, y = 60.3, 47.8
  density = np.asarray(_targets([[x, y]])["density"][1])
  rows, cols = np.mgrid[0:100, 0:130] + 0.5
  kernel = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 4.0**2))
  np.testing.assert_allclose(density, kernel / kernel.sum(), atol=1e-7)


def test_strided_density_is_the_sum_pooled_full_resolution_map():
  targets = _targets(np.random.default_rng(1).uniform([0, 0], [130, 100], (30, 2)))
  full = np.pad(np.asarray(targets["density"][1]), ((0, 12), (0, 14)))  # to 112 x 144
  for stride in (4, 8, 16):
    pooled = full.reshape(112 // stride, stride, 144 // stride, stride).sum((1, 3))
    rows, cols = -(-100 // stride), -(-130 // stride)
    np.testing.assert_allclose(targets["density"][stride], pooled[:rows, :cols], atol=1e-6)


def test_points_outside_or_invalid_are_dropped_and_counted():
  points = [[10, 10], [-0.5, 10], [10, 100.01], [np.nan, 3], [50, 50]]
  valid = [True, True, True, True, False]  # the last is padding, not a dropped head.
  targets = _targets(points, valid)
  assert int(targets["count"]) == 1
  assert int(targets["dropped"]) == 3
  for stride in STRIDES:
    assert np.isfinite(targets["density"][stride]).all()
    assert abs(float(targets["density"][stride].sum()) - 1.0) < 1e-5


def test_foreground_is_the_square_around_each_head_by_hand():
  # Radius 8 around (10.5, 20.2): pixel columns j with |j + 0.5 - 10.5| < 8.5 -> 2..18,
  # rows i with |i + 0.5 - 20.2| < 8.5 -> 12..28.
  foreground = _targets([[10.5, 20.2]], foreground_radius=8.0)["foreground"]
  expected = np.zeros((100, 130), np.int32)
  expected[12:29, 2:19] = 1
  np.testing.assert_array_equal(foreground[1], expected)
  # At stride 8 the square touches cell rows 1..3 and cell columns 0..2.
  expected8 = np.zeros((13, 17), np.int32)
  expected8[1:4, 0:3] = 1
  np.testing.assert_array_equal(foreground[8], expected8)


def test_no_heads_gives_empty_targets():
  targets = _targets(np.zeros((4, 2)), valid=np.zeros(4, bool))
  for stride in STRIDES:
    assert float(targets["density"][stride].sum()) == 0
    assert int(targets["foreground"][stride].sum()) == 0


def test_batched_targets_match_single_images():
  points = jax.random.uniform(jax.random.key(0), (3, 20, 2), maxval=64.0)
  valid = jax.random.uniform(jax.random.key(1), (3, 20)) < 0.5
  batched = batch_density_targets(points, valid, (64, 64), strides=(4,), **PAPER)
  for i in range(3):
    single = density_targets(points[i], valid[i], (64, 64), strides=(4,), **PAPER)
    np.testing.assert_allclose(batched["density"][4][i], single["density"][4], atol=1e-7)
    assert abs(float(batched["density"][4][i].sum()) - int(valid[i].sum())) < 1e-4


def test_padding_beyond_valid_size_gets_no_density_or_foreground():
  # A 20 x 30 image padded into a 32 x 32 map: heads near its border keep their whole
  # mass inside the 20 x 30 area.
  points = jnp.array([[29.5, 19.0], [3.0, 18.0], [31.0, 5.0]])  # the last is outside.
  targets = density_targets(
      points, jnp.ones(3, bool), (32, 32), strides=(1, 4), valid_size=jnp.array([20, 30]), **PAPER
  )
  assert int(targets["count"]) == 2 and int(targets["dropped"]) == 1
  density = np.asarray(targets["density"][1])
  assert abs(density.sum() - 2.0) < 1e-5
  assert density[20:].max() == 0 and density[:, 30:].max() == 0
  assert np.asarray(targets["foreground"][1])[20:].max() == 0
  assert abs(float(targets["density"][4].sum()) - 2.0) < 1e-5
