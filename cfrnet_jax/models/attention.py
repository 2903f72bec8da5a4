"""Pre-LayerNorm attention block shared by GAM and CFRM.

Both of the paper's attention modules are one Swin/ViT-style block:
LN -> multi-head attention -> output projection -> residual -> LN -> MLP -> residual.
They differ only in which tokens attend to which, and in how positions enter:

* GAM (section 3.1) is global self-attention: every token is a query, key and value;
  positions are added to the tokens beforehand (`gam.py`).
* CFRM (section 3.2, Eq. 1-5) appends the low-resolution window tokens `z_n` to the
  high-resolution ones `z_m`. All concatenated tokens are keys and values, but only the
  `z_m` tokens are queries, which is the paper's slice `[:, 0:w^2, :]` of the attention
  (Eq. 4); positions enter as a relative bias on the attention logits (`cfrm.py`).

So `AttentionBlock` takes the query tokens and optional extra context tokens. The
attention itself is `jax.nn.dot_product_attention`, whose `implementation` is the
config's `model.attention`: "xla" (any backend and dtype) or "cudnn" (NVIDIA GPUs,
bfloat16/float16: cuDNN's fused kernel, which takes CFRM's bias as it is).
Parameters: query c^2, key+value 2c^2, output projection c^2, MLP 2*ratio*c^2, i.e.
12c^2 weights at ratio 4, plus biases and the two LayerNorms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfrnet_jax.models.layers import LAYER_NORM_EPSILON, FeedForward

# config.model.attention -> jax.nn.dot_product_attention's `implementation` (None = XLA).
ATTENTION_IMPLEMENTATIONS = {"xla": None, "cudnn": "cudnn"}


class AttentionBlock(nnx.Module):
  """Pre-LN transformer block whose keys and values may include context tokens."""

  def __init__(self, channels: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    if channels % num_heads:
      raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}.")
    self.num_heads = num_heads
    self.attention = "xla"  # set by `build_model` from config.model.attention.
    self.norm1 = nnx.LayerNorm(channels, epsilon=LAYER_NORM_EPSILON, rngs=rngs)
    self.query = nnx.Linear(channels, channels, rngs=rngs)
    self.key_value = nnx.Linear(channels, 2 * channels, rngs=rngs)
    self.proj = nnx.Linear(channels, channels, rngs=rngs)
    self.norm2 = nnx.LayerNorm(channels, epsilon=LAYER_NORM_EPSILON, rngs=rngs)
    self.mlp = FeedForward(channels, mlp_ratio, rngs=rngs)

  def __call__(
      self, tokens: jax.Array, context: jax.Array | None = None, bias: jax.Array | None = None
  ) -> jax.Array:
    """Attends from `tokens` to `[tokens, context]`.

    Args:
      tokens: (batch, n_query, c) tokens that are queries and are updated.
      context: optional (batch, n_context, c) tokens that are only keys and values.
      bias: optional (num_heads, n_query, n_query + n_context) additive logit bias.

    Returns:
      (batch, n_query, c) updated tokens.
    """
    batch, n_query, channels = tokens.shape
    everything = tokens if context is None else jnp.concatenate([tokens, context], 1)
    normed = self.norm1(everything)
    head_dim = channels // self.num_heads
    query = self.query(normed[:, :n_query]).reshape(batch, n_query, self.num_heads, head_dim)
    key, value = jnp.split(
        self.key_value(normed).reshape(batch, -1, 2 * self.num_heads, head_dim), 2, axis=2
    )
    attended = jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=None if bias is None else bias[None].astype(query.dtype),
        implementation=ATTENTION_IMPLEMENTATIONS[self.attention],
    )
    tokens = tokens + self.proj(attended.reshape(batch, n_query, channels))
    return tokens + self.mlp(self.norm2(tokens))
