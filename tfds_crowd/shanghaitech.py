"""ShanghaiTech crowd counting, parts A and B (Zhang et al., CVPR 2016)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from tfds_crowd.crowd_builder import CrowdBuilder, CrowdDataError, SplitReport, as_count, as_points
from tfds_crowd.matlab import load_mat, struct_field

# part_A/train_data/images/IMG_1.jpg, also part_A_final/...; in a folder or a zip.
_IMAGE = r"(?:^|/)part_{part}(?:_final)?/{split}_data/images/(IMG_\d+)\.jpg$"
_GROUND_TRUTH = r"(?:^|/)part_{part}(?:_final)?/{split}_data/ground[-_]truth/GT_(IMG_\d+)\.mat$"


def parse_ground_truth(data: bytes, where: str) -> tuple[np.ndarray, int]:
  """`GT_IMG_k.mat` -> ((N, 2) points `image_info{1}.location`, `image_info{1}.number`),
  or a `CrowdDataError` naming `where`."""
  mat = load_mat(data, where, ("image_info",))
  points = as_points(struct_field(mat, ("image_info", "location"), where), where)
  number = as_count(struct_field(mat, ("image_info", "number"), where), where, "image_info.number")
  return points, number


class Shanghaitech(CrowdBuilder):
  """ShanghaiTech crowd counting: part A (300 train / 182 test, dense scenes from the
  web) and part B (400 train / 316 test, Shanghai streets). Points come from
  `image_info{1}.location` (x, y) of `GT_IMG_k.mat`; `annotated_count` is its `number`.
  Accepts `part_A`/`ground-truth` and `part_A_final`/`ground_truth` namings."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="part_a", description="Part A: 300 train, 182 test."),
      tfds.core.BuilderConfig(name="part_b", description="Part B: 400 train, 316 test."),
  ]
  HOMEPAGE = "https://github.com/desenzhou/ShanghaiTechDataset"
  CITATION = """@inproceedings{zhang2016single,
  title={Single-Image Crowd Counting via Multi-Column Convolutional Neural Network},
  author={Zhang, Yingying and Zhou, Desen and Chen, Siqin and Gao, Shenghua and Ma, Yi},
  booktitle={CVPR}, year={2016}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the ShanghaiTech dataset (links at
  https://github.com/desenzhou/ShanghaiTechDataset) and place the archive as distributed
  (e.g. ShanghaiTech_Crowd_Counting_Dataset.zip), or its extracted part_A/ and part_B/
  (or part_A_final/ and part_B_final/) folders, in the manual_dir, e.g.
  ~/tensorflow_datasets/downloads/manual/.
  """

  def _extra_features(self):
    return {"annotated_count": tfds.features.Scalar(dtype=np.int32)}

  def _split_generators(self, dl_manager):
    source = self._manual_source(dl_manager)
    part = self.builder_config.name[-1].upper()
    return {split: self._generate_examples(source, part, split) for split in ("train", "test")}

  def _generate_examples(self, source, part, split):
    images = {m[1]: name for name, m in source.match(_IMAGE.format(part=part, split=split))}
    truths = {m[1]: name for name, m in source.match(_GROUND_TRUTH.format(part=part, split=split))}
    if not images:
      raise self._missing(source, f"part_{part}/{split}_data/images/IMG_*.jpg")
    orphans = sorted(set(truths) - set(images))
    if orphans:  # an image lost from a damaged archive, say: its heads would vanish
      raise CrowdDataError(
          f"{source.describe(truths[orphans[0]])}: no image {orphans[0]}.jpg for this ground "
          f"truth in ../images/ ({len(orphans)} ground truths without their image)."
      )
    report = SplitReport(f"{self.name}/{self.builder_config.name}", split)
    for stem, image_name in sorted(images.items()):
      if stem not in truths:
        raise CrowdDataError(
            f"{source.describe(image_name)}: no ground truth "
            f"GT_{stem}.mat next to it in ../ground-truth/."
        )
      where = source.describe(truths[stem])
      points, number = parse_ground_truth(source.read_bytes(truths[stem]), where)
      yield self._example(
          report,
          source.read_bytes(image_name),
          source.describe(image_name),
          f"{split}_data/{stem}.jpg",
          points,
          annotation=where,
          annotated_count=number,
      )
    report.log_summary()
