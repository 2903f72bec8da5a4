"""A picture of a prediction: the density map over the image, with the count on it.

The density map (one cell per 4x4 pixels) is resized to the image, scaled by its own
maximum, coloured from blue (few) through yellow to red (most) and blended over the image
with an opacity that grows with the density, so empty regions show the photo unchanged.
The count is written in the top-left corner. Head points, when given, are white dots
ringed in black (visible on any colour); regions are outlined in white over black with
their name and count at their first vertex. Overlays are drawn at most `max_side` pixels
on the longer side (a 10,000-pixel photo does not need a 10,000-pixel preview).

Points and regions are given in the pixels of the user's picture, as a `Prediction`
holds them; the image drawn on may be a resized copy of that picture (the model's view
after `data.max_side`), so they are scaled from the picture's size straight to the
overlay's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
  from cfrnet_jax.inference.counter import Prediction

# (position in [0, 1], RGB) control points of the colour ramp, interpolated linearly.
_RAMP = ((0.0, (40, 40, 200)), (0.35, (0, 170, 255)), (0.65, (255, 225, 0)), (1.0, (230, 20, 0)))
_MAX_OPACITY = 0.7
# Head dots: a radius of this share of the overlay's shorter side, at least the minimum
# (pixels), so that they stay visible on small overlays and do not cover large ones.
_POINT_RADIUS_SHARE = 1 / 150
_MIN_POINT_RADIUS = 2.5
# Labels: a font of this share of the overlay's shorter side, at least the minimum
# (pixels) that stays readable.
_FONT_SHARE = 1 / 16
_MIN_FONT_SIZE = 12
# Region outlines: a black line this wide (pixels) under a white one pixel wide.
_OUTLINE_WIDTH = 3


def colorize(values: np.ndarray) -> np.ndarray:
  """(H, W) values in [0, 1] -> (H, W, 3) float RGB in [0, 255] along `_RAMP`."""
  positions = np.array([p for p, _ in _RAMP])
  colours = np.array([c for _, c in _RAMP], np.float32)
  return np.stack([np.interp(values, positions, colours[:, i]) for i in range(3)], -1)


def draw_prediction(prediction: Prediction, max_side: int) -> Image.Image:
  """The overlay of `prediction`: density, head points and regions with their counts."""
  return render_overlay(
      prediction.image,
      prediction.density,
      prediction.count,
      max_side,
      points=prediction.points,
      regions=[
          (region.name, region.polygon, prediction.regions[region.name])
          for region in prediction.region_polygons
      ],
      picture_size=prediction.picture_size,
  )


def render_overlay(
    image: np.ndarray,
    density: np.ndarray,
    count: float,
    max_side: int,
    points: np.ndarray | None = None,
    regions: Sequence[tuple[str, np.ndarray, float]] = (),
    picture_size: tuple[int, int] | None = None,
) -> Image.Image:
  """(H, W, 3) uint8 image and its density map -> an RGB PIL image whose longer side is
  at most `max_side` (`config.predict.overlay_max_side`). `points` (N, 2) and each
  region's (name, (K, 2) polygon, count) are in the pixels of the picture that `image`
  shows, of (height, width) `picture_size` (default: the image's own size)."""
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
  picture_height, picture_width = picture_size or (height, width)
  factors = np.array([size[0] / picture_width, size[1] / picture_height])
  draw = ImageDraw.Draw(picture)
  font = _font(picture)
  outlines = [[tuple(v) for v in np.asarray(polygon) * factors] for _, polygon, _ in regions]
  for outline in outlines:
    draw.polygon(outline, outline=(0, 0, 0), width=_OUTLINE_WIDTH)
    draw.polygon(outline, outline=(255, 255, 255), width=1)
  if points is not None and len(points):
    radius = max(_MIN_POINT_RADIUS, min(size) * _POINT_RADIUS_SHARE)
    for x, y in np.asarray(points) * factors:
      draw.ellipse(
          (x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255), outline=(0, 0, 0)
      )
  # Labels last, over the points.
  for outline, (name, _, region_count) in zip(outlines, regions):
    _label(draw, outline[0], f"{name} {region_count:.1f}", font)
  _label(draw, (0, 0), f"count {count:.1f}", font)
  return picture


def _font(picture: Image.Image) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=max(_MIN_FONT_SIZE, int(min(picture.size) * _FONT_SHARE)))


def _label(draw: ImageDraw.ImageDraw, at: tuple[float, float], text: str, font) -> None:
  """White text on a black box whose top-left corner is `at`, with a margin of a
  quarter of the text's height (at least 2 pixels)."""
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  margin = max(2, (bottom - top) // 4)
  x, y = at
  draw.rectangle((x, y, x + right + 2 * margin, y + bottom + 2 * margin), fill=(0, 0, 0))
  draw.text((x + margin, y + margin), text, fill=(255, 255, 255), font=font)
