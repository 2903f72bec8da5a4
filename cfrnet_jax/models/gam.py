"""GAM: the global attention module on the stride-32 map (spec section 1).

The paper says only that GAM is global multi-head self-attention over the last VGG
stage after its pool. We read it as a stack of pre-LN transformer blocks
(`AttentionBlock`) over all stride-32 tokens, with a fixed 2-D sine-cosine position
encoding added to the tokens first. The encoding is computed from the map's height and
width at trace time, so any input size works without interpolating a learned table.
Depth and head count are config fields (`gam_depth`, `gam_heads`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfrnet_jax.models.attention import AttentionBlock


def sincos_position_encoding_2d(height: int, width: int, channels: int, xp=jnp):
  """(height*width, channels) float32 encoding: a quarter of the channels each for sin(y),
  cos(y), sin(x), cos(x) at geometrically spaced frequencies (as in MAE / ViT).

  `xp` is jax.numpy (the model: `height` and `width` may then be symbolic, for `export`)
  or numpy (the PyTorch twin, whose compiler traces numpy but not JAX)."""
  if channels % 4:
    raise ValueError(f"2-D sine-cosine encoding needs channels divisible by 4, got {channels}.")
  quarter = channels // 4
  frequencies = xp.asarray(1.0 / 10000.0 ** (np.arange(quarter) / quarter), xp.float32)
  y, x = xp.meshgrid(
      xp.arange(height, dtype=xp.float32), xp.arange(width, dtype=xp.float32), indexing="ij"
  )
  y_angles = y.reshape(-1, 1) * frequencies
  x_angles = x.reshape(-1, 1) * frequencies
  return xp.concatenate(
      [xp.sin(y_angles), xp.cos(y_angles), xp.sin(x_angles), xp.cos(x_angles)], axis=1
  )


class GlobalAttention(nnx.Module):
  """(batch, h, w, c) -> (batch, h, w, c) global self-attention over all h*w tokens."""

  def __init__(self, channels: int, num_heads: int, depth: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.blocks = nnx.List(
        [AttentionBlock(channels, num_heads, mlp_ratio, rngs=rngs) for _ in range(depth)]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)
    tokens = tokens + sincos_position_encoding_2d(height, width, channels).astype(x.dtype)
    for block in self.blocks:
      tokens = block(tokens)
    return tokens.reshape(batch, height, width, channels)
