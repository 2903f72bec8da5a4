"""Convolution with a kernel gradient that XLA's CPU backend computes fast.

Why: on CPU, XLA computes the forward pass and the input gradient of a 3x3 convolution
as fast as PyTorch (oneDNN), but the *kernel* gradient - a convolution whose "kernel" is
the whole output gradient map - 3 to 10 times slower (measured at VGG16-BN's shapes on
2 cores: docs/performance.md). The kernel gradient of a stride-1 convolution is a sum over
the kh x kw taps of (shifted input)^T @ (output gradient): kh*kw matrix products with a
huge inner dimension (batch x height x width). We compute exactly that, with the inner
dimension split into a few independent batched products so that every core gets work
(Eigen does not split a single product's reduction dimension), then summed.

`conv_general_dilated` is a drop-in for `jax.lax.conv_general_dilated`, passed to
`nnx.Conv`: on the CPU backend, for undilated stride-1 NHWC convolutions with explicit
padding (every "Conv" of the paper), it uses this gradient; everywhere else (GPU, TPU,
other convolutions) it is `lax.conv_general_dilated` itself. Multi-process CPU runs
(jax.distributed with gloo collectives) also keep XLA's gradient: with the tap loop in
the step, the processes' gloo all-reduces go out of step ("received data size doesn't
match"). Values are identical; gradients agree to float32 rounding (tests/test_conv.py).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Independent batched products the reduction is split into: one per core, at most 8.
_MAX_SPLIT = min(8, os.cpu_count() or 1)


def _plain(x, kernel, padding, precision):
  return lax.conv_general_dilated(
      x, kernel, (1, 1), padding, precision=precision, dimension_numbers=_DIMENSIONS
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, padding, precision):
  return _plain(x, kernel, padding, precision)


def _conv_fwd(x, kernel, padding, precision):
  return _plain(x, kernel, padding, precision), (x, kernel)


def kernel_gradient(
    x: jax.Array,
    grad: jax.Array,
    kernel_shape: tuple[int, ...],
    padding: tuple[tuple[int, int], ...],
) -> jax.Array:
  """d(loss)/d(kernel) of a stride-1 NHWC convolution as kh*kw split matrix products,
  one tap after the other (`lax.map`), so that only one shifted copy of the input is
  alive at a time (less temporary memory than unrolled taps, same speed:
  docs/performance.md)."""
  kh, kw, in_channels, out_channels = kernel_shape
  batch, out_h, out_w, _ = grad.shape
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  rows = batch * out_h * out_w
  split = next(n for n in range(_MAX_SPLIT, 0, -1) if rows % n == 0)
  grad = grad.reshape(split, rows // split, out_channels)

  def tap(index):
    shifted = lax.dynamic_slice(
        padded, (0, index // kw, index % kw, 0), (batch, out_h, out_w, in_channels)
    )
    return jnp.einsum(
        "nmc,nmo->nco",
        shifted.reshape(split, -1, in_channels),
        grad,
        preferred_element_type=jnp.float32,
    ).sum(0)

  return lax.map(tap, jnp.arange(kh * kw)).reshape(kernel_shape)


def _conv_bwd(padding, precision, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _plain(x, kernel, padding, precision), x)
  (x_grad,) = input_vjp(grad)
  return x_grad, kernel_gradient(x, grad, kernel.shape, padding).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
  """`lax.conv_general_dilated`, with the split kernel gradient where it applies."""
  specs = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSIONS)
  applies = (
      jax.default_backend() == "cpu"
      and jax.process_count() == 1
      and lhs.ndim == 4
      and tuple(window_strides) == (1, 1)
      and not isinstance(padding, str)
      and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
      and feature_group_count == 1
      and dimension_numbers == specs
      and not kwargs.get("preferred_element_type")
      and kwargs.get("out_sharding") is None
      and lhs.dtype == rhs.dtype
  )
  if not applies:
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        precision=precision,
        **kwargs,
    )
  return _conv(lhs, rhs, tuple(tuple(p) for p in padding), precision)
