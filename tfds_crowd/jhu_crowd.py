"""JHU-Crowd++ v2.0 (Sindagi et al., TPAMI 2020)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow_datasets as tfds

from tfds_crowd.crowd_builder import (
    INT32_MAX,
    CrowdBuilder,
    CrowdDataError,
    SplitReport,
    decode_text,
)

SPLITS = ("train", "val", "test")
_IMAGE = r"(?:^|/){split}/images/([^/]+)\.jpg$"
_GROUND_TRUTH = r"(?:^|/){split}/gt/([^/]+)\.txt$"
_LABELS = r"(?:^|/){split}/image_labels\.txt$"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def parse_head_lines(text: str, where: str) -> np.ndarray:
  """`gt/*.txt`: one head per line, `x y w h occlusion blur` -> (N, 6) float array.

  x and y may be any number (NaN, infinite and out-of-image heads are dropped and
  counted when the example is made); w and h are stored as float32 as annotated (NaN and
  infinity included), so a finite value beyond float32 is refused, and so is an occlusion
  or blur that is not a 32-bit whole number, naming the file and line.
  """
  rows = []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split()
    try:
      values = [float(v) for v in fields]
    except ValueError:
      values = []
    if len(values) != 6:
      raise CrowdDataError(
          f"{where}, line {number}: expected 'x y w h occlusion blur', got {line.strip()!r}."
      )
    if any(math.isfinite(v) and abs(v) > _FLOAT32_MAX for v in values[2:4]) or not all(
        math.isfinite(v) and v == int(v) and abs(v) <= INT32_MAX for v in values[4:]
    ):
      raise CrowdDataError(
          f"{where}, line {number}: w and h must fit float32 and occlusion and blur be "
          f"32-bit whole numbers, got {line.strip()!r}."
      )
    rows.append(values)
  return np.asarray(rows, np.float64).reshape(-1, 6)


def parse_image_labels(text: str, where: str) -> dict[str, tuple[int, str, int, int]]:
  """`image_labels.txt`: `name,count,scene,weather,distractor` per line
  -> {name: (count, scene, weather, distractor)}."""
  labels = {}
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    fields = [f.strip() for f in line.split(",")]
    try:
      name, count, scene, weather, distractor = fields
      count, weather, distractor = int(count), int(weather), int(distractor)
    except ValueError:
      raise CrowdDataError(
          f"{where}, line {number}: expected 'image,count,scene,weather,"
          f"distractor', got {line.strip()!r}."
      ) from None
    if not (0 <= count <= INT32_MAX and abs(weather) <= INT32_MAX and abs(distractor) <= INT32_MAX):
      raise CrowdDataError(
          f"{where}, line {number}: count must be in [0, {INT32_MAX}] and weather and "
          f"distractor 32-bit integers, got {line.strip()!r}."
      )
    if name in labels:
      raise CrowdDataError(f"{where}, line {number}: a second line for image {name!r}.")
    labels[name] = (count, scene, weather, distractor)
  return labels


class JhuCrowd(CrowdBuilder):
  """JHU-Crowd++ v2.0: 4372 images (2272 train / 500 val / 1600 test) with 1.51 M heads.
  Per image: `scene` type, `weather` (0 none, 1 fog/haze, 2 rain, 3 snow), `distractor`
  (1 = an image with no crowd), `annotated_count` from `image_labels.txt`. Per head, in
  the order of `points`: `head_size` (w, h), `occlusion` (1 visible, 2 partial, 3 full)
  and `blur` (0/1), from `gt/*.txt` lines `x y w h occlusion blur`."""

  name = "jhu_crowd"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"2.0.0": "JHU-Crowd++ v2.0."}
  HOMEPAGE = "http://www.crowd-counting.com/"
  CITATION = """@article{sindagi2020jhu,
  title={JHU-CROWD++: Large-Scale Crowd Counting Dataset and A Benchmark Method},
  author={Sindagi, Vishwanath A. and Yasarla, Rajeev and Patel, Vishal M.},
  journal={IEEE TPAMI}, year={2020}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request and download jhu_crowd_v2.0.zip from http://www.crowd-counting.com/ and place
  the zip, or the extracted jhu_crowd_v2.0/ folder with train/, val/ and test/ (each with
  images/, gt/ and image_labels.txt), in the manual_dir,
  e.g. ~/tensorflow_datasets/downloads/manual/.
  """

  def _extra_features(self):
    return {
        "annotated_count": tfds.features.Scalar(dtype=np.int32),
        "scene": tfds.features.Text(),
        "weather": tfds.features.Scalar(dtype=np.int32),
        "distractor": tfds.features.Scalar(dtype=np.int32),
        "head_size": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
        "occlusion": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "blur": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    }

  def _split_generators(self, dl_manager):
    source = self._manual_source(dl_manager)
    return {split: self._generate_examples(source, split) for split in SPLITS}

  def _generate_examples(self, source, split):
    images = {m[1]: name for name, m in source.match(_IMAGE.format(split=split))}
    truths = {m[1]: name for name, m in source.match(_GROUND_TRUTH.format(split=split))}
    label_files = [name for name, _ in source.match(_LABELS.format(split=split))]
    if not images:
      raise self._missing(source, f"{split}/images/*.jpg")
    orphans = sorted(set(truths) - set(images))
    if orphans:  # an image lost from a damaged archive, say: its heads would vanish
      raise CrowdDataError(
          f"{source.describe(truths[orphans[0]])}: no image {split}/images/{orphans[0]}.jpg "
          f"for this annotation ({len(orphans)} annotations without their image)."
      )
    if len(label_files) != 1:
      raise self._missing(
          source, f"exactly one {split}/image_labels.txt (found {len(label_files)})"
      )
    labels_where = source.describe(label_files[0])
    labels = parse_image_labels(
        decode_text(source.read_bytes(label_files[0]), labels_where), labels_where
    )
    report = SplitReport(self.name, split)
    for stem, image_name in sorted(images.items()):
      if stem not in truths:
        raise CrowdDataError(f"{source.describe(image_name)}: no annotation gt/{stem}.txt.")
      if stem not in labels:
        raise CrowdDataError(f"{labels_where}: no line for image {stem}.")
      where = source.describe(truths[stem])
      heads = parse_head_lines(decode_text(source.read_bytes(truths[stem]), where), where)
      count, scene, weather, distractor = labels[stem]
      yield self._example(
          report,
          source.read_bytes(image_name),
          source.describe(image_name),
          f"{split}/{stem}.jpg",
          heads[:, :2],
          annotation=where,
          annotated_count=count,
          per_head={
              "head_size": heads[:, 2:4].astype(np.float32),
              "occlusion": heads[:, 4].astype(np.int32),
              "blur": heads[:, 5].astype(np.int32),
          },
          scene=scene,
          weather=weather,
          distractor=distractor,
      )
    report.log_summary()
