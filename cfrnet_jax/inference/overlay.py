"""A picture of a prediction: the density map over the image, with the count on it.

The density map (one cell per 4x4 pixels) is resized to the image, scaled by its own
maximum, coloured from blue (few) through yellow to red (most) and blended over the image
with an opacity that grows with the density, so empty regions show the photo unchanged.
The count is written in the top-left corner. Overlays are drawn at most `max_side`
pixels on the longer side (a 10,000-pixel photo does not need a 10,000-pixel preview).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (position in [0, 1], RGB) control points of the colour ramp, interpolated linearly.
_RAMP = ((0.0, (40, 40, 200)), (0.35, (0, 170, 255)), (0.65, (255, 225, 0)), (1.0, (230, 20, 0)))
_MAX_OPACITY = 0.7


def colorize(values: np.ndarray) -> np.ndarray:
  """(H, W) values in [0, 1] -> (H, W, 3) float RGB in [0, 255] along `_RAMP`."""
  positions = np.array([p for p, _ in _RAMP])
  colours = np.array([c for _, c in _RAMP], np.float32)
  return np.stack([np.interp(values, positions, colours[:, i]) for i in range(3)], -1)


def render_overlay(
    image: np.ndarray, density: np.ndarray, count: float, max_side: int
) -> Image.Image:
  """(H, W, 3) uint8 image and its density map -> an RGB PIL image whose longer side is
  at most `max_side` (`config.predict.overlay_max_side`)."""
  height, width = image.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  base = Image.fromarray(image)
  if scale < 1:
    base = base.resize(size, Image.BILINEAR)
  # Cell (i, j) covers pixels [4i, 4i + 4) x [4j, 4j + 4) of the (possibly resized)
  # image the model saw; resizing the map to the image's size lines them up.
  heat = np.asarray(
      Image.fromarray(density.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
  )
  peak = float(heat.max())
  heat = np.clip(heat / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heat)
  alpha = (_MAX_OPACITY * np.sqrt(heat))[..., None]
  blended = np.asarray(base, np.float32) * (1 - alpha) + colorize(heat) * alpha
  picture = Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8))
  _write_count(picture, count)
  return picture


def _write_count(picture: Image.Image, count: float) -> None:
  text = f"count {count:.1f}"
  font = ImageFont.load_default(size=max(12, min(picture.size) // 16))
  draw = ImageDraw.Draw(picture)
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  margin = max(2, (bottom - top) // 4)
  draw.rectangle((0, 0, right + 2 * margin, bottom + 2 * margin), fill=(0, 0, 0))
  draw.text((margin, margin), text, fill=(255, 255, 255), font=font)
