"""The distributed-supervision loss of Eq. 10-12.

    L = sum over heads i in {1, 2, 3, 5} of  L_mse^i + gamma * L_ce^i

* L_mse^i (Eq. 11) = (1/N) sum_j ||D^_i(X_j) - D_i_j||_2^2: the squared error summed
  over the head's pixels and averaged over the N images, computed on densities times
  `density_scale` (the units the heads regress in; 1 = plain densities).
* L_ce^i (Eq. 10): cross-entropy of the foreground/background softmax against the
  foreground target, averaged over images *and pixels* (the usual per-pixel mean; a sum
  over pixels would outweigh the density term by the pixel count). Heads without a
  segmentation branch (`use_dhp` off) contribute only L_mse^i.

Balance of the levels (not in the paper; `config.loss.level_balance`). Targets are
sum-pooled (a stride-s cell holds the people of s x s pixels), so with squared error
summed over cells a level's term grows with the square of its stride: for the same
relative error everywhere, the stride-16 head's term is 16x the stride-4 head's.
* "sum": Eq. 11 as written;
* "area": each level's term divided by (s / 4)^2, i.e. the squared error of densities per
  4x4-pixel area integrated over the picture, so that every level weighs alike. The
  configs' default (`configs/base.py`), chosen on real UCF_CC_50 by
  `benchmarks/real_data_study.py` (figures: docs/real_data_study.md, docs/deviations.md).
`config.loss.level_weights` then multiplies each head's density term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, HEAD_STRIDES

LEVEL_BALANCES = ("sum", "area")


def cfrnet_loss(
    outputs: dict,
    targets: dict,
    gamma: float,
    density_scale: float,
    level_balance: str,
    level_weights: dict | None = None,
) -> tuple[jax.Array, dict]:
  """Total loss and per-head terms.

  Args:
    outputs: the model's output dict (`CFRNet.__call__`).
    targets: `batch_density_targets` output with every stride of `HEAD_STRIDES` the
      model has: 'density'[s] (batch, H_s, W_s) and 'foreground'[s] (batch, H_s, W_s).
    gamma: weight of the cross-entropy terms.
    density_scale: the factor the heads regress densities in.
    level_balance: "sum" or "area" (module docstring); no default, so that every caller
      passes the config's (`config.loss.level_balance`, "area" in `configs/base.py`).
    level_weights: optional {head name: factor} on the density terms (default 1).

  Returns:
    (loss, {'mse/<head>': ..., 'ce/<head>': ...}).
  """
  if level_balance not in LEVEL_BALANCES:
    raise ValueError(f"loss.level_balance must be one of {LEVEL_BALANCES}, got {level_balance!r}.")
  total, terms = 0.0, {}
  for name, head in outputs["heads"].items():
    stride = HEAD_STRIDES[name]
    error = density_scale * (head["density"][..., 0] - targets["density"][stride])
    mse = jnp.mean(jnp.sum(jnp.square(error), axis=(1, 2)))
    if level_balance == "area":
      mse = mse / (stride / DENSITY_STRIDE) ** 2
    terms[f"mse/{name}"] = mse
    total = total + (1.0 if level_weights is None else level_weights[name]) * mse
    if "seg_logits" in head:
      ce = jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(
              head["seg_logits"].astype(jnp.float32), targets["foreground"][stride]
          )
      )
      terms[f"ce/{name}"] = ce
      total = total + gamma * ce
  return total, terms
