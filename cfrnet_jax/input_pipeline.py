"""Input pipeline: grain over `tfds.data_source`, no TensorFlow.

Why grain + `tfds.data_source`: the builders store `array_record`, which grain reads by
index, so shuffling (per epoch, from `config.seed`), sharding across hosts and resuming
are exact: the sampler's position is a small state that `get_state()` returns and
`set_state()` restores, and every random augmentation draws from a generator that grain
derives from the seed and the record's position, not from worker timing.

What runs where (measured in `benchmarks/input_pipeline.py`, see README):
* host (grain workers, numpy + Pillow): decode the JPEG, resize to `data.max_side`,
  take one random `crop_size` crop (padded with the mean colour when the image is
  smaller), flip with `flip_prob`, grayscale with `grayscale_prob`, and ship the crop as
  uint8 with its head points padded to `data.max_points`, a validity mask and the size of
  the image part of the crop (`valid_size`);
* accelerator, inside the jitted step: `normalize_images` (ImageNet mean/std, padding
  set to exactly 0 as the model's own padding) and `cfrnet_jax.targets` (density and
  foreground targets of all heads from the padded points). uint8 crops are 4x smaller to
  transfer than float32, and rendering targets costs the host nothing.
"""

from __future__ import annotations

import io
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

import tfds_crowd  # noqa: F401  (registers the builders with TFDS)
from tfds_crowd.ucf_cc_50 import fold_splits

# ITU-R BT.601 luma, the usual RGB -> grayscale weights (Pillow's "L" mode uses them).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def mean_colour(data_config: ml_collections.ConfigDict) -> np.ndarray:
  """The uint8 RGB colour that normalises to (about) zero: what padding is filled with."""
  return np.round(255 * np.asarray(data_config.mean)).astype(np.uint8)


def fit_max_side(image: Image.Image, max_side: int) -> Image.Image:
  """`image` resized (bilinear, to RGB) so that its longer side is at most `max_side`;
  unchanged when it already fits or `max_side` is 0."""
  width, height = image.size
  scale = max_side / max(width, height) if max_side else 1.0
  if scale >= 1.0:
    return image
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  image.draft("RGB", size)  # JPEG: decode at a reduced DCT scale when possible.
  return image.convert("RGB").resize(size, Image.BILINEAR)


def decode_image(data: bytes, max_side: int, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Encoded bytes -> (H, W, 3) uint8 RGB, resized so that max(H, W) <= max_side
  (0 = no limit), and the (x, y) factors by which points must be scaled."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      pixels = np.asarray(fit_max_side(image, max_side).convert("RGB"))
  except Exception as error:  # Pillow raises many types for bad files.
    raise ValueError(f"{where}: cannot decode the image ({error}).") from error
  return pixels, np.array([pixels.shape[1] / width, pixels.shape[0] / height], np.float32)


def pad_image(image: np.ndarray, shape: tuple[int, int], fill: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 -> `shape` + (3,), the image at the top left, the rest `fill`."""
  padded = np.empty((*shape, 3), np.uint8)
  padded[...] = fill
  padded[:image.shape[0], :image.shape[1]] = image
  return padded


def _name(element: dict) -> str:
  name = element.get("filename", b"?")
  return name.decode() if isinstance(name, bytes) else str(name)


class TrainCrop(grain.RandomMapTransform):
  """Dataset example -> one augmented training crop (section 4.1 of the paper).

  Output: image (crop, crop, 3) uint8; points (max_points, 2) float32 (x, y) in crop
  pixels; valid (max_points,) bool; valid_size (2,) int32 (height, width) of the image
  part of the crop, which sits at the top left; count int32, the heads in the crop.
  """

  def __init__(self, data_config: ml_collections.ConfigDict):
    self.crop_size = data_config.crop_size
    self.flip_prob = data_config.flip_prob
    self.grayscale_prob = data_config.grayscale_prob
    self.max_side = data_config.max_side
    self.max_points = data_config.max_points
    self.fill = mean_colour(data_config)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image, scale = decode_image(element["image"], self.max_side, _name(element))
    points = np.asarray(element["points"], np.float32).reshape(-1, 2) * scale
    height, width = image.shape[:2]
    crop_h, crop_w = min(height, self.crop_size), min(width, self.crop_size)
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    patch = image[top:top + crop_h, left:left + crop_w]
    points = points - np.array([left, top], np.float32)
    points = points[(points >= 0).all(1) & (points <= [crop_w, crop_h]).all(1)]
    if rng.uniform() < self.flip_prob:
      patch = patch[:, ::-1]
      points[:, 0] = crop_w - points[:, 0]
    if rng.uniform() < self.grayscale_prob:
      patch = np.repeat((patch @ _LUMA).round().astype(np.uint8)[..., None], 3, axis=2)
    if len(points) > self.max_points:
      raise ValueError(
          f"{_name(element)}: {len(points)} heads in one {self.crop_size}-pixel crop, more "
          f"than data.max_points = {self.max_points}; raise --config.data.max_points.")
    crop = pad_image(patch, (self.crop_size, self.crop_size), self.fill)
    padded = np.zeros((self.max_points, 2), np.float32)
    padded[:len(points)] = points
    return {"image": crop, "points": padded,
            "valid": np.arange(self.max_points) < len(points),
            "valid_size": np.array([crop_h, crop_w], np.int32),
            "count": np.int32(len(points))}


class EvalImage(grain.MapTransform):
  """Dataset example -> the whole image for evaluation, padded to a size bucket.

  Output: image (H_b, W_b, 3) uint8 with H_b, W_b the image size (after `max_side`)
  rounded up to `eval_bucket`, so that a few shapes cover a dataset and the jitted
  evaluation compiles once per bucket; valid_size (2,) int32; count int32, the dataset's
  true count (resizing and padding never change it); filename.
  """

  def __init__(self, data_config: ml_collections.ConfigDict):
    self.max_side = data_config.max_side
    self.bucket = data_config.eval_bucket
    self.fill = mean_colour(data_config)

  def map(self, element: dict) -> dict:
    image, _ = decode_image(element["image"], self.max_side, _name(element))
    height, width = image.shape[:2]
    padded = pad_image(image, (-(-height // self.bucket) * self.bucket,
                               -(-width // self.bucket) * self.bucket), self.fill)
    return {"image": padded, "valid_size": np.array([height, width], np.int32),
            "count": np.int32(element["count"]), "filename": _name(element)}


def normalize_images(images: jax.Array, valid_size: jax.Array,
                     data_config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 (batch, H, W, 3) -> float32 ImageNet-normalised images whose padding (beyond
  `valid_size` (batch, 2)) is exactly 0, as the model pads. Runs inside jit."""
  mean = jnp.asarray(data_config.mean, jnp.float32)
  std = jnp.asarray(data_config.std, jnp.float32)
  normalised = (images.astype(jnp.float32) / 255.0 - mean) / std
  rows = jnp.arange(images.shape[1])[None, :, None] < valid_size[:, 0, None, None]
  cols = jnp.arange(images.shape[2])[None, None, :] < valid_size[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], normalised, 0.0)


def _sampler(num_records: int, seed: int, shuffle: bool, num_epochs: int | None,
             shard_options: grain.ShardOptions | None) -> grain.IndexSampler:
  return grain.IndexSampler(
      num_records, shard_options or grain.ShardByJaxProcess(drop_remainder=shuffle),
      shuffle=shuffle, num_epochs=num_epochs, seed=seed)


def host_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
  """The part of the global batch that each host loads."""
  process_count = process_count or jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                     f"{process_count} hosts.")
  return global_batch_size // process_count


