"""One fusion step of a decoder: F = Conv(fuse(F_high, F_low)) (Eq. 8 and 9).

`fuse` is the paper's CFRM, or one of the two baselines of its Table 1, which upsample
the low-resolution map to the high-resolution one first:

* "add":    F_high + up(F_low), then Conv c -> c;
* "concat": [F_high, up(F_low)] along channels, then Conv 2c -> c;
* "cfrm":   CrossLevelRelocation(F_high, F_low), then Conv c -> c.

The paper does not say how its baselines upsample; we use bilinear interpolation with
half-pixel centres (`jax.image.resize`), the usual choice in FPN-style decoders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfrnet_jax.models.cfrm import CrossLevelRelocation
from cfrnet_jax.models.layers import ConvBNReLU

FUSIONS = ("cfrm", "add", "concat")


def upsample_to(low: jax.Array, high: jax.Array) -> jax.Array:
  """Bilinear upsampling of `low` to the spatial size of `high` (NHWC).

  Antialiasing only changes downsampling, so `antialias=False` gives the same values
  here, and the form that ONNX's Resize has (`export`)."""
  return jax.image.resize(low, high.shape[:3] + low.shape[3:], "bilinear", antialias=False)


class FusionStep(nnx.Module):
  """(batch, H, W, c) x (batch, H/r, W/r, c) -> (batch, H, W, c)."""

  def __init__(
      self,
      fusion: str,
      channels: int,
      window: int,
      num_heads: int,
      mlp_ratio: int,
      *,
      rngs: nnx.Rngs,
  ):
    if fusion not in FUSIONS:
      raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
    self.fusion = fusion
    self.relocate = (
        CrossLevelRelocation(channels, num_heads, window, mlp_ratio, rngs=rngs)
        if fusion == "cfrm"
        else None
    )
    in_channels = 2 * channels if fusion == "concat" else channels
    self.conv = ConvBNReLU(in_channels, channels, rngs=rngs)

  def __call__(self, high: jax.Array, low: jax.Array) -> jax.Array:
    if self.fusion == "cfrm":
      fused = self.relocate(high, low)
    elif self.fusion == "add":
      fused = high + upsample_to(low, high)
    else:
      fused = jnp.concatenate([high, upsample_to(low, high)], axis=-1)
    return self.conv(fused)
