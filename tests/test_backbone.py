import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfrnet_jax.models.backbone import TORCHVISION_CONV_INDEX, VGG16_WIDTHS, VGG16BN
from configs.base import get_model_config


def test_torchvision_index_matches_vgg16_bn_features():
  # torchvision's vgg16_bn: cfg D = 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M; each conv
  # entry expands to Conv2d, BatchNorm2d, ReLU and each M to MaxPool2d.
  assert TORCHVISION_CONV_INDEX == (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)


def test_paper_backbone_has_vgg16_bn_shapes_in_torchvision_order():
  widths = tuple(get_model_config().vgg_widths)  # the paper model's config
  assert widths == VGG16_WIDTHS  # = the ImageNet weights' shapes
  backbone = nnx.eval_shape(lambda: VGG16BN(widths, rngs=nnx.Rngs(0)))
  expected_out = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  expected_in = [3] + expected_out[:-1]
  assert len(backbone.layers) == 13
  for layer, c_in, c_out in zip(backbone.layers, expected_in, expected_out):
    assert layer.conv.kernel.shape == (3, 3, c_in, c_out)
    assert layer.conv.bias.shape == (c_out,)
    assert layer.norm.mean.shape == (c_out,)
  assert VGG16_WIDTHS == (64, 128, 256, 512, 512)


def test_taps_have_the_right_strides_and_widths():
  backbone = VGG16BN((4, 4, 8, 16, 16), rngs=nnx.Rngs(0))
  taps = backbone(jnp.ones((2, 64, 96, 3)))
  assert taps["block3"].shape == (2, 16, 24, 8)
  assert taps["block4"].shape == (2, 8, 12, 16)
  assert taps["block5"].shape == (2, 4, 6, 16)
  assert taps["pool5"].shape == (2, 2, 3, 16)
  # The block-5 tap is taken before the pool: pooling it gives pool5.
  pooled = jax.lax.reduce_window(
      taps["block5"], -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
  )
  np.testing.assert_array_equal(pooled, taps["pool5"])
