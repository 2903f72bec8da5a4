"""CrowdCounter: any picture a user has, tiles stitched exactly, one compilation per shape."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cfrnet_jax import localization
from cfrnet_jax.data.device_ops import valid_mask
from cfrnet_jax.data.geometry import mean_colour, round_up
from cfrnet_jax.inference import tiling
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.user_images import load_image
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE
from tests.conftest import (
    modules_imported_by,
    shared_data,
    tiny_train_config,
    without_compilation_cache,
)


def local_count_fn(channel: int = 0):
  """A stand-in for `evaluation.make_count_fn`'s function whose density depends on each
  cell's own pixels only (the mean of `channel` / 255), and whose count, as the real
  one's, sums the cells that hold picture pixels."""

  def count(variables, image, valid_size):
    del variables
    pixels = image[..., channel].astype(jnp.float32)
    batch, height, width = pixels.shape
    cells = pixels.reshape(batch, height // 4, 4, width // 4, 4).mean((2, 4)) / 255.0
    inside = valid_mask(valid_size, cells.shape[1:], 4)
    return jnp.sum(jnp.where(inside, cells, 0.0), axis=(1, 2)), cells

  return count


@pytest.fixture(scope="module")
def counter():
  """A freshly initialised tiny model (its counts are arbitrary but deterministic)."""
  return CrowdCounter.from_config(tiny_train_config(None))


@pytest.fixture(scope="module")
def photo():
  """A real crowd photo, shrunk to keep the tests fast: (192, 256, 3) uint8."""
  path = shared_data("sht_sample") / "images" / "IMG_5.jpg"
  return np.asarray(Image.open(path).convert("RGB").resize((256, 192)))


def test_grayscale_and_16_bit_inputs_count_as_their_rgb_equivalent(counter, photo):
  gray = np.asarray(Image.fromarray(photo).convert("L"))
  expected = counter.predict(np.repeat(gray[..., None], 3, axis=2))
  for source in (
      Image.fromarray(gray),
      gray,
      gray[..., None],
      Image.fromarray(gray.astype(np.uint16) * 257),
      gray / 255.0,
  ):
    got = counter.predict(source)
    np.testing.assert_array_equal(got.image, expected.image)
    assert got.count == expected.count


def test_transparency_is_composited_over_the_mean_colour(counter, photo):
  background = mean_colour(counter.config.data.mean)
  alpha = np.full(photo.shape[:2], 255, np.uint8)
  alpha[:, :100] = 0
  rgba = np.dstack([photo, alpha])
  expected = photo.copy()
  expected[:, :100] = background
  assert counter.count(Image.fromarray(rgba, "RGBA")) == counter.count(expected)
  assert counter.count(rgba) == counter.count(expected)
  opaque = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
  assert counter.count(opaque) == counter.count(photo)


def test_exif_rotated_photo_is_counted_upright(counter, photo, tmp_path):
  path = tmp_path / "sideways.jpg"
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: the stored pixels must be rotated 90 degrees clockwise.
  Image.fromarray(photo).save(path, quality=95, exif=exif)
  stored = np.asarray(Image.open(path).convert("RGB"))
  upright = np.ascontiguousarray(np.rot90(stored, k=-1))
  got = counter.predict(path)
  assert got.image.shape == (256, 192, 3)
  np.testing.assert_array_equal(got.image, upright)
  np.testing.assert_array_equal(got.density, counter.density(upright))


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 130), (127, 2)])
def test_images_smaller_than_the_padding_multiple(counter, shape):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
  got = counter.predict(image)
  assert got.density.shape == (-(-shape[0] // 4), -(-shape[1] // 4))
  assert np.isfinite(got.count) and got.count == pytest.approx(got.density.sum(), rel=1e-6)


def test_unusable_inputs_raise_errors_naming_them(counter, tmp_path):
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
  with pytest.raises(ValueError, match="corrupt.jpg"):
    counter.predict(corrupt)
  truncated = tmp_path / "truncated.jpg"
  buffer = io.BytesIO()
  Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "JPEG")
  truncated.write_bytes(buffer.getvalue()[:300])
  with pytest.raises(ValueError, match="truncated.jpg"):
    counter.predict(truncated)
  with pytest.raises(ValueError, match=r"\(3, 64, 64\)"):
    counter.predict(np.zeros((3, 64, 64), np.uint8))
  with pytest.raises(ValueError, match="int64"):
    counter.predict(np.zeros((8, 8, 3), np.int64))
  with pytest.raises(TypeError):
    load_image(42, np.zeros(3, np.uint8), counter.config.predict.max_megapixels)


def test_stitching_is_exact_for_a_local_model(counter, monkeypatch):
  """With a stand-in model whose density depends on each cell's own pixels only, tiles
  must reproduce the whole image's map cell for cell: checks every stitching index."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (1067, 1601, 3), dtype=np.uint8)
  whole = CrowdCounter(counter.config, None)
  monkeypatch.setattr(whole, "_count_fn", jax.jit(local_count_fn()))
  expected = whole.predict(image)
  config = tiny_train_config(None)
  config.predict.update(tile_size=384, tile_overlap=128)
  tiled = CrowdCounter(config, None)
  monkeypatch.setattr(tiled, "_count_fn", jax.jit(local_count_fn()))
  got = tiled.predict(image)
  assert expected.tiles == 1
  assert (
      got.tiles
      == len(tiling.tile_spans(1067, 384, 128, 4)) * len(tiling.tile_spans(1601, 384, 128, 4))
      > 12
  )
  np.testing.assert_array_equal(got.density, expected.density)
  assert got.count == pytest.approx(expected.count, rel=1e-6)
  assert tiled.compilations == 1


def test_the_count_is_the_one_computed_on_the_device(counter, monkeypatch, photo):
  """A picture that runs whole takes the count of the forward pass (marked here by a
  stand-in that adds 0.5 to it), not a sum recomputed on the host; with the real model
  that count is the sum of the returned map."""
  real = counter.predict(photo)
  assert real.count == pytest.approx(float(real.density.sum(dtype=np.float64)), rel=1e-6)
  marked = CrowdCounter(counter.config, None)
  local = local_count_fn()
  monkeypatch.setattr(
      marked, "_count_fn", jax.jit(lambda *args: (local(*args)[0] + 0.5, local(*args)[1]))
  )
  got = marked.predict(photo)
  assert got.count == pytest.approx(float(got.density.sum(dtype=np.float64)) + 0.5, rel=1e-6)


def test_a_batch_of_same_size_pictures_counts_as_each_alone(counter, photo):
  """`predict_batch` (video frames): three pictures in one forward pass filled up to
  `predict.batch_size` 4, the counts, maps and points of predicting each alone (float32
  reassociation: 1e-5); more pictures than a batch or mixed sizes are refused."""
  config = tiny_train_config(None)
  config.predict.batch_size = 4
  batched = CrowdCounter(config, counter._variables)
  pictures = [photo, photo[::-1].copy(), photo[:, ::-1].copy()]
  regions = {"left": [[0, 0], [128, 0], [128, 192], [0, 192]]}
  got = batched.predict_batch(pictures, regions)
  assert batched.compilations == 1 and batched._shapes == {(4, 256, 256)}
  for prediction, picture in zip(got, pictures, strict=True):
    alone = counter.predict(picture, regions)
    assert prediction.count == pytest.approx(alone.count, rel=1e-5)
    assert prediction.regions["left"] == pytest.approx(alone.regions["left"], rel=1e-5)
    np.testing.assert_allclose(prediction.density, alone.density, rtol=1e-4, atol=1e-6)
    assert prediction.picture_size == (192, 256) and prediction.tiles == 1
  with pytest.raises(ValueError, match="1 to predict.batch_size = 4 pictures, got 5"):
    batched.predict_batch([photo] * 5)
  with pytest.raises(ValueError, match="at one padded shape"):
    batched.predict_batch([photo, photo[:100]])


def test_tiled_and_whole_counts_of_a_large_photo_agree(counter):
  """The real model sees less context in a tile (GAM attends over the tile only); with
  256 px of overlap, tiled and whole counts of a real 1600x1067 photo agree within 5%
  (2.0% seen with this fresh tiny model; docs/predict.md for the quick-start model)."""
  path = shared_data("sht_sample") / "images" / "IMG_4.jpg"
  whole = counter.predict(path)
  config = tiny_train_config(None)
  config.predict.update(tile_size=512, tile_overlap=256)
  tiled = CrowdCounter(config, counter._variables).predict(path)
  assert whole.tiles == 1 and tiled.tiles > 1
  assert tiled.density.shape == whole.density.shape == (267, 400)
  assert abs(tiled.count / whole.count - 1) < 0.05


def test_mixed_sizes_compile_once_per_padded_shape(counter):
  compiles = []

  def listener(event, *args, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  fresh = CrowdCounter(counter.config, counter._variables)
  rng = np.random.default_rng(2)
  sizes = [(100, 120), (128, 128), (90, 101), (300, 200), (257, 250), (290, 199), (60, 60)]
  images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with without_compilation_cache():
      for image in images:
        fresh.predict(image)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  shapes = {(round_up(h, 128), round_up(w, 128)) for h, w in sizes}
  assert shapes == {(128, 128), (384, 256)}
  assert fresh.compilations == 2 and len(compiles) == 2


def test_the_inference_side_does_not_import_the_trainer():
  loaded = modules_imported_by(
      "import cfrnet_jax.inference.counter, cfrnet_jax.inference.predict_mode, "
      "cfrnet_jax.inference.video_counting"
  )
  assert "cfrnet_jax.inference.counter" in loaded
  assert not {m for m in loaded if m.startswith("cfrnet_jax.training")}
  # The `video` extra is imported only when a video is read or plotted.
  assert not {m for m in loaded if m.split(".")[0] in ("av", "matplotlib")}


def test_points_and_regions_are_in_the_pictures_own_pixels(counter):
  """With `max_side` halving the picture, the points still lie in the picture (not in its
  top-left quarter only); a polygon over the whole picture counts everything; two halves
  split along a slanted line add up; a region outside the picture names the file."""
  path = shared_data("sht_sample") / "images" / "IMG_5.jpg"  # 1049 x 721
  config = tiny_train_config(None)
  config.data.max_side = 524
  config.predict.point_threshold = 0.0  # a fresh model's density is weak: peaks everywhere
  halved = CrowdCounter(config, counter._variables)
  width, height = 1049, 721
  whole = [[0, 0], [width, 0], [width, height], [0, height]]
  left = [[0, 0], [600, 0], [400, height], [0, height]]
  right = [[600, 0], [width, 0], [width, height], [400, height]]
  prediction = halved.predict(path, regions={"all": whole, "left": left, "right": right})
  assert prediction.image.shape[:2] == (360, 524)
  assert prediction.picture_size == (721, 1049)
  assert prediction.scale == pytest.approx((524 / 1049, 360 / 721))
  points = prediction.points
  assert len(points) > 20
  assert points[:, 0].max() > width / 2 and points[:, 1].max() > height / 2
  assert (points >= 0).all() and (points[:, 0] <= width).all() and (points[:, 1] <= height).all()
  np.testing.assert_array_equal(halved.locate(path), points)
  # Regions sum the map in float64, the count is the device's float32 sum.
  assert prediction.regions["all"] == pytest.approx(prediction.count, rel=1e-6)
  assert prediction.regions["left"] + prediction.regions["right"] == pytest.approx(
      prediction.regions["all"], rel=1e-9
  )
  assert 0.2 < prediction.regions["left"] / prediction.count < 0.8
  # The overlay (drawn on the halved image) puts each head's dot where the head is.
  overlay = np.asarray(draw_prediction(prediction, 2048)).astype(int)
  assert overlay.shape == (360, 524, 3)
  lowest = points[np.argmax(points[:, 1])]  # far from the labels along the top
  x, y = np.round(lowest * np.array(prediction.scale)).astype(int)
  assert (overlay[y, x] == 255).all()
  with pytest.raises(ValueError, match=r"IMG_5\.jpg: region 'far' reaches outside the picture"):
    halved.predict(path, regions={"far": [[0, 0], [2000, 0], [0, 10]]})


def test_points_in_the_last_cell_stay_on_the_picture(counter):
  """101 columns end five-eighths of the way into the 13th density cell (columns 96 to
  104), where a head's refined position can lie past the picture's edge: such a head is
  placed on the picture's edge, so that every point can be saved as an annotation of the
  picture (the annotation page refuses points outside it)."""
  picture = np.random.default_rng(1).integers(0, 256, (75, 101, 3), np.uint8)
  config = tiny_train_config(None)
  config.predict.point_threshold = 0.0  # a fresh model's density is weak: peaks everywhere
  eager = CrowdCounter(config, counter._variables)
  prediction = eager.predict(picture)
  raw = localization.locate_heads(
      prediction.density, DENSITY_STRIDE, **localization.point_options(config)
  )
  assert ((raw[:, 0] > 101) | (raw[:, 1] > 75)).any()  # the case this test is about
  points = prediction.points
  assert len(points) == len(raw)
  assert (points >= 0).all() and (points[:, 0] <= 101).all() and (points[:, 1] <= 75).all()
  inside = (raw[:, 0] <= 101) & (raw[:, 1] <= 75)
  np.testing.assert_array_equal(points[inside], raw[inside])
