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
with the file's name and the reason (`CrowdDataError`: damaged or empty files, missing
keys, points that are not an (N, 2) array of real numbers, count fields that are not a
whole number); points outside [0, width] x [0, height] or with a NaN or infinite
coordinate are clipped or dropped, logged per image and counted; an annotation's own
count field that disagrees with its points is logged; each split ends with a summary
line. tests/test_annotation_fuzz.py lists every kind of damaged annotation tried.
"""

from __future__ import annotations

import io
import math
import numbers
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image, UnidentifiedImageError

from tfds_crowd.manual_source import CrowdDataError, ManualSource, MissingDataError

DEFAULT_FILE_FORMAT = "array_record"
# Annotators click up to a pixel past the edge (UCF_CC_50 image 1 has heads at x = 984.26
# in a 984-pixel-wide image). Such points are moved onto the border, not dropped.
BORDER_TOLERANCE = 1.0
INT32_MAX = 2**31 - 1


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
  if not data:
    raise CrowdDataError(f"{where}: cannot decode the image (the file is empty, 0 bytes).")
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      width, height = image.size
  except UnidentifiedImageError:
    raise CrowdDataError(
        f"{where}: cannot decode the image (not an image format Pillow recognises)."
    ) from None
  except Exception as error:  # Pillow raises many types for bad files.
    raise CrowdDataError(f"{where}: cannot decode the image ({error}).") from error
  return height, width


def as_points(values: Any, where: str) -> np.ndarray:
  """An (N, 2) float64 array of (x, y) from annotation values, or a `CrowdDataError`.

  Accepts only real numbers (no strings, booleans, complex numbers, nulls or MATLAB
  cells); NaN, infinite and out-of-image values pass and are dropped, and counted, by
  `screen_points`. Empty input ([], MATLAB's 0x0, 0x2 or 1x0) is no heads.
  """
  if isinstance(values, np.ndarray) and values.dtype == object:
    raise CrowdDataError(
        f"{where}: head points are a MATLAB cell or object array of shape "
        f"{values.shape}, not a numeric (N, 2) array."
    )
  points = values
  if not isinstance(values, np.ndarray):  # Python values, e.g. from JSON: check each one
    try:
      cells = np.array(values, dtype=object)
    except ValueError as error:
      raise CrowdDataError(
          f"{where}: head points are not an (N, 2) array of numbers ({error})."
      ) from error
    for value in cells.reshape(-1):
      if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise CrowdDataError(
            f"{where}: head points are not an (N, 2) array of numbers: found {value!r} "
            f"({type(value).__name__})."
        )
    try:
      points = np.array([float(v) for v in cells.reshape(-1)], np.float64).reshape(cells.shape)
    except OverflowError as error:  # an integer beyond float64
      raise CrowdDataError(f"{where}: a head coordinate is too large ({error}).") from error
  if points.dtype.kind not in "iuf":
    raise CrowdDataError(
        f"{where}: head points must be real numbers, got an array of {points.dtype} "
        f"(shape {points.shape})."
    )
  points = points.astype(np.float64)
  if points.size == 0 and (
      points.ndim == 1 or (points.ndim == 2 and (len(points) == 0 or points.shape == (1, 0)))
  ):
    return np.zeros((0, 2))
  if points.ndim != 2 or points.shape[1] != 2:
    raise CrowdDataError(
        f"{where}: head points must be an (N, 2) array of (x, y), got shape {points.shape}."
    )
  return points


def as_count(value: Any, where: str, field: str) -> int:
  """An annotation's own head count (`field` names it in messages): one whole number
  in [0, 2**31 - 1], or a `CrowdDataError`. Accepts MATLAB's 1x1 arrays."""
  if isinstance(value, (str, bytes)):
    raise CrowdDataError(f"{where}: {field} must be a number, got {value!r}.")
  array = np.asarray(value) if not isinstance(value, (int, float)) else None
  if array is not None:
    if array.size != 1:
      raise CrowdDataError(
          f"{where}: {field} must be one number, got {array.size} values (shape {array.shape})."
      )
    value = array.reshape(-1)[0]
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise CrowdDataError(f"{where}: {field} must be a number, got {value!r}.")
  if isinstance(value, (float, np.floating)):
    if not math.isfinite(value) or value != int(value):
      raise CrowdDataError(f"{where}: {field} must be a whole number, got {float(value)}.")
  count = int(value)
  if not 0 <= count <= INT32_MAX:
    raise CrowdDataError(f"{where}: {field} must be in [0, {INT32_MAX}], got {count}.")
  return count


def decode_text(data: bytes, where: str) -> str:
  """A text annotation file's contents (UTF-8, an optional BOM), or a `CrowdDataError`."""
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    raise CrowdDataError(f"{where}: not a UTF-8 text file ({error}).") from None
  if "\x00" in text:
    raise CrowdDataError(f"{where}: not a text file (it holds NUL bytes).")
  return text


class Screened(NamedTuple):
  """`screen_points`' verdict on an image's annotated points."""

  points: np.ndarray  # (K, 2) the kept points, clipped onto the image
  kept: np.ndarray  # (N,) bool, which annotated points were kept
  clipped: int  # kept points that were within BORDER_TOLERANCE outside, moved inside
  nonfinite: int  # dropped: a NaN or infinite coordinate
  outside: int  # dropped: more than BORDER_TOLERANCE outside the image


def screen_points(points: np.ndarray, width: int, height: int) -> Screened:
  """Keeps the (N, 2) points inside [0, width] x [0, height] (moving those within
  BORDER_TOLERANCE outside onto the border) and counts what it drops, and why."""
  finite = np.isfinite(points).all(1)
  size = np.array([width, height])
  with np.errstate(invalid="ignore"):
    inside = finite & (points >= 0).all(1) & (points <= size).all(1)
    kept = (
        finite & (points >= -BORDER_TOLERANCE).all(1) & (points <= size + BORDER_TOLERANCE).all(1)
    )
  return Screened(
      points=np.clip(points[kept], 0, size),
      kept=kept,
      clipped=int((kept & ~inside).sum()),
      nonfinite=int((~finite).sum()),
      outside=int((finite & ~kept).sum()),
  )


class SplitReport:
  """Tallies what a split's generation dropped or found inconsistent, and logs it."""

  def __init__(self, dataset: str, split: str):
    self.dataset, self.split = dataset, split
    self.images = self.points = self.dropped = self.images_with_dropped = 0
    self.clipped = 0
    self.nonfinite = 0  # of `dropped`: points with a NaN or infinite coordinate
    self.count_mismatches = 0

  def log_summary(self):
    logging.info(
        "%s/%s: %d images, %d head points kept (%d moved onto the border), %d points "
        "dropped (%d outside their image, %d with NaN or infinite coordinates; from %d "
        "images), %d images whose count field disagrees with their points.",
        self.dataset,
        self.split,
        self.images,
        self.points,
        self.clipped,
        self.dropped,
        self.dropped - self.nonfinite,
        self.nonfinite,
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
      annotation: str | None = None,
      annotated_count: int | None = None,
      per_head: dict[str, np.ndarray] | None = None,
      **extra,
  ) -> tuple[str, dict]:
    """Validates one image and its points and returns its (key, example).

    `data` is the encoded image and `where` names it in messages, with `annotation`,
    the annotation file the points come from (as `ManualSource.describe` names it), where
    there is one. `annotated_count` is the annotation's own count field. `per_head` arrays
    have one row per annotated point and are filtered with the points; `extra` values
    go into the example unchanged.
    """
    height, width = image_size(data, where)
    label = f"{where} (points from {annotation})" if annotation else where
    screened = screen_points(as_points(points, annotation or where), width, height)
    points, kept, clipped = screened.points, screened.kept, screened.clipped
    dropped = screened.nonfinite + screened.outside
    report.images += 1
    report.points += len(points)
    report.clipped += clipped
    if dropped:
      report.dropped += dropped
      report.nonfinite += screened.nonfinite
      report.images_with_dropped += 1
      logging.warning(
          "%s: dropped %d of %d head points: %d more than %g px outside the %dx%d image, "
          "%d with NaN or infinite coordinates.",
          label,
          dropped,
          len(kept),
          screened.outside,
          BORDER_TOLERANCE,
          width,
          height,
          screened.nonfinite,
      )
    if clipped:
      logging.warning(
          "%s: moved %d head points that lie within %g px outside the %dx%d "
          "image onto its border.",
          label,
          clipped,
          BORDER_TOLERANCE,
          width,
          height,
      )
    if annotated_count is not None and annotated_count != len(kept):
      report.count_mismatches += 1
      logging.warning(
          "%s: the annotation's count field says %d but it lists %d points.",
          annotation or where,
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
