"""A procedurally generated crowd dataset that needs no download.

It is the default dataset of the quick start and of the tests: deterministic (image k of
a split is a pure function of the split's seed and k), a few seconds to build on CPU, and
crowd-like enough that a counting model must learn something real: heads whose size
grows towards the bottom of the frame (perspective), clustered groups, bodies under the
heads, smooth textured backgrounds with building-like blocks as distractors, and about one
image in ten with nobody in it.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from tfds_crowd.crowd_builder import CrowdBuilder, SplitReport

SPLIT_SEEDS = {"train": 0, "test": 1}
SPLIT_SIZES = {"train": 240, "test": 60}
HEIGHT_RANGE = (224, 320)
WIDTH_RANGE = (256, 384)
MAX_HEADS = 160
EMPTY_FRACTION = 0.1
SKIN = ((224, 172, 105), (241, 194, 125), (198, 134, 66), (141, 85, 36), (255, 219, 172))


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
  """Sky-to-ground gradient + smooth colour noise + a few building-like blocks."""
  coarse = rng.uniform(60, 200, size=(height // 32 + 2, width // 32 + 2, 3))
  texture = np.asarray(
      Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR), np.float32
  )
  ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  sky, ground = rng.uniform(120, 230, 3), rng.uniform(40, 140, 3)
  pixels = 0.5 * texture + 0.5 * (sky * (1 - ramp) + ground * ramp)
  pixels += rng.normal(0, 6, size=pixels.shape)
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(0, 4)):
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height * 0.6)
    draw.rectangle(
        [x0, y0, x0 + rng.uniform(20, 90), y0 + rng.uniform(30, 120)],
        fill=tuple(int(v) for v in rng.uniform(50, 220, 3)),
    )
  return image


def _head_positions(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
  """(count, 2) (x, y) from a few Gaussian groups plus a uniform scatter."""
  groups = rng.integers(1, 4)
  centres = np.stack([rng.uniform(0, width, groups), rng.uniform(0.2, 1.0, groups) * height], 1)
  spread = rng.uniform(0.08, 0.25, (groups, 1)) * np.array([width, height])
  member = rng.integers(0, groups, count)
  clustered = centres[member] + rng.normal(size=(count, 2)) * spread[member]
  scattered = np.stack([rng.uniform(0, width, count), rng.uniform(0.15, 1.0, count) * height], 1)
  positions = np.where((rng.uniform(size=count) < 0.7)[:, None], clustered, scattered)
  return np.clip(positions, [0, 0.1 * height], [width - 1e-3, height - 1e-3])


def render_crowd_image(rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
  """One JPEG and its (N, 2) head points (x, y)."""
  height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
  width = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
  image = _background(rng, height, width)
  count = 0 if rng.uniform() < EMPTY_FRACTION else int(rng.integers(5, MAX_HEADS + 1))
  points = _head_positions(rng, count, height, width)
  points = points[np.argsort(points[:, 1])]  # far (top) first, near heads drawn over them
  draw = ImageDraw.Draw(image)
  for x, y in points:
    radius = 2.0 + 9.0 * y / height  # perspective: heads grow towards the camera
    body = tuple(int(v) for v in rng.uniform(20, 235, 3))
    draw.ellipse(
        [x - 1.9 * radius, y + 0.8 * radius, x + 1.9 * radius, y + 3.2 * radius], fill=body
    )
    draw.ellipse(
        [x - radius, y - radius, x + radius, y + radius], fill=SKIN[rng.integers(len(SKIN))]
    )
    hair = tuple(int(v) for v in rng.uniform(10, 90, 3))
    draw.pieslice([x - radius, y - radius, x + radius, y + radius], 180, 360, fill=hair)
  encoded = io.BytesIO()
  image.save(encoded, format="JPEG", quality=90)
  return encoded.getvalue(), points.astype(np.float32)


class SyntheticCrowd(CrowdBuilder):
  """Synthetic crowds: 240 train / 60 test images of 224-320 x 256-384 pixels with 0-160
  heads each, generated deterministically with no download (see `synthetic_crowd.py`)."""

  name = "synthetic_crowd"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    report = SplitReport(self.name, split)
    for index in range(SPLIT_SIZES[split]):
      name = f"{split}_{index:04d}.jpg"
      data, points = render_crowd_image(np.random.default_rng([SPLIT_SEEDS[split], index]))
      yield self._example(report, data, f"synthetic image {name}", name, points)
    report.log_summary()
