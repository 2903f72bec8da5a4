"""Image geometry on the host (numpy and Pillow only): sizes, resizing, padding.

Shared by the training pipeline (`data.pipeline`), evaluation and the inference side
(`inference.counter`, `inference.tiling`), so that a picture is resized and padded the
same way wherever it is counted.

Padding rule for every whole-picture forward pass (evaluation and prediction): each side
is padded at the bottom and right, with the colour that normalises to zero, up to the
next multiple of the model's padding multiple m (`models.cfrnet.pad_multiple`, 128 for
the paper's windows) - exactly what the model pads a picture to itself. The padded input
is then the model's own view of the unpadded picture, so evaluation, prediction and a
direct call of the model (or an exported one) give the same count, and no compute is
spent beyond the least padding the windows need. XLA compiles once per padded shape:
sides up to 2048 pixels fall into 16 sizes per axis, and a folder of same-sized photos
compiles once. (A coarser ladder of sizes would compile less often for mixed folders, but
pads sides by up to a quarter more, which costs compute on every picture and, through
GAM's global attention, changes the count slightly.) Only the density cells that hold
picture pixels are summed (`data.device_ops.valid_mask`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def ceil_div(numerator, denominator):
  """ceil(numerator / denominator) for integers (also numpy and jax integer arrays)."""
  return -(-numerator // denominator)


def round_up(length: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is at least `length`."""
  return ceil_div(length, multiple) * multiple


def mean_colour(mean: tuple[float, float, float]) -> np.ndarray:
  """The uint8 RGB colour that normalises to (about) zero for the per-channel `mean` in
  [0, 1]: what pictures are padded with and what transparency is composited over."""
  return np.round(255 * np.asarray(mean)).astype(np.uint8)


def fit_max_side(image: Image.Image, max_side: int) -> Image.Image:
  """`image` resized (bilinear, to RGB) so that its longer side is at most `max_side`;
  unchanged when it already fits or `max_side` is 0."""
  width, height = image.size
  scale = max_side / max(width, height) if max_side else 1.0
  if scale >= 1.0:
    return image
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  image.draft("RGB", size)  # JPEG: decode at a reduced DCT scale when possible.
  return image.convert("RGB").resize(size, Image.BILINEAR)


def decode_image(data: bytes, max_side: int, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Encoded bytes -> (H, W, 3) uint8 RGB, resized so that max(H, W) <= max_side
  (0 = no limit), and the (x, y) factors by which points must be scaled. Raises
  ValueError naming `where` when the bytes are not a readable image."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      pixels = np.asarray(fit_max_side(image, max_side).convert("RGB"))
  except Exception as error:  # Pillow raises many types for bad files.
    raise ValueError(f"{where}: cannot decode the image ({error}).") from error
  return pixels, np.array([pixels.shape[1] / width, pixels.shape[0] / height], np.float32)


def pad_image(image: np.ndarray, shape: tuple[int, int], fill: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 -> `shape` + (3,), the image at the top left, the rest `fill`."""
  padded = np.empty((*shape, 3), np.uint8)
  padded[...] = fill
  padded[: image.shape[0], : image.shape[1]] = image
  return padded


def pad_to_multiple(image: np.ndarray, multiple: int, fill: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 padded with `fill` to the next multiple of `multiple` on each side
  (the module's padding rule)."""
  height, width = image.shape[:2]
  return pad_image(image, (round_up(height, multiple), round_up(width, multiple)), fill)
