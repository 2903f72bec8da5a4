"""ImageNet VGG16-BN weights for the backbone, ported from torchvision (or timm).

    python -m cfrnet_jax.models.pretrained --source torchvision --out vgg16_bn.msgpack
    python -m cfrnet_jax.models.pretrained --source ~/Downloads/vgg16_bn-6c64b313.pth \
        --out vgg16_bn.msgpack
    python -m cfrnet_jax.models.pretrained --source ~/Downloads/model.safetensors \
        --out vgg16_bn.msgpack

then train with `--config.backbone_weights=vgg16_bn.msgpack`.

Sources: torchvision's `vgg16_bn-6c64b313.pth` (read with PyTorch, which must then be
installed) or the same weights as timm's `vgg16_bn.tv_in1k` `model.safetensors` (read
with `safetensors`, no PyTorch). Both name the layers `features.i.*` as torchvision's
`vgg16_bn().features`; `backbone.TORCHVISION_CONV_INDEX` maps conv `k` to `features.i`
and its BatchNorm to `features.{i+1}`. Conversion: conv weight OIHW -> HWIO kernel, conv
bias; BatchNorm weight/bias -> scale/bias, running_mean/running_var -> mean/var (eps
1e-5 in both frameworks). Classifier tensors (`classifier.*` in torchvision, `pre_logits.*`
and `head.*` in timm) and BatchNorm's `num_batches_tracked` are not needed and are
skipped; anything else, a missing tensor or a wrong shape is refused by name.

The output is a msgpack file of the 78 backbone arrays under flat keys
`params/backbone/layers/<k>/conv/kernel`, ... (`load_backbone` applies it). Nothing is
downloaded at training time: only this command downloads, and only when asked to.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from cfrnet_jax.models.backbone import TORCHVISION_CONV_INDEX, VGG16_BLOCK_DEPTHS, VGG16_WIDTHS

TORCHVISION_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
# torchvision publishes the first 8 hex digits of the file's sha256 in its name.
TORCHVISION_SHA256_PREFIX = "6c64b313"
SKIPPED_PREFIXES = ("classifier.", "pre_logits.", "head.")
DOWNLOAD_TIMEOUT_S = 20


class WeightsError(ValueError):
  """A weights file that does not match VGG16-BN; the message names the tensor."""


def _layer_widths(widths=VGG16_WIDTHS) -> list[tuple[int, int]]:
  """(in, out) channels of the 13 convolutions."""
  pairs, in_channels = [], 3
  for depth, width in zip(VGG16_BLOCK_DEPTHS, widths):
    for _ in range(depth):
      pairs.append((in_channels, width))
      in_channels = width
  return pairs


def expected_tensors(widths=VGG16_WIDTHS) -> dict[str, tuple[int, ...]]:
  """torchvision name -> shape of every tensor the backbone needs."""
  shapes = {}
  for index, (c_in, c_out) in zip(TORCHVISION_CONV_INDEX, _layer_widths(widths)):
    shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
    shapes[f"features.{index}.bias"] = (c_out,)
    for name in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"features.{index + 1}.{name}"] = (c_out,)
  return shapes


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` (no PyTorch needed) or `.pth` file."""
  path = Path(path)
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))
  if path.suffix in (".pth", ".pt", ".bin"):
    try:
      import torch
    except ImportError:
      raise RuntimeError(
          f"Reading {path} needs PyTorch, which is not installed: `pip install torch` "
          f"(CPU is enough), or convert timm's vgg16_bn.tv_in1k model.safetensors, "
          f"which needs no PyTorch."
      ) from None
    state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    return {name: tensor.detach().cpu().numpy() for name, tensor in state_dict.items()}
  raise WeightsError(f"{path}: expected a .pth or .safetensors file.")


def convert(tensors: dict[str, np.ndarray], widths=VGG16_WIDTHS) -> dict[str, np.ndarray]:
  """torchvision-named tensors -> flat backbone arrays; refuses any mismatch by name."""
  expected = expected_tensors(widths)
  missing = sorted(set(expected) - set(tensors))
  if missing:
    raise WeightsError(
        f"Missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        f" ({len(missing)} of {len(expected)} expected)."
    )
  extra = sorted(
      name
      for name in tensors
      if name not in expected
      and not name.startswith(SKIPPED_PREFIXES)
      and not name.endswith(".num_batches_tracked")
  )
  if extra:
    raise WeightsError(f"Unexpected tensor(s) {extra[:5]}: not part of VGG16-BN's features.")
  for name, shape in expected.items():
    if tuple(tensors[name].shape) != shape:
      raise WeightsError(f"Tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}.")
  flat = {}
  for k, index in enumerate(TORCHVISION_CONV_INDEX):
    conv, norm = f"features.{index}", f"features.{index + 1}"
    prefix = f"backbone/layers/{k}"
    as_float = lambda name: np.asarray(tensors[name], np.float32)
    flat[f"params/{prefix}/conv/kernel"] = as_float(f"{conv}.weight").transpose(2, 3, 1, 0)
    flat[f"params/{prefix}/conv/bias"] = as_float(f"{conv}.bias")
    flat[f"params/{prefix}/norm/scale"] = as_float(f"{norm}.weight")
    flat[f"params/{prefix}/norm/bias"] = as_float(f"{norm}.bias")
    flat[f"batch_stats/{prefix}/norm/mean"] = as_float(f"{norm}.running_mean")
    flat[f"batch_stats/{prefix}/norm/var"] = as_float(f"{norm}.running_var")
  return flat