def _data_loader(config: ml_collections.ConfigDict, data_source: Any,
                 sampler: grain.IndexSampler, operations: list) -> grain.DataLoader:
  if config.data.num_workers and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside an absl app nobody parsed them.
    flags.FLAGS.mark_as_parsed()
  return grain.DataLoader(data_source=data_source, sampler=sampler, operations=operations,
                          worker_count=config.data.num_workers,
                          worker_buffer_size=config.data.worker_buffer_size)


def create_train_loader(config: ml_collections.ConfigDict, data_source: Any,
                        shard_options: grain.ShardOptions | None = None) -> grain.DataLoader:
  """Infinite, shuffled (reshuffled every epoch), augmented batches of this host's
  shard: dicts of numpy arrays with a leading host-batch axis (`TrainCrop` fields)."""
  if len(data_source) == 0:
    raise ValueError(f"The training split of {config.data.name} is empty.")
  return _data_loader(
      config, data_source, _sampler(len(data_source), config.seed, True, None, shard_options),
      [TrainCrop(config.data),
       grain.Batch(host_batch_size(config.batch_size), drop_remainder=True)])


def create_eval_loader(config: ml_collections.ConfigDict, data_source: Any,
                       shard_options: grain.ShardOptions | None = None) -> grain.DataLoader:
  """One pass over this host's shard, in order, one whole image per batch."""
  return _data_loader(
      config, data_source, _sampler(len(data_source), config.seed, False, 1, shard_options),
      [EvalImage(config.data), grain.Batch(1)])


def open_split(data_config: ml_collections.ConfigDict, split: str):
  """The `array_record` data source of a built split (random access, no TensorFlow)."""
  try:
    return tfds.data_source(data_config.name, split=split, data_dir=data_config.data_dir,
                            download=False)
  except Exception as error:
    raise FileNotFoundError(
        f"Dataset {data_config.name!r} (split {split!r}) is not built in "
        f"{data_config.data_dir or '~/tensorflow_datasets'}: run "
        f"`python -m tfds_crowd.build {data_config.name} --manual_dir DIR` first "
        f"({error}).") from error


def resolve_splits(data_config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(train, eval) split strings; UCF_CC_50 configs name a test `fold` instead."""
  if "fold" in data_config:
    return fold_splits(data_config.fold)
  return data_config.train_split, data_config.eval_split
