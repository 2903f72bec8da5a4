"""ImageNet VGG16-BN weights for the backbone, ported from torchvision (or timm).

    python -m cfrnet_jax.models.pretrained --source torchvision --out vgg16_bn.msgpack
    python -m cfrnet_jax.models.pretrained --source ~/Downloads/vgg16_bn-6c64b313.pth \
        --out vgg16_bn.msgpack
    python -m cfrnet_jax.models.pretrained --source ~/Downloads/model.safetensors \
        --out vgg16_bn.msgpack

then train with `--config.backbone_weights=vgg16_bn.msgpack`. Training resolves
`config.backbone_weights` itself (`resolve_backbone_weights`): `imagenet` (the dataset
configs' default) downloads, checks, converts and caches these weights once; a path or
URL of a converted `.msgpack`, a `.pth` or a `.safetensors` file is converted as needed;
`none` (the quick start's) trains the backbone from scratch.

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
`params/backbone/layers/<k>/conv/kernel`, ... (`load_backbone` applies it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jax
import numpy as np
from absl import logging
from flax import serialization

from cfrnet_jax.models.backbone import TORCHVISION_CONV_INDEX, VGG16_BLOCK_DEPTHS, VGG16_WIDTHS

TORCHVISION_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
# The same weights as timm's safetensors on the Hugging Face hub (read without PyTorch).
TIMM_URL = "https://huggingface.co/timm/vgg16_bn.tv_in1k/resolve/main/model.safetensors"
IMAGENET = "imagenet"
# The converted ImageNet weights in the cache folder.
IMAGENET_FILE = "vgg16_bn_imagenet.msgpack"
NO_WEIGHTS = ("", "none")
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


class DownloadError(ConnectionError):
  """Weights that could not be fetched; the message names the URL and the ways out."""


def default_cache_dir() -> Path:
  """`$CFRNET_JAX_CACHE`, else ~/.cache/cfrnet_jax."""
  return Path(os.environ.get("CFRNET_JAX_CACHE", Path.home() / ".cache" / "cfrnet_jax"))


def _expected_sha256(url: str, headers) -> tuple[str, str] | None:
  """(how the file's sha256 is known, the digest or its prefix) for `url`: torchvision's
  name carries its first 8 hex digits (`vgg16_bn-6c64b313.pth`); the Hugging Face hub
  reports a stored file's sha256 as its X-Linked-ETag (large files) or ETag. None when
  nothing says what the file should be."""
  name = url.rsplit("/", 1)[-1]
  match = re.search(r"-([0-9a-f]{8,64})\.pth$", name)
  if match:
    return "the hash in its name", match.group(1)
  for header in ("X-Linked-ETag", "ETag"):
    value = (headers.get(header) or "").strip('W/"')
    if re.fullmatch(r"[0-9a-f]{64}", value):
      return f"its {header} header", value
  return None


def download(url: str, cache_dir: Path, ways_out: str = "") -> Path:
  """Fetches `url` into `cache_dir` (once) and checks its sha256 against what the name or
  the server says (`_expected_sha256`); a file that does not match is not kept."""
  target = cache_dir / url.rsplit("/", 1)[-1]
  if target.exists():
    return target
  cache_dir.mkdir(parents=True, exist_ok=True)
  logging.info("Downloading %s ...", url)
  try:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
      data, headers = response.read(), response.headers
  except (urllib.error.URLError, OSError) as error:
    raise DownloadError(
        f"Cannot download {url} ({getattr(error, 'reason', error)}). "
        + (ways_out or "Fetch it where there is network access and pass the file instead.")
    ) from error
  digest = hashlib.sha256(data).hexdigest()
  expected = _expected_sha256(url, headers)
  if expected is None:
    logging.warning("%s: nothing says what its sha256 should be; it is %s.", url, digest)
  elif not digest.startswith(expected[1]):
    raise WeightsError(
        f"{url}: the download's sha256 is {digest}, but {expected[0]} says {expected[1]}: "
        f"the download is corrupt or not the expected file; nothing was kept."
    )
  partial = target.with_name(target.name + ".partial")
  partial.write_bytes(data)
  partial.replace(target)
  return target


def _torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def resolve_backbone_weights(
    spec: str, widths=VGG16_WIDTHS, cache_dir: Path | None = None
) -> Path | None:
  """The converted (.msgpack) file that `config.backbone_weights = spec` means, or None
  for a backbone trained from scratch ("" or "none"):

    imagenet     the cached converted ImageNet weights, made once from torchvision's
                 file (when PyTorch is installed) or timm's safetensors (otherwise);
    URL          downloaded into the cache and converted there;
    path         a converted .msgpack as it is, a .pth / .safetensors converted into the
                 cache.

  Raises DownloadError (no network, a server error) naming the URL and the ways out,
  WeightsError for a missing file or one that is not VGG16-BN.
  Runs before anything is compiled, so that a run without weights fails in seconds."""
  spec = str(spec).strip()
  if spec.lower() in NO_WEIGHTS:
    return None
  cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
  if spec.lower() == IMAGENET:
    cached = cache_dir / IMAGENET_FILE
    if cached.exists():
      logging.info("ImageNet VGG16-BN weights: %s (cached).", cached)
      return cached
    url = TORCHVISION_URL if _torch_available() else TIMM_URL
    ways_out = (
        f"Download it where there is network access and pass it with "
        f"--config.backbone_weights=/path/to/{url.rsplit('/', 1)[-1]} (or a file converted by "
        f"`python -m cfrnet_jax.models.pretrained`), or train the backbone from scratch "
        f"with --config.backbone_weights=none (the paper starts from ImageNet)."
    )
    _convert_into(download(url, cache_dir, ways_out), cached, widths)
    logging.info("ImageNet VGG16-BN weights from %s converted into %s.", url, cached)
    return cached
  if spec.startswith(("http://", "https://")):
    ways_out = (
        "Download it where there is network access and pass the file with "
        "--config.backbone_weights=/path/to/file, or use --config.backbone_weights=none."
    )
    source = download(spec, cache_dir / "downloads", ways_out)
  else:
    source = Path(spec).expanduser()
    if not source.is_file():
      raise WeightsError(
          f"backbone_weights: {source} is not a file (give a converted .msgpack, a .pth or "
          f".safetensors file, a URL, 'imagenet' or 'none')."
      )
  if source.suffix == ".msgpack":
    return source
  converted = (
      cache_dir
      / "converted"
      / (hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16] + ".msgpack")
  )
  if not converted.exists() or converted.stat().st_mtime < source.stat().st_mtime:
    _convert_into(source, converted, widths)
  logging.info("Backbone weights: %s, converted into %s.", source, converted)
  return converted


def _convert_into(source: Path, target: Path, widths) -> None:
  try:
    flat = convert(read_tensors(source), widths)
  except WeightsError as error:
    raise WeightsError(f"{source}: {error}") from error
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(target.name + ".partial")
  save(flat, partial)
  partial.replace(target)


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
  parser.add_argument("--cache_dir", default=str(default_cache_dir()))
  args = parser.parse_args(argv)
  source = TORCHVISION_URL if args.source == "torchvision" else args.source
  if source.startswith(("http://", "https://")):
    name = source.rsplit("/", 1)[-1]
    source = download(
        source,
        Path(args.cache_dir) / "downloads",
        f"Fetch it where there is network access and pass the file: --source /path/to/{name} "
        f"(or timm's vgg16_bn.tv_in1k model.safetensors).",
    )
  flat = convert(read_tensors(source))
  save(flat, args.out)
  print(
      f"Converted {source}: 13 conv + 13 BatchNorm layers ({len(flat)} arrays) -> "
      f"{args.out}. Train with --config.backbone_weights={args.out}"
  )


if __name__ == "__main__":
  sys.exit(main())
