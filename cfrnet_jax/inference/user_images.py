"""The user's own pictures -> (H, W, 3) uint8 RGB, whatever they came as.

Dataset images go through `data.geometry.decode_image`; this module is for what a user
hands to `CrowdCounter` or to `launch.py --mode predict`: a path, a PIL image or a numpy
array, in any mode Pillow opens. What each kind becomes:

* EXIF orientation is applied (phone photos are stored sideways with a rotation tag), so
  the density map and overlay match the picture as every viewer shows it;
* grayscale is replicated to three channels (the model was trained with 10% grayscale
  crops, section 4.1); 16-bit images are scaled to 8 bits;
* transparency (RGBA, LA, palette with a transparent colour) is composited over the
  ImageNet mean colour, which the model sees as zero input - the same neutral value as
  its own padding - rather than over black or white, which it could read as structure;
* numpy arrays: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 as is, uint16 scaled,
  floats taken as [0, 1] when their maximum is at most 1 and as [0, 255] otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ImageSource = str | Path | Image.Image | np.ndarray

# What a directory given to `collect_images` is searched for.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def describe(source: ImageSource) -> str:
  """A short name for messages: the path, or the kind of in-memory image."""
  if isinstance(source, (str, Path)):
    return str(source)
  if isinstance(source, np.ndarray):
    return f"numpy array {source.shape} {source.dtype}"
  return f"PIL image {source.size} {source.mode}"


def load_image(source: ImageSource, background: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 RGB of `source`; `background` (3,) uint8 fills transparent pixels.

  Raises ValueError naming the source when it cannot be read or has an unusable shape.
  """
  try:
    if isinstance(source, (str, Path)):
      with Image.open(source) as image:
        return _to_rgb(ImageOps.exif_transpose(image), background)
    if isinstance(source, Image.Image):
      return _to_rgb(ImageOps.exif_transpose(source), background)
    if isinstance(source, np.ndarray):
      return _to_rgb(_array_to_pil(source), background)
  except ValueError as error:
    raise ValueError(f"{describe(source)}: {error}") from error
  except Exception as error:  # Pillow raises many types for unreadable files.
    raise ValueError(f"{describe(source)}: cannot read the image ({error}).") from error
  raise TypeError(f"Expected a path, a PIL image or a numpy array, got {type(source)}.")


def _array_to_pil(array: np.ndarray) -> Image.Image:
  if array.ndim == 3 and array.shape[2] == 1:
    array = array[..., 0]
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
    raise ValueError(
        f"an image array must be (H, W), (H, W, 1), (H, W, 3) or "
        f"(H, W, 4) (channels last), got shape {array.shape}."
    )
  if array.size == 0:
    raise ValueError(f"the image is empty (shape {array.shape}).")
  if array.dtype == np.uint16:
    array = array / 257.0
  elif array.dtype == bool:
    array = array * 255.0
  elif np.issubdtype(array.dtype, np.floating):
    if not np.isfinite(array).all():
      raise ValueError("the image array holds NaN or inf.")
    array = array * 255.0 if array.max() <= 1.0 else array
  elif array.dtype != np.uint8:
    raise ValueError(f"unsupported image dtype {array.dtype} (use uint8, uint16, bool or float).")
  array = np.clip(np.round(array), 0, 255).astype(np.uint8)
  return Image.fromarray(array)


def _to_rgb(image: Image.Image, background: np.ndarray) -> np.ndarray:
  if image.mode in _SIXTEEN_BIT_MODES:
    scaled = np.asarray(image, np.float64) / 257.0
    image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
  elif image.mode == "F":
    image = Image.fromarray(np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8))
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
    under = Image.new("RGBA", image.size, tuple(int(v) for v in background) + (255,))
    image = Image.alpha_composite(under, image.convert("RGBA"))
  pixels = np.asarray(image.convert("RGB"))
  if pixels.size == 0:
    raise ValueError("the image is empty (0 pixels).")
  return pixels


def collect_images(patterns: list[str]) -> tuple[list[Path], int]:
  """The files named by `patterns` (files, directories searched recursively for
  `IMAGE_SUFFIXES`, or glob patterns), in order without repeats, and how many other
  files the directories held (reported, not read)."""
  import glob

  files, ignored = [], 0
  for pattern in patterns:
    path = Path(pattern).expanduser()
    if path.is_dir():
      found = sorted(p for p in path.rglob("*") if p.is_file())
      matched = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
      ignored += len(found) - len(matched)
    elif path.is_file():
      matched = [path]
    else:
      matched = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not matched:
      raise FileNotFoundError(f"--images {pattern!r} matches no image file.")
    files += matched
  return list(dict.fromkeys(files)), ignored
