"""What every crowd dataset builder shares: features, storage, validation, reporting.

Storage: `array_record`, so training reads examples by index through
`tfds.data_source` and grain without TensorFlow. Images are stored as the *original
encoded bytes* (`tfds.features.Tensor` of bytes), not as `tfds.features.Image`:
re-encoding a JPEG would lose quality, decoding-then-storing raw pixels would multiply
the size by ~10, and `Image` needs TensorFlow to encode. Decoding happens in the input
pipeline (Pillow); the builder decodes each image once to validate it and to record its
height and width.

Every example has:
  image           encoded image bytes exactly as distributed (JPEG)
  points          float32 (N, 2) head positions (x, y) in pixels of the stored image
  count           int32, N (number of head points kept)
  filename        the file name (relative to its dataset's root)
  height, width   int32, of the stored (not EXIF-rotated) image
  dropped_points  int32, annotated points more than BORDER_TOLERANCE (1 px) outside
                  the image, dropped at build time
  clipped_points  int32, annotated points within 1 px outside the image, moved onto
                  its border and kept

Bad data never disappears silently: an unreadable image or annotation fails the build
with the file's name and the reason (`CrowdDataError`); points outside
[0, width] x [0, height] are clipped or dropped, logged per image and counted;
an annotation's own count field that disagrees with its points is logged; each split
ends with a summary line.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from tfds_crowd.manual_source import ManualSource, MissingDataError

DEFAULT_FILE_FORMAT = "array_record"
# Annotators click up to a pixel past the edge (UCF_CC_50 image 1 has heads at x = 984.26
# in a 984-pixel-wide image). Such points are moved onto the border, not dropped.
BORDER_TOLERANCE = 1.0


class CrowdDataError(ValueError):
  """A file of the manual download cannot be used; the message names it."""


def common_features() -> dict[str, tfds.features.FeatureConnector]:
  return {
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "points": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
      "count": tfds.features.Scalar(dtype=np.int32),
      "filename": tfds.features.Text(),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "dropped_points": tfds.features.Scalar(dtype=np.int32),
      "clipped_points": tfds.features.Scalar(dtype=np.int32),
  }


def image_size(data: bytes, where: str) -> tuple[int, int]:
  """(height, width) of encoded image bytes, fully decoded to catch truncated files."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      width, height = image.size
  except Exception as error:  # Pillow raises many types for bad files.
    raise CrowdDataError(f"{where}: cannot decode the image ({error}).") from error
  return height, width


def as_points(values: Any, where: str) -> np.ndarray:
  """An (N, 2) float array from annotation values, or a `CrowdDataError`."""
  try:
    points = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise CrowdDataError(f"{where}: head points are not numeric ({error}).") from error
  if points.size == 0:
    return np.zeros((0, 2))
  if points.ndim != 2 or points.shape[1] != 2:
    raise CrowdDataError(
        f"{where}: head points must be an (N, 2) array of (x, y), got shape {points.shape}."
    )
  return points


class SplitReport:
  """Tallies what a split's generation dropped or found inconsistent, and logs it."""

  def __init__(self, dataset: str, split: str):
    self.dataset, self.split = dataset, split
    self.images = self.points = self.dropped = self.images_with_dropped = 0
    self.clipped = 0
    self.count_mismatches = 0

  def log_summary(self):
    logging.info(
        "%s/%s: %d images, %d head points kept (%d moved onto the border), %d points "
        "outside their image dropped (from %d images), %d images whose count field "
        "disagrees with their points.",
        self.dataset,
        self.split,
        self.images,
        self.points,
        self.clipped,
        self.dropped,
        self.images_with_dropped,
        self.count_mismatches,
    )


class CrowdBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the crowd builders: `array_record` by default, common features."""

  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or DEFAULT_FILE_FORMAT, **kwargs)

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    """Dataset-specific features added to `common_features()`."""
    return {}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({**common_features(), **self._extra_features()}),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
    )

  def _manual_source(self, dl_manager) -> ManualSource:
    """The manual download (TFDS itself refuses a missing or empty `manual_dir`)."""
    return ManualSource(dl_manager.manual_dir)

  def _missing(self, source: ManualSource, what: str) -> MissingDataError:
    return MissingDataError(
        f"{self.name}: {what} not found in {source.root} ({len(source)} files looked "
        f"at, zip members included).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )

  def _example(
      self,
      report: SplitReport,
      data: bytes,
      where: str,
      filename: str,
      points: Any,
      *,
      annotated_count: int | None = None,
      per_head: dict[str, np.ndarray] | None = None,
      **extra,
  ) -> tuple[str, dict]:
    """Validates one image and its points and returns its (key, example).

    `data` is the encoded image and `where` names it in messages. `per_head` arrays
    have one row per annotated point and are filtered with the points; `extra` values
    go into the example unchanged.
    """
    height, width = image_size(data, where)
    points = as_points(points, where)
    finite = np.isfinite(points).all(1)
    size = np.array([width, height])
    inside = finite & (points >= 0).all(1) & (points <= size).all(1)
    kept = (
        finite & (points >= -BORDER_TOLERANCE).all(1) & (points <= size + BORDER_TOLERANCE).all(1)
    )
    clipped, dropped = int((kept & ~inside).sum()), int((~kept).sum())
    points = np.clip(points[kept], 0, size)
    report.images += 1
    report.points += len(points)
    report.clipped += clipped
    if dropped:
      report.dropped += dropped
      report.images_with_dropped += 1
      logging.warning(
          "%s: dropped %d of %d head points more than %g px outside the %dx%d image.",
          where,
          dropped,
          len(kept),
          BORDER_TOLERANCE,
          width,
          height,
      )
    if clipped:
      logging.warning(
          "%s: moved %d head points that lie within %g px outside the %dx%d "
          "image onto its border.",
          where,
          clipped,
          BORDER_TOLERANCE,
          width,
          height,
      )
    if annotated_count is not None and annotated_count != len(kept):
      report.count_mismatches += 1
      logging.warning(
          "%s: the annotation's count field says %d but it lists %d points.",
          where,
          annotated_count,
          len(kept),
      )
    example = {
        "image": data,
        "points": points.astype(np.float32).reshape(-1, 2),
        "count": len(points),
        "filename": filename,
        "height": height,
        "width": width,
        "dropped_points": dropped,
        "clipped_points": clipped,
        **{name: values[kept] for name, values in (per_head or {}).items()},
        **extra,
    }
    if annotated_count is not None:
      example["annotated_count"] = annotated_count
    return filename, example
