"""CFRNet in plain PyTorch (no torchvision), module for module the Flax model.

Built from the same `config.model` as `cfrnet_jax.build_model`, with the same module
names, so that `convert.py` maps every Flax parameter path to the same PyTorch path (only
the leaf names and layouts differ). Tensors are NCHW as PyTorch convolutions expect;
attention works on (batch, tokens, channels) as the Flax model does.

Shared with the Flax model, as framework-free numpy: the CFRM relative-position index
(`cfrm.relative_position_index`, tested by hand in tests/test_cfrm.py), GAM's sine-cosine
position encoding, `pad_multiple` and the head strides. Everything that a framework
computes - convolutions, BatchNorm, LayerNorm, attention, window partition, upsampling,
padding and cropping - is written here again in PyTorch, which is what the twin checks.

Semantics matched on purpose: GELU is the tanh approximation (`jax.nn.gelu`'s default);
BatchNorm eps 1e-5 and momentum 0.1 (Flax 0.9); LayerNorm eps 1e-5; bilinear upsampling
with half-pixel centres (`align_corners=False`, as `jax.image.resize`). One difference
that does not reach outputs: PyTorch updates BatchNorm's running variance with the
unbiased batch variance, Flax with the biased one.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfrnet_jax.models.backbone import VGG16_BLOCK_DEPTHS
from cfrnet_jax.models.cfrm import relative_position_index
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, HEAD_STRIDES, pad_multiple
from cfrnet_jax.models.gam import sincos_position_encoding_2d


class ConvBNReLU(nn.Module):

  def __init__(self, in_channels: int, out_channels: int, use_bias: bool = False):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=use_bias)
    self.norm = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1)

  def forward(self, x):
    return F.relu(self.norm(self.conv(x)))


class Chain(nn.Module):
  """nnx.Sequential's twin: children under `layers`, applied in order."""

  def __init__(self, *layers: nn.Module):
    super().__init__()
    self.layers = nn.ModuleList(layers)

  def forward(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class FeedForward(nn.Module):

  def __init__(self, channels: int, ratio: int):
    super().__init__()
    self.fc1 = nn.Linear(channels, ratio * channels)
    self.fc2 = nn.Linear(ratio * channels, channels)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AttentionBlock(nn.Module):
  """Pre-LN block; queries from `tokens`, keys and values from [tokens, context]."""

  def __init__(self, channels: int, num_heads: int, mlp_ratio: int):
    super().__init__()
    self.num_heads = num_heads
    self.norm1 = nn.LayerNorm(channels, eps=1e-5)
    self.query = nn.Linear(channels, channels)
    self.key_value = nn.Linear(channels, 2 * channels)
    self.proj = nn.Linear(channels, channels)
    self.norm2 = nn.LayerNorm(channels, eps=1e-5)
    self.mlp = FeedForward(channels, mlp_ratio)

  def forward(self, tokens, context=None, bias=None):
    batch, n_query, channels = tokens.shape
    everything = tokens if context is None else torch.cat([tokens, context], 1)
    normed = self.norm1(everything)
    head_dim = channels // self.num_heads
    query = self.query(normed[:, :n_query]).view(batch, n_query, self.num_heads, head_dim)
    key_value = self.key_value(normed).view(batch, -1, 2, self.num_heads, head_dim)
    attended = F.scaled_dot_product_attention(
        query.transpose(1, 2),
        key_value[:, :, 0].transpose(1, 2),
        key_value[:, :, 1].transpose(1, 2),
        attn_mask=bias,
    )
    tokens = tokens + self.proj(attended.transpose(1, 2).reshape(batch, n_query, channels))
    return tokens + self.mlp(self.norm2(tokens))


class VGG16BN(nn.Module):

  def __init__(self, widths):
    super().__init__()
    layers, in_channels = [], 3
    for depth, width in zip(VGG16_BLOCK_DEPTHS, widths):
      for _ in range(depth):
        layers.append(ConvBNReLU(in_channels, width, use_bias=True))
        in_channels = width
    self.layers = nn.ModuleList(layers)

  def forward(self, x):
    taps, k = {}, 0
    for block, depth in enumerate(VGG16_BLOCK_DEPTHS, start=1):
      for _ in range(depth):
        x = self.layers[k](x)
        k += 1
      if block >= 3:
        taps[f"block{block}"] = x
      x = F.max_pool2d(x, 2)
    taps["pool5"] = x
    return taps


class GlobalAttention(nn.Module):

  def __init__(self, channels: int, num_heads: int, depth: int, mlp_ratio: int):
    super().__init__()
    self.blocks = nn.ModuleList(
        [AttentionBlock(channels, num_heads, mlp_ratio) for _ in range(depth)]
    )

  def forward(self, x):
    batch, channels, height, width = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    encoding = sincos_position_encoding_2d(height, width, channels, xp=np)
    tokens = tokens + torch.as_tensor(encoding, dtype=x.dtype, device=x.device)
    for block in self.blocks:
      tokens = block(tokens)
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)


