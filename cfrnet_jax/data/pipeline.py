"""Input pipeline: grain over `tfds.data_source`, no TensorFlow.

Why grain + `tfds.data_source`: the builders store `array_record`, which grain reads by
index, so shuffling (per epoch, from `config.seed`), sharding across hosts and resuming
are exact: the sampler's position is a small state that `get_state()` returns and
`set_state()` restores, and every random augmentation draws from a generator that grain
derives from the seed and the record's position, not from worker timing.

What runs where:
* host (grain workers, numpy + Pillow, `data.geometry`): decode the JPEG, resize to
  `data.max_side`, take one random `crop_size` crop (padded with the mean colour when the
  image is smaller), flip with `flip_prob`, grayscale with `grayscale_prob`, and ship the
  crop as uint8 with its head points padded to a fixed number (`max_points_per_crop`:
  by default the split's largest image count, so that no crop can overflow it), a
  validity mask and the size of the image part of the crop (`valid_size`);
* accelerator, inside the jitted step: `data.device_ops.normalize_images` and
  `data.targets` (density and foreground targets of every head from the padded points).
  uint8 crops are 4x smaller to transfer than float32, and rendering targets on the
  device costs the host nothing.

grain's worker processes read absl flags, so loaders with `data.num_workers > 0` must run
in an absl app (`launch.py` is one) or after `absl.flags.FLAGS.mark_as_parsed()`.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import grain.python as grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags, logging

import tfds_crowd  # registers the builders with TFDS
from cfrnet_jax.data.geometry import decode_image, mean_colour, pad_image, pad_to_multiple
from cfrnet_jax.models.cfrnet import pad_multiple
from tfds_crowd.folder_builder import METADATA_KEY as FOLDER_IMPORT

# ITU-R BT.601 luma, the usual RGB -> grayscale weights (Pillow's "L" mode uses them).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _name(element: dict) -> str:
  name = element.get("filename", b"?")
  return name.decode() if isinstance(name, bytes) else str(name)


class TrainCrop(grain.RandomMapTransform):
  """Dataset example -> one augmented training crop (section 4.1 of the paper).

  Output: image (crop, crop, 3) uint8; points (max_points, 2) float32 (x, y) in crop
  pixels; valid (max_points,) bool; valid_size (2,) int32 (height, width) of the image
  part of the crop, which sits at the top left; count int32, the heads in the crop.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, max_points: int | None = None):
    self.crop_size = data_config.crop_size
    self.flip_prob = data_config.flip_prob
    self.grayscale_prob = data_config.grayscale_prob
    self.max_side = data_config.max_side
    self.max_points = data_config.max_points if max_points is None else max_points
    if self.max_points < 1:
      raise ValueError(
          f"TrainCrop needs a positive number of points per crop, got {self.max_points} "
          f"(data.max_points = 0 is resolved from the data by max_points_per_crop)."
      )
    self.fill = mean_colour(data_config.mean)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image, scale = decode_image(element["image"], self.max_side, _name(element))
    points = np.asarray(element["points"], np.float32).reshape(-1, 2) * scale
    height, width = image.shape[:2]
    crop_h, crop_w = min(height, self.crop_size), min(width, self.crop_size)
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    patch = image[top : top + crop_h, left : left + crop_w]
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
          f"than data.max_points = {self.max_points}; raise --config.data.max_points, or "
          f"set it to 0 to take the split's largest image count."
      )
    crop = pad_image(patch, (self.crop_size, self.crop_size), self.fill)
    padded = np.zeros((self.max_points, 2), np.float32)
    padded[: len(points)] = points
    return {
        "image": crop,
        "points": padded,
        "valid": np.arange(self.max_points) < len(points),
        "valid_size": np.array([crop_h, crop_w], np.int32),
        "count": np.int32(len(points)),
    }


