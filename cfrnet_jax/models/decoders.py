"""The hierarchical and axial decoders (paper section 3.3, Eq. 8 and 9).

Hierarchical (top-down, FPN-like), one window size for every step:
    F4 = F^4;  F3 = Conv(CFRM(F^3, F4));  F2 = Conv(CFRM(F^2, F3));  F1 = Conv(CFRM(F^1, F2))
Axial (every level relocated straight into F1's resolution), windows (16, 8, 8):
    F5 = Conv(CFRM(F1, F4));  F5 = Conv(CFRM(F5, F3));  F5 = Conv(CFRM(F5, F2))
`fusion` swaps CFRM for the add/concat baselines of Table 1 (`fusion.py`). With `remat`
every fusion step is recomputed in the backward pass (`layers.maybe_remat`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from cfrnet_jax.models.fusion import FusionStep
from cfrnet_jax.models.layers import call, maybe_remat


class HierarchicalDecoder(nnx.Module):
  """[F^1, F^2, F^3, F^4] (strides 4..32, c channels) -> [F1, F2, F3, F4] (Eq. 8)."""

  def __init__(
      self,
      fusion: str,
      channels: int,
      window: int,
      num_heads: int,
      mlp_ratio: int,
      *,
      remat: bool = False,
      rngs: nnx.Rngs,
  ):
    self.remat = remat
    # steps[0] makes F3, steps[1] F2, steps[2] F1.
    self.steps = nnx.List(
        [FusionStep(fusion, channels, window, num_heads, mlp_ratio, rngs=rngs) for _ in range(3)]
    )

  def __call__(self, levels: Sequence[jax.Array]) -> list[jax.Array]:
    decoded = [levels[3]]
    run_step = maybe_remat(call, self.remat)
    for step, level in zip(self.steps, reversed(levels[:3])):
      decoded.insert(0, run_step(step, level, decoded[0]))
    return decoded


class AxialDecoder(nnx.Module):
  """[F1, F2, F3, F4] -> F5 at F1's resolution (Eq. 9): relocates F4, F3, F2 in turn."""

  def __init__(
      self,
      fusion: str,
      channels: int,
      windows: Sequence[int],
      num_heads: int,
      mlp_ratio: int,
      *,
      remat: bool = False,
      rngs: nnx.Rngs,
  ):
    self.remat = remat
    if len(windows) != 3:
      raise ValueError(f"The axial decoder has 3 steps (F4, F3, F2); got windows {tuple(windows)}.")
    self.steps = nnx.List(
        [
            FusionStep(fusion, channels, window, num_heads, mlp_ratio, rngs=rngs)
            for window in windows
        ]
    )

  def __call__(self, levels: Sequence[jax.Array]) -> jax.Array:
    fused = levels[0]
    run_step = maybe_remat(call, self.remat)
    for step, level in zip(self.steps, (levels[3], levels[2], levels[1])):
      fused = run_step(step, fused, level)
    return fused
