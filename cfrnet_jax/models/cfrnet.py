"""CFRNet: the whole network of the paper (Fig. 2), and `build_model`.

    image -> VGG16-BN -> block3, block4, block5, pool5 -[GAM]-> four "256 Conv"
          -> F^1..F^4 -> hierarchical decoder (Eq. 8) -> F1..F4
          -> axial decoder (Eq. 9) -> F5 -> DHP heads on F1, F2, F3 and F5.

Level i has stride 2^(1+i): F1 stride 4, F2 8, F3 16, F4 32; F5 is at F1's stride and
its head is the final prediction: the count is the sum of its density map.

Ablation switches (Tables 1-3) come from the model config: `fusion`, `use_gam`,
`use_dhp`, `hierarchical`, `axial`. Without the hierarchical decoder F_i = F^_i; without
the axial decoder there is no F5 and the F1 head gives the final density (so that no two
heads read the same features).

Any input size: the windows need the input side to be a multiple of `pad_multiple`
(128 for the paper's windows). The image is padded with zeros at the bottom and right,
which after ImageNet normalisation is the mean colour, and every output is cropped back to
ceil(size / stride). The density of padded pixels therefore never reaches the count.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cfrnet_jax.models.attention import ATTENTION_IMPLEMENTATIONS
from cfrnet_jax.models.backbone import VGG16BN
from cfrnet_jax.models.decoders import AxialDecoder, HierarchicalDecoder
from cfrnet_jax.models.gam import GlobalAttention
from cfrnet_jax.models.heads import DensityHead
from cfrnet_jax.models.layers import ConvBNReLU, call, check_remat, maybe_remat

# Stride of each supervised head's output (section 3.5); F4 has no head.
HEAD_STRIDES = {"f1": 4, "f2": 8, "f3": 16, "f5": 4}
LEVEL_STRIDES = (4, 8, 16, 32)  # F1..F4
# Stride of the final density map (F5's head, or F1's without the axial decoder): one
# cell per 4x4 pixels.
DENSITY_STRIDE = 4


def pad_multiple(config: ml_collections.ConfigDict) -> int:
  """Smallest input-side multiple that every CFRM window and the stride 32 divide."""
  multiple = LEVEL_STRIDES[-1]
  if config.fusion == "cfrm":
    if config.hierarchical:
      # The hierarchical steps relocate into F3, F2 and F1.
      for stride in LEVEL_STRIDES[:3]:
        multiple = math.lcm(multiple, config.hierarchical_window * stride)
    if config.axial:
      for window in config.axial_windows:
        multiple = math.lcm(multiple, window * LEVEL_STRIDES[0])
  return multiple


def padded_side(length, multiple: int):
  """The smallest multiple of `multiple` not below `length` (an int, or a symbolic
  dimension of `jax.export`, for which only floor division is defined)."""
  return multiple * ((length + multiple - 1) // multiple)


class CFRNet(nnx.Module):
  """(batch, H, W, 3) normalised images -> density maps of every supervised head.

  Returns a dict with
    'density': (batch, ceil(H/4), ceil(W/4), 1), the final prediction, people per cell;
    'heads':   {name: {'density': (batch, ceil(H/s), ceil(W/s), 1)
                      [, 'seg_logits': (batch, ceil(H/s), ceil(W/s), 2)]}}
               for the names of `HEAD_STRIDES` that the configuration has.
  Call `model.train()` / `model.eval()` to switch BatchNorm between batch and running
  statistics.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    channels, widths = config.channels, tuple(config.vgg_widths)
    self.pad_multiple = pad_multiple(config)
    # Memory: "backbone" recomputes the VGG blocks in the backward pass, "all" also GAM,
    # the compressors, every decoder step and the heads (`layers.maybe_remat`).
    remat = check_remat(config.remat)
    self.remat_all = remat == "all"
    self.backbone = VGG16BN(widths, remat=remat != "none", rngs=rngs)
    self.gam = (
        GlobalAttention(widths[-1], config.gam_heads, config.gam_depth, config.mlp_ratio, rngs=rngs)
        if config.use_gam
        else None
    )
    # The four "256 Conv" compressors of block3, block4, block5 and GAM(pool5).
    self.compressors = nnx.List(
        [
            ConvBNReLU(in_channels, channels, rngs=rngs)
            for in_channels in (widths[2], widths[3], widths[4], widths[4])
        ]
    )
    decoder_args = dict(
        fusion=config.fusion,
        channels=channels,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        remat=self.remat_all,
        rngs=rngs,
    )
    self.hierarchical_decoder = (
        HierarchicalDecoder(window=config.hierarchical_window, **decoder_args)
        if config.hierarchical
        else None
    )
    self.axial_decoder = (
        AxialDecoder(windows=tuple(config.axial_windows), **decoder_args) if config.axial else None
    )
    head_names = ("f1", "f2", "f3", "f5") if config.axial else ("f1", "f2", "f3")
    self.final_head = "f5" if config.axial else "f1"
    self.heads = nnx.Dict(
        {
            name: DensityHead(
                channels,
                config.head_channels,
                config.head_hidden_channels,
                config.use_dhp,
                config.density_scale,
                density_init=config.density_init,
                foreground_gate=config.foreground_gate,
                rngs=rngs,
            )
            for name in head_names
        }
    )

  def __call__(self, images: jax.Array) -> dict:
    _, height, width, _ = images.shape
    # Written with floor division only, so that the sizes may be symbolic (`export`).
    pad_h = padded_side(height, self.pad_multiple) - height
    pad_w = padded_side(width, self.pad_multiple) - width
    images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))

    taps = self.backbone(images)
    run = maybe_remat(call, self.remat_all)
    top = taps["pool5"] if self.gam is None else run(self.gam, taps["pool5"])
    levels = [
        run(compress, x)
        for compress, x in zip(
            self.compressors, (taps["block3"], taps["block4"], taps["block5"], top)
        )
    ]
    if self.hierarchical_decoder is not None:
      levels = self.hierarchical_decoder(levels)
    features = {"f1": levels[0], "f2": levels[1], "f3": levels[2]}
    if self.axial_decoder is not None:
      features["f5"] = self.axial_decoder(levels)

    heads = {}
    for name, head in self.heads.items():
      stride = HEAD_STRIDES[name]
      rows, cols = (height + stride - 1) // stride, (width + stride - 1) // stride
      heads[name] = {
          key: value[:, :rows, :cols] for key, value in run(head, features[name]).items()
      }
    return {"density": heads[self.final_head]["density"], "heads": heads}


