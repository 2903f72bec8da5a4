"""Building blocks shared by every part of CFRNet.

The paper writes "Conv" for a 3x3 convolution followed by BatchNorm and ReLU (spec
notation section); `ConvBNReLU` is that unit, used by the VGG16-BN backbone, the four
"256 Conv" compressors, the decoders' fusion convolutions and the dual-head predictor.

`maybe_remat` is the model's one memory switch (`config.model.remat`): a part called
through it keeps only its inputs for the backward pass and recomputes its activations
there (`nnx.remat`, i.e. `jax.checkpoint`), trading about one more forward pass of that
part for its activation memory. Values and gradients are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from cfrnet_jax.models.conv import conv_general_dilated

# torchvision's BatchNorm2d uses momentum 0.1 for the *new* batch; Flax's momentum is the
# weight of the *old* running value, so 0.9 reproduces torchvision's running statistics.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5  # torchvision's default, needed for an exact weight port.
LAYER_NORM_EPSILON = 1e-5
# config.model.remat: what is recomputed in the backward pass instead of stored.
REMAT_CHOICES = ("none", "backbone", "all")


def check_remat(remat: str) -> str:
  if remat not in REMAT_CHOICES:
    raise ValueError(f"model.remat must be one of {REMAT_CHOICES}, got {remat!r}.")
  return remat


def maybe_remat(function: Callable, enabled: bool) -> Callable:
  """`function` (whose arguments may be modules), rematerialised when `enabled`."""
  return nnx.remat(function) if enabled else function


def call(module: Callable, *args):
  """`module(*args)`: the function to hand `maybe_remat` for one module."""
  return module(*args)


def apply_in_turn(layers: Sequence[Callable], x: jax.Array) -> jax.Array:
  """x -> layers[-1](...layers[0](x)): a VGG block, say, rematerialised as one unit."""
  for layer in layers:
    x = layer(x)
  return x


class ConvBNReLU(nnx.Module):
  """3x3 convolution + BatchNorm + ReLU: the paper's "Conv".

  Maps (batch, height, width, in_channels) to (batch, height, width, out_channels).
  The convolution's kernel gradient is computed CPU-friendly on CPU (`conv.py`).
  `use_bias` exists for the backbone, whose torchvision weights carry a conv bias; every
  other Conv feeds BatchNorm directly, where a bias would be redundant.
  """

  def __init__(
      self, in_channels: int, out_channels: int, *, use_bias: bool = False, rngs: nnx.Rngs
  ):
    self.conv = nnx.Conv(
        in_channels,
        out_channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )
    self.norm = nnx.BatchNorm(
        out_channels, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x)))


class FeedForward(nnx.Module):
  """Transformer MLP: Linear(c -> ratio*c), GELU, Linear(ratio*c -> c).

  With ratio 4 it holds the 8c^2 weights that the paper's parameter count of CFRM
  (12c^2, section 3.2) attributes to the MLP.
  """

  def __init__(self, channels: int, ratio: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(channels, ratio * channels, rngs=rngs)
    self.fc2 = nnx.Linear(ratio * channels, channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x)))
