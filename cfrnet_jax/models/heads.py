"""Density heads: the dual-head predictor (DHP, paper section 3.4; spec section 4).

DHP, following Modolo et al. (WACV 2021):
* segmentation branch: Conv c -> s, 1x1 conv s -> 2 logits (background, foreground);
* density branch: Conv c -> s, Conv s -> d, 1x1 conv d -> 1;
* density = density branch x softmax(segmentation)[foreground].
with s = `head_channels` (256) and d = `head_hidden_channels` (128).
With `use_dhp` off (the "w/o DHP" ablation of Table 2) only the density branch exists.

The density branch's 1x1 conv is linear, as in the paper; `density_init = "zeros"`
starts its kernel at zero (not in the paper; config.model.density_init). Its output is divided by
`density_scale`, so that the network regresses densities multiplied by that constant
(a common trick for the tiny per-pixel values) while `density` stays in people per cell.

`foreground_gate` (not in the paper; config.model.foreground_gate) zeroes, at inference
only, the density of cells whose foreground probability is below it: the soft product
above leaves a little density on every background cell, which adds up over a large
picture. NNX's `eval()` sets `deterministic`, so the gate acts in evaluation (also the
evaluations during training, which rank checkpoints), prediction and export, never in
the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfrnet_jax.models.layers import ConvBNReLU

DENSITY_INITS = {
    "lecun_normal": nnx.initializers.lecun_normal(),
    "zeros": nnx.initializers.zeros_init(),
}


class DensityHead(nnx.Module):
  """(batch, h, w, c) -> {'density': (batch, h, w, 1)[, 'seg_logits': (batch, h, w, 2)]}."""

  def __init__(
      self,
      channels: int,
      head_channels: int,
      hidden_channels: int,
      use_dhp: bool,
      density_scale: float,
      *,
      density_init: str = "lecun_normal",
      foreground_gate: float = 0.0,
      rngs: nnx.Rngs,
  ):
    if density_init not in DENSITY_INITS:
      raise ValueError(
          f"model.density_init must be one of {tuple(DENSITY_INITS)}, got {density_init!r}."
      )
    if not 0.0 <= foreground_gate < 1.0:
      raise ValueError(f"model.foreground_gate must be in [0, 1), got {foreground_gate!r}.")
    if foreground_gate and not use_dhp:
      raise ValueError("model.foreground_gate needs the segmentation branch (use_dhp).")
    self.density_scale = density_scale
    self.foreground_gate = foreground_gate
    self.deterministic = False  # True after `eval()`: inference, where the gate acts
    self.density_branch = nnx.Sequential(
        ConvBNReLU(channels, head_channels, rngs=rngs),
        ConvBNReLU(head_channels, hidden_channels, rngs=rngs),
        nnx.Conv(hidden_channels, 1, (1, 1), kernel_init=DENSITY_INITS[density_init], rngs=rngs),
    )
    self.segmentation_branch = (
        nnx.Sequential(
            ConvBNReLU(channels, head_channels, rngs=rngs),
            nnx.Conv(head_channels, 2, (1, 1), rngs=rngs),
        )
        if use_dhp
        else None
    )

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    density = self.density_branch(x) / self.density_scale
    if self.segmentation_branch is None:
      return {"density": density}
    seg_logits = self.segmentation_branch(x)
    foreground = jax.nn.softmax(seg_logits, axis=-1)[..., 1:]
    density = density * foreground
    if self.deterministic and self.foreground_gate:
      density = jnp.where(foreground >= self.foreground_gate, density, 0.0)
    return {"density": density, "seg_logits": seg_logits}