class EvalImage(grain.MapTransform):
  """Dataset example -> the whole image for evaluation, padded as the model pads.

  Output: image (H_p, W_p, 3) uint8, the image after `max_side` padded to the next
  multiples of the model's padding `multiple` (`data.geometry`'s padding rule), so that
  a few shapes cover a dataset and the jitted evaluation compiles once per shape;
  valid_size (2,) int32; count int32, the dataset's true count (resizing and padding
  never change it); points (N, 2) float32 (x, y), the annotated heads in the original
  picture's pixels, and scale (2,) float32, the (x, y) factors from those to the image's
  pixels (for the localization metrics); filename.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, multiple: int):
    self.max_side = data_config.max_side
    self.multiple = multiple
    self.fill = mean_colour(data_config.mean)

  def map(self, element: dict) -> dict:
    image, scale = decode_image(element["image"], self.max_side, _name(element))
    return {
        "image": pad_to_multiple(image, self.multiple, self.fill),
        "valid_size": np.array(image.shape[:2], np.int32),
        "count": np.int32(element["count"]),
        "points": np.asarray(element["points"], np.float32).reshape(-1, 2),
        "scale": scale,
        "filename": _name(element),
    }


def _sampler(
    num_records: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    shard_options: grain.ShardOptions | None,
) -> grain.IndexSampler:
  return grain.IndexSampler(
      num_records,
      shard_options or grain.ShardByJaxProcess(drop_remainder=shuffle),
      shuffle=shuffle,
      num_epochs=num_epochs,
      seed=seed,
  )


def host_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
  """The part of the global batch that each host loads."""
  process_count = process_count or jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(
        f"batch_size {global_batch_size} is not divisible by the {process_count} hosts."
    )
  return global_batch_size // process_count


def worker_count(data_config: ml_collections.ConfigDict) -> int:
  """`data.num_workers`, with -1 resolved to the CPU cores this process may use (its
  affinity mask, which containers and schedulers set) less one for the training loop, at
  most `data.max_auto_workers`. Batches are made inside the workers, so the count is part
  of the data order: a run resumes with the count it started with."""
  num_workers = data_config.num_workers
  if num_workers >= 0:
    return num_workers
  if num_workers != -1:
    raise ValueError(f"data.num_workers must be >= 0, or -1 for automatic; got {num_workers}.")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(0, min((cores or 1) - 1, data_config.max_auto_workers))


def _data_loader(
    config: ml_collections.ConfigDict,
    data_source: Any,
    sampler: grain.IndexSampler,
    operations: list,
) -> grain.DataLoader:
  workers = worker_count(config.data)
  if workers and not flags.FLAGS.is_parsed():
    raise RuntimeError(
        f"data.num_workers = {config.data.num_workers} ({workers} workers): grain's worker "
        f"processes read absl flags, which nobody has parsed. Run inside an absl app (as "
        f"launch.py does), call absl.flags.FLAGS.mark_as_parsed() once at start, or set "
        f"data.num_workers = 0."
    )
  logging.info("Input pipeline: %d grain worker processes.", workers)
  return grain.DataLoader(
      data_source=data_source,
      sampler=sampler,
      operations=operations,
      worker_count=workers,
      worker_buffer_size=config.data.worker_buffer_size,
  )


def max_points_per_crop(data_config: ml_collections.ConfigDict, data_source: Any) -> int:
  """Head points each training crop ships: `data.max_points` when positive, else (0,
  the default) the largest number of heads of any image of the split, rounded up to a
  multiple of `data.points_multiple`. A crop never holds more heads than its image, so no
  crop can overflow, however dense (NWPU-Crowd has an image of 20,033 heads); reading
  every record's points once takes seconds."""
  if data_config.max_points > 0:
    return data_config.max_points
  largest, name = 0, "?"
  for index in range(len(data_source)):
    element = data_source[index]
    heads = np.asarray(element["points"]).size // 2
    if heads > largest:
      largest, name = heads, _name(element)
  multiple = data_config.points_multiple
  max_points = multiple * max(1, -(-largest // multiple))
  logging.info(
      "data.max_points = %d: the training split's densest image, %s, has %d heads.",
      max_points,
      name,
      largest,
  )
  return max_points


def create_train_loader(
    config: ml_collections.ConfigDict,
    data_source: Any,
    shard_options: grain.ShardOptions | None = None,
) -> grain.DataLoader:
  """Infinite, shuffled (reshuffled every epoch), augmented batches of this host's
  shard: dicts of numpy arrays with a leading host-batch axis (`TrainCrop` fields)."""
  if len(data_source) == 0:
    raise ValueError(f"The training split of {config.data.name} is empty.")
  return _data_loader(
      config,
      data_source,
      _sampler(len(data_source), config.seed, True, None, shard_options),
      [
          TrainCrop(config.data, max_points_per_crop(config.data, data_source)),
          grain.Batch(host_batch_size(config.batch_size), drop_remainder=True),
      ],
  )


def create_eval_loader(
    config: ml_collections.ConfigDict,
    data_source: Any,
    shard_options: grain.ShardOptions | None = None,
) -> grain.DataLoader:
  """One pass over this host's shard, in order, one whole image per batch."""
  return _data_loader(
      config,
      data_source,
      _sampler(len(data_source), config.seed, False, 1, shard_options),
      [EvalImage(config.data, pad_multiple(config.model)), grain.Batch(1)],
  )


def open_split(data_config: ml_collections.ConfigDict, split: str):
  """The `array_record` data source of a built split (random access, no TensorFlow). A
  dataset or split that is not built is refused with the command that builds it: for a
  dataset of the folder importer (or a name that is none of this project's builders),
  `python -m tfds_crowd.build folder` and its split options."""
  if not data_config.name:
    raise ValueError(
        "data.name is empty: name the dataset to read, e.g. --config.data.name=NAME with "
        "the --name it was built with (python -m tfds_crowd.build folder ...)."
    )
  try:
    return tfds.data_source(
        data_config.name, split=split, data_dir=data_config.data_dir, download=False
    )
  except Exception as error:
    raise FileNotFoundError(_not_built(data_config, split, error)) from error


def _not_built(data_config: ml_collections.ConfigDict, split: str, error=None) -> str:
  """What to do when `split` of `data.name` cannot be opened (`error`: why, if known)."""
  name, where = data_config.name, data_config.data_dir or "~/tensorflow_datasets"
  info = built_info(data_config)
  if folder_import(info) is not None:
    return (
        f"Dataset {name!r} in {where}, imported from a folder, has the splits "
        f"{sorted(info.splits)}, not {split!r}: rebuild it with `python -m tfds_crowd.build "
        f"folder --manual_dir DIR --name {name}` and --val_fraction F / --test_fraction F "
        "(a hash of each picture's path), or --splits FILE (a JSON of train, val and test "
        f"pictures) that makes it; or name one of its splits" + (f" ({error})." if error else ".")
    )
  if name.split("/")[0] not in tfds_crowd.BUILDERS:
    return (
        f"Dataset {name!r} (split {split!r}) is not built in {where}: import your pictures "
        f"with `python -m tfds_crowd.build folder --manual_dir DIR --name {name}"
        f"{' --data_dir ' + data_config.data_dir if data_config.data_dir else ''}` first, "
        f"or name one of {sorted(tfds_crowd.BUILDERS)} ({error})."
    )
  return (
      f"Dataset {name!r} (split {split!r}) is not built in {where}: run "
      f"`python -m tfds_crowd.build {name} --manual_dir DIR` first ({error})."
  )


def built_info(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetInfo | None:
  """The info (splits, metadata) of `data.name` as built in `data.data_dir`, read from
  its files without TensorFlow; None when it is not built there (or not named)."""
  if not data_config.name:
    return None
  try:
    info = tfds.builder(data_config.name, data_dir=data_config.data_dir).info
  except tfds.core.registered.DatasetNotFoundError:
    return None
  return info if info.splits else None


def folder_import(info: tfds.core.DatasetInfo | None) -> dict | None:
  """The folder importer's record of a dataset it built (`info.metadata["folder_import"]`:
  source, format, splits), None for any other dataset."""
  metadata = info.metadata if info is not None else None
  return None if metadata is None else metadata.get(FOLDER_IMPORT)


def _split_names(split: str) -> set[str]:
  """The splits a split expression reads ("test[:4]", "fold1+fold2")."""
  return {part.split("[")[0].strip() for part in split.split("+")}


def with_folder_splits(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (a copy when changed) for the splits a folder dataset has, so that
  `configs/folder.py` trains on any: without `val` (built with --val_fraction 0, or a
  split file without it) the last checkpoint is the result, evaluated on `test`
  (`data.eval_split = "test"`, `data.validation = False`), as for ShanghaiTech (issue
  25); without `test`, the best checkpoint on `val` is the result, with its `val`
  figures (`data.test_split = ""`). One log line says which. A config that selects on
  another split, and datasets the folder importer did not build, are left as they are.
  Decided before training writes `config.json`, which then records what was used."""
  data = config.data
  if not (data.validation and data.eval_split == "val"):
    return config
  info = built_info(data)
  if folder_import(info) is None:
    return config
  splits = set(info.splits)
  if "val" in splits and (not data.test_split or _split_names(data.test_split) <= splits):
    return config
  if "val" in splits:
    changes = {"test_split": ""}
    why = f"no {data.test_split} split: the best checkpoint on val is the result, reported "
    why += "with its val figures (data.test_split='')"
  elif "test" in splits:
    changes = {"eval_split": "test", "validation": False, "test_split": ""}
    why = "no val split: the last checkpoint is the result, evaluated on test "
    why += "(data.eval_split=test, data.validation=False), as for ShanghaiTech"
  else:
    raise FileNotFoundError(_not_built(data, "val"))
  config = copy.deepcopy(config)
  config.data.update(changes)
  logging.info("Dataset %s has %s; splits: %s.", data.name, why, sorted(splits))
  return config
