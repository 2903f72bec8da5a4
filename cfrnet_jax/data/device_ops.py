"""Data operations that run on the accelerator, inside the jitted step or forward pass.

Batches leave the host as uint8 pictures padded at the bottom and right, each with its
`valid_size` (height, width of the picture part). Normalising on the device keeps the
transfer 4x smaller than float32; the valid-size mask keeps padding out of the input
(exactly 0, as the model pads itself) and out of every count.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cfrnet_jax.data.geometry import ceil_div


def valid_mask(valid_size: jax.Array, shape: tuple[int, int], stride: int = 1) -> jax.Array:
  """(batch, rows, cols) bool: True on the cells of a stride-`stride` map of `shape`
  that hold picture pixels, for pictures of `valid_size` (batch, 2) at the top left."""
  cells = ceil_div(valid_size, stride)
  rows = jnp.arange(shape[0])[None, :, None] < cells[:, 0, None, None]
  cols = jnp.arange(shape[1])[None, None, :] < cells[:, 1, None, None]
  return rows & cols


def normalize_images(
    images: jax.Array, valid_size: jax.Array | None, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
  """uint8 (or 0..255 float) (batch, H, W, 3) -> float32 normalised images
  ((x / 255 - mean) / std, per channel; ImageNet's statistics in the configs) whose
  padding beyond `valid_size` (batch, 2) is exactly 0; `valid_size` None: all picture."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  normalised = (images.astype(jnp.float32) / 255.0 - mean) / std
  if valid_size is None:
    return normalised
  inside = valid_mask(valid_size, images.shape[1:3])
  return jnp.where(inside[..., None], normalised, 0.0)
