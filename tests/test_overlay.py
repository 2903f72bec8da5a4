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


def test_points_and_regions_are_drawn_where_they_are_at_the_overlays_scale():
  """A 400x200 image drawn at most 200 wide: a point at (300, 100) lands at (150, 50),
  a region's outline along its edges, and its label at its first vertex."""
  image = np.full((200, 400, 3), 128, np.uint8)
  density = np.zeros((50, 100), np.float32)
  square = np.array([[40.0, 100.0], [240.0, 100.0], [240.0, 180.0], [40.0, 180.0]])
  picture = np.asarray(
      render_overlay(image, density, 1.0, 200, np.array([[300.0, 100.0]]), [("gate", square, 1.0)])
  ).astype(int)
  assert picture.shape == (100, 200, 3)
  assert (picture[50, 150] == 255).all()  # the point's white centre
  assert (picture[48:53, 140:146] == 128).all()  # nothing else near it
  assert (picture[70:89, 120] != 128).any(axis=-1).all()  # right edge (x = 240 / 2), drawn
  assert (picture[70:85, 110] == 128).all()  # inside the square, away from its label: the image
  assert (picture[51:56, 21:30] == 0).any()  # the label box at the first vertex (20, 50)


def test_points_and_regions_of_a_larger_picture_are_drawn_on_its_resized_image():
  """Points and regions in the pixels of an 800x400 picture that the image shows at
  400x200 (the model's view after `data.max_side`) land where they are on the picture:
  (600, 200) of the picture is (150, 50) of a 200-wide overlay, as (300, 100) of the
  image is in the test above."""
  image = np.full((200, 400, 3), 128, np.uint8)
  density = np.zeros((50, 100), np.float32)
  square = np.array([[80.0, 200.0], [480.0, 200.0], [480.0, 360.0], [80.0, 360.0]])
  picture = np.asarray(
      render_overlay(
          image,
          density,
          1.0,
          200,
          np.array([[600.0, 200.0]]),
          [("gate", square, 1.0)],
          picture_size=(400, 800),
      )
  ).astype(int)
  same = np.asarray(
      render_overlay(
          image, density, 1.0, 200, np.array([[300.0, 100.0]]), [("gate", square / 2, 1.0)]
      )
  ).astype(int)
  np.testing.assert_array_equal(picture, same)
  assert (picture[50, 150] == 255).all()