class InitKeys:
  """The keys `nnx.Rngs(seed)` gives a model's initialisers, `fold_in(key(seed), n)` for
  n = 0, 1, 2, ... from `rngs.params()` or `rngs.default()` (both fall back to the one
  `default` stream of `nnx.Rngs(seed)`), so the parameters are those of `nnx.Rngs(seed)`,
  bit for bit (tests/test_model.py). Only initialisers: a module that keeps a stream
  (dropout) or forks one would need `nnx.Rngs`, and asking for another stream fails.

  Why not `nnx.Rngs` itself: its streams count in a Variable, and under a trace (the
  jitted and abstract initialisations of training, evaluation and predict) every count
  update makes Flax ask the new count's tracer for its sharding, an error whose message
  JAX builds by walking the whole trace so far, so the cost grows with the square of the
  number of initialisers (docs/performance.md). A Python count costs nothing."""

  def __init__(self, seed: int):
    self._key = jax.random.key(seed)
    self._count = 0

  def __call__(self) -> jax.Array:
    key = jax.random.fold_in(self._key, jnp.uint32(self._count))
    self._count += 1
    return key

  def __getattr__(self, stream: str):
    if stream not in ("params", "default"):
      raise AttributeError(f"InitKeys gives initialisers' keys only, not a {stream!r} stream.")
    return self


def build_model(model_config: ml_collections.ConfigDict, seed: int = 0) -> CFRNet:
  """The public entry: a freshly initialised CFRNet for `model_config` (see
  `configs/base.py`, `get_model_config`), in training mode.

  `model_config.dtype` is the compute dtype of every layer; parameters and BatchNorm
  statistics stay float32 (bfloat16 mixed precision). `model_config.attention` picks the
  attention kernel of GAM and every CFRM (`attention.py`).
  """
  if model_config.attention not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
        f"model.attention must be one of {tuple(ATTENTION_IMPLEMENTATIONS)}, "
        f"got {model_config.attention!r}."
    )
  if model_config.attention == "cudnn" and model_config.dtype not in ("bfloat16", "float16"):
    raise ValueError(
        f"model.attention = 'cudnn' needs model.dtype bfloat16 or float16 (cuDNN's fused "
        f"attention has no float32 kernel); got {model_config.dtype!r}."
    )
  model = CFRNet(model_config, rngs=InitKeys(seed))
  model.set_attributes(attention=model_config.attention, raise_if_not_found=False)
  if model_config.dtype != "float32":
    model.set_attributes(dtype=jnp.dtype(model_config.dtype), raise_if_not_found=False)
  return model
