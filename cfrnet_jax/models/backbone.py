"""VGG16-BN backbone: the 13 conv+BN+ReLU layers of torchvision's `vgg16_bn.features`.

Spec section 1: the taps are the outputs of block 3 (stride 4), block 4 (stride 8) and
block 5 (stride 16), each after its last conv+BN+ReLU and before its pool, plus the
block-5 map after its pool (stride 32), which feeds the GAM.

Parameter layout, for porting torchvision's `vgg16_bn` weights one to one: conv layer `k`
(0-based, in the order of the network) is `layers[k].conv` and its BatchNorm is
`layers[k].norm`. In torchvision's `features` Sequential every conv occupies three slots
(Conv2d, BatchNorm2d, ReLU) and every pool one, so conv `k` is `features.i` and its
BatchNorm `features.{i+1}` with

    k : 0  1  2  3  4   5   6   7   8   9   10  11  12
    i : 0  3  7  10 14  17  20  24  27  30  34  37  40

(`TORCHVISION_CONV_INDEX`). Conv kernels port OIHW -> HWIO; BatchNorm weight/bias are
`norm.scale`/`norm.bias` and running_mean/running_var are `norm.mean`/`norm.var`.
"""

from __future__ import annotations

import jax
from flax import nnx

from cfrnet_jax.models.layers import ConvBNReLU, apply_in_turn, maybe_remat

# Convolutions per VGG16 block; a 2x2 max pool follows each block.
VGG16_BLOCK_DEPTHS = (2, 2, 3, 3, 3)
# Widths of the five blocks of torchvision's VGG16-BN, the shapes its ImageNet weights have
# (`pretrained`); the model's own widths are `config.model.vgg_widths`.
VGG16_WIDTHS = (64, 128, 256, 512, 512)


def _torchvision_conv_index() -> tuple[int, ...]:
  """Index in torchvision's `features` of each conv, from the block structure."""
  index, position = [], 0
  for depth in VGG16_BLOCK_DEPTHS:
    for _ in range(depth):
      index.append(position)
      position += 3  # Conv2d, BatchNorm2d, ReLU.
    position += 1  # MaxPool2d.
  return tuple(index)


TORCHVISION_CONV_INDEX = _torchvision_conv_index()


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool with stride 2 of an NHWC map with even sides, as a reshape and a max.

  Same values as `nnx.max_pool`; its gradient is a comparison and a select, which XLA's
  CPU backend runs twice as fast as the select-and-scatter of `reduce_window`'s gradient
  (docs/performance.md). Ties share the gradient instead of giving it to one cell; here they
  arise only among ReLU zeros, whose gradient the ReLU stops anyway.
  """
  batch, height, width, channels = x.shape
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class VGG16BN(nnx.Module):
  """VGG16-BN feature extractor, (batch, H, W, 3) -> taps at strides 4, 8, 16 and 32.

  H and W must be multiples of 32 (the model pads its input to ensure this). With
  `remat`, each of the five blocks is recomputed in the backward pass: only the block
  inputs are kept, where the stride-1 and stride-2 blocks' activations are most of the
  training step's memory.
  """

  def __init__(self, widths: tuple[int, ...], *, remat: bool = False, rngs: nnx.Rngs):
    if len(widths) != len(VGG16_BLOCK_DEPTHS):
      raise ValueError(f"VGG16 has 5 blocks; got {len(widths)} widths {widths}.")
    self.widths = tuple(widths)
    self.remat = remat
    layers, in_channels = [], 3
    for depth, width in zip(VGG16_BLOCK_DEPTHS, widths):
      for _ in range(depth):
        layers.append(ConvBNReLU(in_channels, width, use_bias=True, rngs=rngs))
        in_channels = width
    self.layers = nnx.List(layers)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Returns {'block3', 'block4', 'block5', 'pool5'} feature maps (NHWC)."""
    taps, x, k = {}, images, 0
    run_block = maybe_remat(apply_in_turn, self.remat)
    for block, depth in enumerate(VGG16_BLOCK_DEPTHS, start=1):
      x = run_block(self.layers[k : k + depth], x)
      k += depth
      if block >= 3:
        taps[f"block{block}"] = x
      x = max_pool_2x2(x)
    taps["pool5"] = x
    return taps
