"""NWPU-Crowd (Wang et al., TPAMI 2020)."""

from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfds_crowd.crowd_builder import CrowdBuilder, CrowdDataError, SplitReport

SPLITS = ("train", "val", "test")
_IMAGE = r"(?:^|/)images/(\d+)\.jpg$"
_ANNOTATION = r"(?:^|/)jsons/(\d+)\.json$"
_SPLIT_LIST = r"(?:^|/){split}\.txt$"


def parse_split_list(text: str, where: str) -> dict[str, list[int]]:
  """`train.txt` etc.: `image_id label label` per line -> {image_id: [labels]}."""
  entries = {}
  for number, line in enumerate(text.splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    try:
      entries[fields[0]] = [int(v) for v in fields[1:]]
    except ValueError:
      raise CrowdDataError(
          f"{where}, line {number}: expected an image id followed by "
          f"integer labels, got {line.strip()!r}."
      ) from None
  return entries


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
      entries = parse_split_list(source.read_bytes(lists[0]).decode(), source.describe(lists[0]))
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
      try:
        record = json.loads(source.read_bytes(annotations[image_id]))
        points, boxes = record["points"], record.get("boxes", [])
        human_num = int(record["human_num"])
      except (ValueError, KeyError, TypeError) as error:
        raise CrowdDataError(
            f"{where}: not an NWPU annotation with 'points' and 'human_num' ({error!r})."
        ) from error
      boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
      yield self._example(
          report, *image, f"{image_id}.jpg", points, annotated_count=human_num, boxes=boxes, **extra
      )
    report.log_summary()
