"""UCF_CC_50 (Idrees et al., CVPR 2013), split into its five standard folds."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from tfds_crowd.crowd_builder import CrowdBuilder, CrowdDataError, SplitReport, as_points
from tfds_crowd.matlab import load_mat, struct_field

NUM_IMAGES = 50
NUM_FOLDS = 5
_IMAGE = r"(?:^|/)(\d+)\.jpg$"
_ANNOTATION = r"(?:^|/)(\d+)_ann\.mat$"


def fold_splits(test_fold: int) -> tuple[str, str]:
  """(train, test) TFDS split strings of the protocol: train on four folds, test on
  fold `test_fold` (1..5). E.g. fold 5 -> ('fold1+fold2+fold3+fold4', 'fold5')."""
  if not 1 <= test_fold <= NUM_FOLDS:
    raise ValueError(f"UCF_CC_50 has folds 1..{NUM_FOLDS}, got {test_fold}.")
  train = "+".join(f"fold{k}" for k in range(1, NUM_FOLDS + 1) if k != test_fold)
  return train, f"fold{test_fold}"


def parse_annotation(data: bytes, where: str) -> np.ndarray:
  """`k_ann.mat` -> (N, 2) points `annPoints`, or a `CrowdDataError` naming `where`."""
  mat = load_mat(data, where, ("annPoints",))
  return as_points(struct_field(mat, ("annPoints",), where), where)


class UcfCc50(CrowdBuilder):
  """UCF_CC_50: 50 grayscale images of very dense crowds, 63,974 heads (1279 per image
  on average, at most 4633). Splits `fold1`..`fold5` are the standard folds of ten
  consecutive images (1-10, 11-20, ...); train on four and test on the fifth, e.g.
  `tfds_crowd.ucf_cc_50.fold_splits(k)`. Points are `annPoints` (x, y) of `k_ann.mat`."""

  name = "ucf_cc_50"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = "https://www.crcv.ucf.edu/data/ucf-cc-50/"
  CITATION = """@inproceedings{idrees2013multi,
  title={Multi-Source Multi-Scale Counting in Extremely Dense Crowd Images},
  author={Idrees, Haroon and Saleemi, Imran and Seibert, Cody and Shah, Mubarak},
  booktitle={CVPR}, year={2013}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download UCF_CC_50.zip from https://www.crcv.ucf.edu/data/ucf-cc-50/ and place the zip,
  or the extracted folder with 1.jpg .. 50.jpg and 1_ann.mat .. 50_ann.mat, in the
  manual_dir, e.g. ~/tensorflow_datasets/downloads/manual/.
  """

  def _split_generators(self, dl_manager):
    source = self._manual_source(dl_manager)
    images = {int(m[1]): name for name, m in source.match(_IMAGE)}
    annotations = {int(m[1]): name for name, m in source.match(_ANNOTATION)}
    missing = [k for k in range(1, NUM_IMAGES + 1) if k not in images]
    if missing:
      raise self._missing(
          source,
          f"{len(missing)} of the {NUM_IMAGES} images k.jpg (first missing: {missing[0]}.jpg)",
      )
    per_fold = NUM_IMAGES // NUM_FOLDS
    return {
        f"fold{fold}": self._generate_examples(
            source,
            f"fold{fold}",
            images,
            annotations,
            range((fold - 1) * per_fold + 1, fold * per_fold + 1),
        )
        for fold in range(1, NUM_FOLDS + 1)
    }

  def _generate_examples(self, source, split, images, annotations, numbers):
    report = SplitReport(self.name, split)
    for k in numbers:
      if k not in annotations:
        raise CrowdDataError(f"{source.describe(images[k])}: no annotation {k}_ann.mat next to it.")
      where = source.describe(annotations[k])
      points = parse_annotation(source.read_bytes(annotations[k]), where)
      yield self._example(
          report,
          source.read_bytes(images[k]),
          source.describe(images[k]),
          f"{k}.jpg",
          points,
          annotation=where,
      )
    report.log_summary()