def save(flat: dict[str, np.ndarray], out: str | Path) -> None:
  Path(out).write_bytes(serialization.msgpack_serialize(flat))


def load_backbone(params: dict, batch_stats: dict, path: str | Path) -> tuple[dict, dict, int]:
  """Puts the converted arrays of `path` into the model's `params` / `batch_stats`
  (pure dicts), each with the sharding of the array it replaces; every other array is
  returned untouched. Returns the new trees and the number of arrays loaded; refuses a
  file whose arrays do not fit the model, by name."""
  flat = serialization.msgpack_restore(Path(path).read_bytes())
  expected = len(TORCHVISION_CONV_INDEX) * 6
  if len(flat) != expected:
    raise WeightsError(
        f"{path}: {len(flat)} arrays, expected {expected} (13 conv + 13 "
        f"BatchNorm layers); was it written by cfrnet_jax.models.pretrained?"
    )
  loaded = set()

  def replace(collection: str, key_path, current):
    name = "/".join([collection] + [str(getattr(k, "key", k)) for k in key_path])
    if name not in flat:
      return current
    value = np.asarray(flat[name])
    if value.shape != tuple(current.shape):
      raise WeightsError(
          f"{path}: {name} has shape {value.shape}, the model's is "
          f"{tuple(current.shape)} (model.vgg_widths must be VGG16's)."
      )
    loaded.add(name)
    return jax.device_put(value.astype(current.dtype), current.sharding)

  params = jax.tree_util.tree_map_with_path(lambda p, x: replace("params", p, x), params)
  batch_stats = jax.tree_util.tree_map_with_path(
      lambda p, x: replace("batch_stats", p, x), batch_stats
  )
  if set(flat) - loaded:
    raise WeightsError(f"{path}: the model has no {sorted(set(flat) - loaded)[:3]}.")
  return params, batch_stats, len(loaded)


def download(url: str, cache_dir: Path) -> Path:
  """Fetches `url` into `cache_dir` (once), checking torchvision's sha256 prefix."""
  target = cache_dir / url.rsplit("/", 1)[-1]
  if not target.exists():
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {url} ...")
    try:
      with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        data = response.read()
    except (urllib.error.URLError, OSError) as error:
      raise ConnectionError(
          f"Cannot download {url} ({error}). Fetch it on a machine with network access "
          f"and pass the file: --source /path/to/{target.name} (or timm's "
          f"vgg16_bn.tv_in1k model.safetensors)."
      ) from error
    digest = hashlib.sha256(data).hexdigest()
    if url == TORCHVISION_URL and not digest.startswith(TORCHVISION_SHA256_PREFIX):
      raise WeightsError(
          f"{url}: sha256 {digest} does not start with "
          f"{TORCHVISION_SHA256_PREFIX}; the download is corrupt."
      )
    target.write_bytes(data)
  return target


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Convert ImageNet VGG16-BN weights "
      "(torchvision .pth or timm .safetensors) for CFRNet."
  )
  parser.add_argument(
      "--source",
      required=True,
      help=f"a local .pth/.safetensors file, a URL, or 'torchvision' ({TORCHVISION_URL})",
  )
  parser.add_argument("--out", required=True, help="output .msgpack file")
  parser.add_argument("--cache_dir", default=str(Path.home() / ".cache" / "cfrnet_jax"))
  args = parser.parse_args(argv)
  source = TORCHVISION_URL if args.source == "torchvision" else args.source
  if source.startswith(("http://", "https://")):
    source = download(source, Path(args.cache_dir))
  flat = convert(read_tensors(source))
  save(flat, args.out)
  print(
      f"Converted {source}: 13 conv + 13 BatchNorm layers ({len(flat)} arrays) -> "
      f"{args.out}. Train with --config.backbone_weights={args.out}"
  )


if __name__ == "__main__":
  sys.exit(main())
