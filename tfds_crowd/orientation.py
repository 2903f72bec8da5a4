"""EXIF orientation: which pixels an annotation's points refer to, and storing the
picture so that the training pipeline sees those pixels.

A phone photo is often stored sideways with an EXIF orientation tag that tells viewers
to turn it. Browsers and LabelMe show it turned (the DISPLAY frame) and their points
refer to the turned picture; scripts and MATLAB read the stored pixels (the STORED
frame). The input pipeline decodes with Pillow and does not apply EXIF, and people
should stand upright in training crops, so a picture whose orientation is not 1 is
stored upright: its EXIF orientation applied and re-encoded losslessly as PNG (the
original bytes are kept for every other picture), with its points in that upright
frame (DISPLAY points unchanged, STORED points turned with the picture).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

from tfds_crowd.crowd_builder import image_size
from tfds_crowd.manual_source import CrowdDataError
from tfds_crowd.point_annotations import DISPLAY, STORED

ORIENTATION_TAG = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A picture's stored size and its EXIF orientation (1 when absent or invalid)."""

  width: int
  height: int
  orientation: int

  @property
  def stored_size(self) -> tuple[int, int]:
    return self.width, self.height

  @property
  def display_size(self) -> tuple[int, int]:
    if self.orientation in TRANSPOSED:
      return self.height, self.width
    return self.width, self.height

  @property
  def turned(self) -> bool:
    return self.orientation != 1


def geometry(data: bytes, where: str) -> Geometry:
  """The picture's `Geometry` from its header; an unreadable picture raises the
  builders' `CrowdDataError` (`image_size`'s message)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      orientation = image.getexif().get(ORIENTATION_TAG, 1)
  except Exception:  # Pillow raises many types for bad files
    image_size(data, where)
    raise
  if not isinstance(orientation, int) or not 1 <= orientation <= 8:
    orientation = 1  # as viewers treat an invalid tag
  return Geometry(width, height, orientation)


def annotation_frame(
    default: str, declared: tuple[int, int] | None, picture: Geometry, where: str
) -> str:
  """The frame an annotation's points are in: the one whose size matches the size the
  annotation declares (when only one does), else the format's `default`. A declared size
  matching neither is a `CrowdDataError` naming `where`."""
  if declared is None:
    return default
  sizes = {STORED: picture.stored_size, DISPLAY: picture.display_size}
  fits = [frame for frame, size in sizes.items() if size == tuple(declared)]
  if not fits:
    shown = ""
    if picture.display_size != picture.stored_size:
      shown = f", {picture.display_size[0]}x{picture.display_size[1]} as displayed"
    raise CrowdDataError(
        f"{where}: the annotation is for a {declared[0]}x{declared[1]} picture, but the "
        f"picture is {picture.width}x{picture.height}{shown}: a different or resized picture?"
    )
  return fits[0] if len(fits) == 1 else default


def stored_to_display(points: np.ndarray, picture: Geometry) -> np.ndarray:
  """(N, 2) points (x, y) in stored pixels -> the same places in the displayed picture
  (the picture turned by its EXIF orientation; Pillow's `ImageOps.exif_transpose`)."""
  w, h = picture.width, picture.height
  x, y = points[:, 0], points[:, 1]
  mapped = {
      1: (x, y),
      2: (w - x, y),  # mirrored left-right
      3: (w - x, h - y),  # turned 180 degrees
      4: (x, h - y),  # mirrored top-bottom
      5: (y, x),  # transposed
      6: (h - y, x),  # turned 90 degrees clockwise
      7: (h - y, w - x),  # transversed
      8: (y, w - x),  # turned 90 degrees counter-clockwise
  }[picture.orientation]
  return np.stack(mapped, axis=1).reshape(-1, 2)


def upright_png(data: bytes, where: str) -> bytes:
  """The picture with its EXIF orientation applied, as a PNG without EXIF (lossless:
  the decoded pixels, turned)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      upright = ImageOps.exif_transpose(image)
      if upright.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        upright = upright.convert("RGB")  # CMYK, YCbCr, ...: PNG has no such modes
      output = io.BytesIO()
      upright.save(output, format="PNG")
  except Exception as error:  # Pillow raises many types for bad files
    raise CrowdDataError(f"{where}: cannot turn the picture upright ({error}).") from error
  return output.getvalue()
