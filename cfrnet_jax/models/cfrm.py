"""CFRM: cross-level feature relocation (paper section 3.2, Eq. 1-7; spec section 2).

CFRM fuses a high-resolution map F_m with a lower-resolution map F_n (scale ratio
r = 2^(n-m)) without interpolating F_n:

1. F_m is split into non-overlapping w x w windows (tokens z_m, w^2 per window); the same
   image region of F_n is a (w/r) x (w/r) window (tokens z_n, w^2/r^2 per window).
2. The tokens [z_m, z_n] go through one pre-LN attention block (`AttentionBlock`) in
   which all of them are keys and values and only z_m are queries (the consistent reading
   of Eq. 3-4, whose slice of V to w^2 tokens cannot multiply the attention matrix).
3. Positions: B_m is Swin's learned relative-position bias table for the w x w window.
   Every low-resolution token is "relocated" into the high-resolution window: the token
   at (a, b) of the small window takes the position (p(a), p(b)) with
   p(a) = floor((a + 1/2) r), the nearest high-resolution cell to the centre of the
   r x r patch it covers (nearest interpolation with half-pixel centres, as
   `jax.image.resize` or torch's `nearest-exact`; the paper says only "nearest
   interpolation"). Its bias entries B_n are read from the same table at those positions.
4. Output projection, windows back to the map, residual with z_m, LN -> MLP -> residual.

The ratio is read from the two maps' shapes, so any power-of-two ratio works with any
window that divides the high-resolution map and is divisible by the ratio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfrnet_jax.models.attention import AttentionBlock


def relocated_positions(window: int, ratio: int) -> np.ndarray:
  """High-resolution coordinate of each of the window/ratio low-resolution rows (or
  columns) of a window: the nearest cell to the centre of the patch it covers."""
  return np.floor((np.arange(window // ratio) + 0.5) * ratio).astype(np.int64)


def key_positions(window: int, ratio: int) -> np.ndarray:
  """(w^2 + (w/r)^2, 2) (row, column) positions in the high-resolution window of the
  concatenated tokens [z_m, z_n], in the order `window_partition` produces them."""
  high = np.arange(window)
  low = relocated_positions(window, ratio)
  grids = [
      np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2) for axis in (high, low)
  ]
  return np.concatenate(grids, axis=0)


def relative_position_index(window: int, ratio: int) -> np.ndarray:
  """(w^2, w^2 + (w/r)^2) index into the ((2w-1)^2, heads) bias table (Swin's scheme):
  query i and key j share the entry of their offset (dy, dx), dy, dx in [-(w-1), w-1]."""
  keys = key_positions(window, ratio)
  queries = keys[: window * window]
  offset = queries[:, None, :] - keys[None, :, :] + (window - 1)
  return offset[..., 0] * (2 * window - 1) + offset[..., 1]


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """(batch, H, W, c) -> (batch * H/window * W/window, window^2, c), row-major windows."""
  batch, height, width, channels = x.shape
  x = x.reshape(batch, height // window, window, width // window, window, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(tokens: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of `window_partition`: -> (batch, height, width, c)."""
  channels = tokens.shape[-1]
  x = tokens.reshape(-1, height // window, width // window, window, window, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def scale_ratio(high_shape: tuple[int, ...], low_shape: tuple[int, ...], window: int) -> int:
  """The ratio r = 2^(n-m) of two NHWC maps, checked against the window."""
  _, height, width, _ = high_shape
  _, low_height, low_width, _ = low_shape
  ratio = height // low_height
  if low_height * ratio != height or low_width * ratio != width or ratio & (ratio - 1) or ratio < 2:
    raise ValueError(
        f"CFRM needs the low-resolution map to be the high-resolution map "
        f"downscaled by a power of two >= 2; got {high_shape} and {low_shape}."
    )
  if window % ratio or height % window or width % window:
    raise ValueError(
        f"CFRM window {window} must divide the high-resolution map "
        f"{height}x{width} and be divisible by the scale ratio {ratio}."
    )
  return ratio


class CrossLevelRelocation(nnx.Module):
  """CFRM(F_m, F_n): (batch, H, W, c) x (batch, H/r, W/r, c) -> (batch, H, W, c)."""

  def __init__(self, channels: int, num_heads: int, window: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.window = window
    self.block = AttentionBlock(channels, num_heads, mlp_ratio, rngs=rngs)
    self.relative_bias_table = nnx.Param(
        nnx.initializers.truncated_normal(0.02)(rngs.params(), ((2 * window - 1) ** 2, num_heads))
    )

  def relocation_bias(self, ratio: int) -> jax.Array:
    """The concatenated bias C[B_m, B_n] of Eq. 4, (heads, w^2, w^2 + (w/r)^2)."""
    index = relative_position_index(self.window, ratio)
    return jnp.moveaxis(self.relative_bias_table[...][index], -1, 0)

  def __call__(self, high: jax.Array, low: jax.Array) -> jax.Array:
    ratio = scale_ratio(high.shape, low.shape, self.window)
    _, height, width, _ = high.shape
    tokens = self.block(
        window_partition(high, self.window),
        window_partition(low, self.window // ratio),
        self.relocation_bias(ratio),
    )
    return window_reverse(tokens, self.window, height, width)
