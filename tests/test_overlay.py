"""Overlays: the density over the picture, with the count."""

import numpy as np
from PIL import Image

from cfrnet_jax.inference.overlay import render_overlay
from tests.conftest import shared_data


def real_photo():
  path = shared_data("sht_sample") / "images" / "IMG_5.jpg"
  return np.asarray(Image.open(path).convert("RGB").resize((256, 192)))


def test_overlay_leaves_empty_regions_unchanged_and_writes_the_count():
  photo = real_photo()
  density = np.zeros((48, 64), np.float32)
  density[30:40, 40:60] = 1.0
  picture = np.asarray(render_overlay(photo, density, 200.0, max_side=2048))
  assert picture.shape == photo.shape
  # Far from the dense block and below the count box, the photo shows through unchanged.
  np.testing.assert_array_equal(picture[60:100, :100], photo[60:100, :100])
  assert np.abs(picture[130:150, 170:230].astype(int) - photo[130:150, 170:230]).mean() > 20
  assert (picture[:2, :2] == 0).all() and (picture[:20, :100] == 255).any()  # the label.


def test_large_pictures_get_an_overlay_of_at_most_max_side():
  picture = render_overlay(
      np.zeros((900, 3000, 3), np.uint8), np.ones((225, 750)), 3.0, max_side=1000
  )
  assert picture.size == (1000, 300)