def window_partition(x, window: int):
  """(batch, c, H, W) -> (batch * H/w * W/w, w^2, c), row-major windows."""
  batch, channels, height, width = x.shape
  x = x.view(batch, channels, height // window, window, width // window, window)
  return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, channels)


def window_reverse(tokens, window: int, height: int, width: int):
  """(batch * H/w * W/w, w^2, c) -> (batch, c, H, W)."""
  channels = tokens.shape[-1]
  x = tokens.view(-1, height // window, width // window, window, window, channels)
  return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, height, width)


class CrossLevelRelocation(nn.Module):

  def __init__(self, channels: int, num_heads: int, window: int, mlp_ratio: int):
    super().__init__()
    self.window = window
    self.block = AttentionBlock(channels, num_heads, mlp_ratio)
    self.relative_bias_table = nn.Parameter(
        nn.init.trunc_normal_(torch.empty((2 * window - 1) ** 2, num_heads), std=0.02)
    )
    self._index = {}

  def relocation_bias(self, ratio: int):
    if ratio not in self._index:
      self._index[ratio] = torch.as_tensor(relative_position_index(self.window, ratio))
    index = self._index[ratio].to(self.relative_bias_table.device)
    return self.relative_bias_table[index].permute(2, 0, 1)

  def forward(self, high, low):
    _, _, height, width = high.shape
    ratio = height // low.shape[2]
    tokens = self.block(
        window_partition(high, self.window),
        window_partition(low, self.window // ratio),
        self.relocation_bias(ratio).to(high.dtype),
    )
    return window_reverse(tokens, self.window, height, width)


class FusionStep(nn.Module):

  def __init__(self, fusion: str, channels: int, window: int, num_heads: int, mlp_ratio: int):
    super().__init__()
    self.fusion = fusion
    self.relocate = (
        CrossLevelRelocation(channels, num_heads, window, mlp_ratio) if fusion == "cfrm" else None
    )
    self.conv = ConvBNReLU(2 * channels if fusion == "concat" else channels, channels)

  def forward(self, high, low):
    if self.fusion == "cfrm":
      return self.conv(self.relocate(high, low))
    up = F.interpolate(low, size=high.shape[2:], mode="bilinear", align_corners=False)
    return self.conv(high + up if self.fusion == "add" else torch.cat([high, up], 1))


class HierarchicalDecoder(nn.Module):

  def __init__(self, fusion, channels, window, num_heads, mlp_ratio):
    super().__init__()
    self.steps = nn.ModuleList(
        [FusionStep(fusion, channels, window, num_heads, mlp_ratio) for _ in range(3)]
    )

  def forward(self, levels):
    decoded = [levels[3]]
    for step, level in zip(self.steps, reversed(levels[:3])):
      decoded.insert(0, step(level, decoded[0]))
    return decoded


class AxialDecoder(nn.Module):

  def __init__(self, fusion, channels, windows, num_heads, mlp_ratio):
    super().__init__()
    self.steps = nn.ModuleList(
        [FusionStep(fusion, channels, window, num_heads, mlp_ratio) for window in windows]
    )

  def forward(self, levels):
    fused = levels[0]
    for step, level in zip(self.steps, (levels[3], levels[2], levels[1])):
      fused = step(fused, level)
    return fused


class DensityHead(nn.Module):

  def __init__(self, channels, head_channels, hidden_channels, use_dhp, density_scale):
    super().__init__()
    self.density_scale = density_scale
    self.density_branch = Chain(
        ConvBNReLU(channels, head_channels),
        ConvBNReLU(head_channels, hidden_channels),
        nn.Conv2d(hidden_channels, 1, 1),
    )
    self.segmentation_branch = (
        Chain(ConvBNReLU(channels, head_channels), nn.Conv2d(head_channels, 2, 1))
        if use_dhp
        else None
    )

  def forward(self, x):
    density = self.density_branch(x) / self.density_scale
    if self.segmentation_branch is None:
      return {"density": density}
    seg_logits = self.segmentation_branch(x)
    return {"density": density * torch.softmax(seg_logits, 1)[:, 1:], "seg_logits": seg_logits}


class CFRNet(nn.Module):
  """(batch, 3, H, W) normalised images -> the Flax model's outputs, in NCHW:
  {'density': (batch, 1, ceil(H/4), ceil(W/4)), 'heads': {name: {...}}}."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__()
    channels, widths = config.channels, tuple(config.vgg_widths)
    self.pad_multiple = pad_multiple(config)
    self.backbone = VGG16BN(widths)
    self.gam = (
        GlobalAttention(widths[-1], config.gam_heads, config.gam_depth, config.mlp_ratio)
        if config.use_gam
        else None
    )
    self.compressors = nn.ModuleList(
        [
            ConvBNReLU(in_channels, channels)
            for in_channels in (widths[2], widths[3], widths[4], widths[4])
        ]
    )
    args = (config.fusion, channels)
    self.hierarchical_decoder = (
        HierarchicalDecoder(*args, config.hierarchical_window, config.num_heads, config.mlp_ratio)
        if config.hierarchical
        else None
    )
    self.axial_decoder = (
        AxialDecoder(*args, tuple(config.axial_windows), config.num_heads, config.mlp_ratio)
        if config.axial
        else None
    )
    head_names = ("f1", "f2", "f3", "f5") if config.axial else ("f1", "f2", "f3")
    self.final_head = "f5" if config.axial else "f1"
    self.heads = nn.ModuleDict(
        {
            name: DensityHead(
                channels,
                config.head_channels,
                config.head_hidden_channels,
                config.use_dhp,
                config.density_scale,
            )
            for name in head_names
        }
    )

  def forward(self, images):
    _, _, height, width = images.shape
    images = F.pad(images, (0, -width % self.pad_multiple, 0, -height % self.pad_multiple))
    taps = self.backbone(images)
    top = taps["pool5"] if self.gam is None else self.gam(taps["pool5"])
    levels = [
        compress(x)
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
      rows, cols = math.ceil(height / stride), math.ceil(width / stride)
      heads[name] = {key: value[:, :, :rows, :cols] for key, value in head(features[name]).items()}
    return {"density": heads[self.final_head]["density"], "heads": heads}


def cfrnet_loss(
    outputs: dict, targets: dict, gamma: float, density_scale: float, level_balance: str
):
  """`cfrnet_jax.training.losses.cfrnet_loss` in PyTorch (without `level_weights`); targets
  as torch tensors keyed by stride: 'density'[s] (batch, H_s, W_s) float, 'foreground'[s]
  (batch, H_s, W_s) int."""
  total = 0.0
  for name, head in outputs["heads"].items():
    stride = HEAD_STRIDES[name]
    error = density_scale * (head["density"][:, 0] - targets["density"][stride])
    mse = error.square().sum((1, 2)).mean()
    total = total + (mse / (stride / DENSITY_STRIDE) ** 2 if level_balance == "area" else mse)
    if "seg_logits" in head:
      total = total + gamma * F.cross_entropy(
          head["seg_logits"].float(), targets["foreground"][stride].long()
      )
  return total
