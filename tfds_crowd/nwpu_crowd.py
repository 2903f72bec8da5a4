"""NWPU-Crowd (Wang et al., TPAMI 2020)."""

from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfds_crowd.crowd_builder import (
    INT32_MAX,
    CrowdBuilder,
    CrowdDataError,
    SplitReport,
    as_count,
    as_points,
    decode_text,
)

SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 3109, "val": 500, "test": 1500}  # images, as released
SPLIT_LABELS = 2  # integers after the image id on each line of train.txt etc.
_IMAGE = r"(?:^|/)images/(\d+)\.jpg$"
_ANNOTATION = r"(?:^|/)jsons/(\d+)\.json$"
_SPLIT_LIST = r"(?:^|/){split}\.txt$"


def parse_split_list(text: str, where: str) -> dict[str, list[int]]:
  """`train.txt` etc.: `image_id label label` per line (NWPU's illumination and
  scene-density levels) -> {image_id: [labels]}; every image on one line."""
  entries = {}
  for number, line in enumerate(text.splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    try:
      labels = [int(v) for v in fields[1:]]
    except ValueError:
      labels = []
    if len(labels) != SPLIT_LABELS or any(abs(v) > INT32_MAX for v in labels):
      raise CrowdDataError(
          f"{where}, line {number}: expected an image id followed by {SPLIT_LABELS} "
          f"32-bit integer labels, got {line.strip()!r}."
      )
    if fields[0] in entries:
      raise CrowdDataError(f"{where}, line {number}: image {fields[0]} is listed twice.")
    entries[fields[0]] = labels
  if not entries:
    raise CrowdDataError(f"{where}: lists no images.")
  return entries


def parse_annotation(data: bytes, where: str) -> tuple[np.ndarray, int, np.ndarray]:
  """`jsons/k.json` -> ((N, 2) `points`, `human_num`, (M, 4) `boxes`), or a
  `CrowdDataError` naming `where`."""
  text = decode_text(data, where)
  try:
    record = json.loads(text)
  except (ValueError, RecursionError) as error:
    raise CrowdDataError(f"{where}: not valid JSON ({error}).") from None
  if not isinstance(record, dict):
    raise CrowdDataError(
        f"{where}: expected a JSON object with 'points' and 'human_num', got a "
        f"{type(record).__name__}."
    )
  missing = [key for key in ("points", "human_num") if key not in record]
  if missing:
    raise CrowdDataError(
        f"{where}: not an NWPU annotation: no {' or '.join(map(repr, missing))} "
        f"(keys: {sorted(record)[:10]})."
    )
  points = as_points(record["points"], where)
  human_num = as_count(record["human_num"], where, "human_num")
  return points, human_num, _boxes(record.get("boxes", []), where)


def _boxes(values, where: str) -> np.ndarray:
  """(M, 4) float32 boxes (x1, y1, x2, y2) as annotated (NaN and infinity included), or
  a `CrowdDataError`."""
  try:
    boxes = np.asarray(values)
  except ValueError as error:  # ragged
    raise CrowdDataError(f"{where}: 'boxes' is not an (M, 4) array ({error}).") from None
  if boxes.size == 0 and boxes.ndim <= 2:
    return np.zeros((0, 4), np.float32)
  if boxes.dtype.kind not in "iuf" or boxes.ndim != 2 or boxes.shape[1] != 4:
    raise CrowdDataError(
        f"{where}: 'boxes' must be an (M, 4) array of numbers, got {boxes.dtype} "
        f"of shape {boxes.shape}."
    )
  boxes = boxes.astype(np.float64)
  if (np.isfinite(boxes) & (np.abs(boxes) > np.finfo(np.float32).max)).any():
    raise CrowdDataError(f"{where}: 'boxes' holds values beyond float32.")
  return boxes.astype(np.float32)


class NwpuCrowd(CrowdBuilder):
  """NWPU-Crowd: 5109 images, 3109 train / 500 val / 1500 test, with head points and
  boxes. The test split has NO annotations: its labels are withheld by the benchmark
  server, so its examples have `labeled` = False, no points and `count` = -1. Also:
  `annotated_count` (the json's `human_num`, -1 on test), `boxes` (x1, y1, x2, y2) as
  annotated, and `split_labels`, the integers after the image id on its line of
  train/val/test.txt (NWPU's per-image illumination and scene-density levels)."""

  name = "nwpu_crowd"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = "https://gjy3035.github.io/NWPU-Crowd-Sample-Code/"
  CITATION = """@article{wang2020nwpu,
  title={NWPU-Crowd: A Large-Scale Benchmark for Crowd Counting and Localization},
  author={Wang, Qi and Gao, Junyu and Lin, Wei and Li, Xuelong},
  journal={IEEE TPAMI}, year={2020}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download NWPU-Crowd from https://gjy3035.github.io/NWPU-Crowd-Sample-Code/ and place the
  files as distributed (images_part1.zip .. images_part5.zip, jsons.zip, train.txt,
  val.txt, test.txt; mats.zip is not needed), or the extracted images/ and jsons/
  folders with the three split lists, in the manual_dir,
  e.g. ~/tensorflow_datasets/downloads/manual/.
  """

  def _extra_features(self):
    return {
        "labeled": tfds.features.Scalar(dtype=np.bool_),
        "annotated_count": tfds.features.Scalar(dtype=np.int32),
        "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        "split_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    }

  def _split_generators(self, dl_manager):
    source = self._manual_source(dl_manager)
    images = {m[1]: name for name, m in source.match(_IMAGE)}
    annotations = {m[1]: name for name, m in source.match(_ANNOTATION)}
    if not images:
      raise self._missing(source, "images/*.jpg (images_part*.zip)")
    generators = {}
    for split in SPLITS:
      lists = [name for name, _ in source.match(_SPLIT_LIST.format(split=split))]
      if len(lists) != 1:
        raise self._missing(source, f"exactly one {split}.txt (found {len(lists)})")
      where = source.describe(lists[0])
      entries = parse_split_list(decode_text(source.read_bytes(lists[0]), where), where)
      if len(entries) != SPLIT_SIZES[split]:
        logging.warning(
            "%s lists %d images; NWPU-Crowd's %s split has %d (a truncated or edited list?).",
            where,
            len(entries),
            split,
            SPLIT_SIZES[split],
        )
      generators[split] = self._generate_examples(source, split, entries, images, annotations)
    return generators

  def _generate_examples(self, source, split, entries, images, annotations):
    report = SplitReport(self.name, split)
    labeled = split != "test"
    if not labeled:
      logging.warning(
          "%s: the test split has no annotations (withheld for the benchmark "
          "server); its examples have labeled=False and count=-1.",
          self.name,
      )
    for image_id, split_labels in sorted(entries.items()):
      if image_id not in images:
        raise self._missing(source, f"image {image_id}.jpg listed in {split}.txt")
      image = source.read_bytes(images[image_id]), source.describe(images[image_id])
      extra = {"labeled": labeled, "split_labels": np.asarray(split_labels, np.int32)}
      if not labeled:
        key, example = self._example(
            report, *image, f"{image_id}.jpg", [], boxes=np.zeros((0, 4), np.float32), **extra
        )
        yield key, {**example, "count": -1, "annotated_count": -1}
        continue
      if image_id not in annotations:
        raise CrowdDataError(
            f"{source.describe(images[image_id])}: no annotation jsons/{image_id}.json."
        )
      where = source.describe(annotations[image_id])
      points, human_num, boxes = parse_annotation(source.read_bytes(annotations[image_id]), where)
      yield self._example(
          report,
          *image,
          f"{image_id}.jpg",
          points,
          annotation=where,
          annotated_count=human_num,
          boxes=boxes,
          **extra,
      )
    report.log_summary()
