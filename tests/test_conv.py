"""The CPU-friendly convolution gradient and pooling equal XLA's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cfrnet_jax.models import conv
from cfrnet_jax.models.backbone import max_pool_2x2

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        ((2, 8, 12, 5), (3, 3, 5, 7), ((1, 1), (1, 1))),
        ((1, 5, 7, 3), (3, 3, 3, 4), ((1, 1), (1, 1))),  # odd row count: no split
        ((2, 6, 6, 4), (1, 1, 4, 6), ((0, 0), (0, 0))),
        ((2, 9, 8, 3), (3, 5, 3, 2), ((0, 2), (1, 3))),  # asymmetric kernel and padding
    ],
)
def test_values_and_gradients_equal_lax(shape, kernel, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  specs = lax.conv_dimension_numbers(shape, kernel, DIMENSIONS)

  def loss(function, x, w):
    y = function(x, w, (1, 1), padding, dimension_numbers=specs)
    return jnp.sum(y * jnp.cos(y)), y

  (ours, y_ours), grads_ours = jax.value_and_grad(
      lambda x, w: loss(conv.conv_general_dilated, x, w), (0, 1), has_aux=True
  )(x, w)
  (theirs, y_theirs), grads_theirs = jax.value_and_grad(
      lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1), has_aux=True
  )(x, w)
  np.testing.assert_array_equal(y_ours, y_theirs)
  jaxpr = str(jax.make_jaxpr(lambda x, w: loss(conv.conv_general_dilated, x, w))(x, w))
  assert "custom_vjp" in jaxpr  # the CPU gradient path is the one under test.
  for a, b in zip(grads_ours, grads_theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_bfloat16_kernel_gradient_accumulates_in_float32():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 32, 32, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.bfloat16)
  specs = lax.conv_dimension_numbers(x.shape, w.shape, DIMENSIONS)
  grad = jax.grad(
      lambda w: conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=specs)
      .astype(jnp.float32)
      .sum()
  )(w)
  exact = jax.grad(
      lambda w: lax.conv_general_dilated(
          x.astype(jnp.float32), w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=specs
      ).sum()
  )(w.astype(jnp.float32))
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad, np.float32), exact, rtol=1e-2)


def test_strided_and_string_padded_convolutions_fall_back_to_lax():
  layer = nnx.Conv(
      3, 4, (3, 3), strides=2, conv_general_dilated=conv.conv_general_dilated, rngs=nnx.Rngs(0)
  )
  plain = nnx.Conv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))
  x = jnp.ones((1, 8, 8, 3))
  np.testing.assert_array_equal(layer(x), plain(x))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: layer(x).sum()))(x))
  assert "custom_vjp" not in jaxpr


def test_max_pool_equals_flax_max_pool_and_its_gradient():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 6, 3)), jnp.float32)
  np.testing.assert_array_equal(max_pool_2x2(x), nnx.max_pool(x, (2, 2), strides=(2, 2)))
  np.testing.assert_array_equal(
      jax.grad(lambda x: jnp.sum(max_pool_2x2(x) ** 2))(x),
      jax.grad(lambda x: jnp.sum(nnx.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x),
  )
