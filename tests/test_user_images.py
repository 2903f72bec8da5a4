"""Finding the user's pictures on disk, and refusing hostile files with their reason."""

import errno
import io
import os
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from cfrnet_jax.data.geometry import fit_max_side
from cfrnet_jax.inference import user_images
from cfrnet_jax.inference.user_images import collect_images, load_image, load_picture
from configs import base

BACKGROUND = np.array([124, 116, 104], np.uint8)
LIMIT = base.get_config().predict.max_megapixels  # the one default (configs/base.py)


def png_header(width: int, height: int, pixels: bytes = b"") -> bytes:
  """A PNG that declares `width` x `height` RGB pixels but holds only `pixels` (zlib
  compressed): a decompression bomb's header without its payload."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
  return (
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", header)
      + chunk(b"IDAT", zlib.compress(pixels))
      + chunk(b"IEND", b"")
  )


def picture(path, size=(48, 32), fmt=None, seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, fmt)
  return path


def finishes(call, seconds=20.0):
  """call() run in a daemon thread: its result or exception, or a test failure if it
  hangs."""
  outcome = []

  def run():
    try:
      outcome.append((call(), None))
    except Exception as error:  # re-raised below, in the test's thread
      outcome.append((None, error))

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still running after {seconds} s (hangs)"
  result, error = outcome[0]
  if error is not None:
    raise error
  return result


def test_collect_images_reports_what_it_ignores(tmp_path):
  (tmp_path / "a").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.PNG")
  Image.new("RGB", (8, 8)).save(tmp_path / "y.jpg")
  (tmp_path / "notes.txt").write_text("not an image")
  files, ignored = collect_images([str(tmp_path), str(tmp_path / "*.jpg")])
  assert files == [tmp_path / "a" / "x.PNG", tmp_path / "y.jpg"] and ignored == 1
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    collect_images([str(tmp_path / "nothing-here*.jpg")])
  assert collect_images([str(tmp_path / "**")])[0] == [tmp_path / "a" / "x.PNG"] + sorted(
      [tmp_path / "notes.txt", tmp_path / "y.jpg"]
  )


def test_the_pixel_limit_admits_a_108_megapixel_photo():
  assert LIMIT * 1e6 >= 12_000 * 9_000


@pytest.mark.parametrize("source", ["file", "pil", "array"])
def test_a_picture_resized_for_the_model_is_converted_once_to_what_resizing_its_array_gives(
    source, tmp_path
):
  """`load_picture` with `max_side` resizes before the picture becomes an array; the
  pixels are those of resizing the loaded array (bilinear, `fit_max_side`), for a
  transparent picture too, and the picture's own size comes with them. One that fits
  is not resized."""
  rng = np.random.default_rng(4)
  rgba = rng.integers(0, 256, (90, 130, 4), dtype=np.uint8)
  path = tmp_path / "see_through.png"
  Image.fromarray(rgba, "RGBA").save(path)
  given = {"file": path, "pil": Image.open(path), "array": rgba}[source]
  whole = load_image(given, BACKGROUND, LIMIT)
  pixels, size = load_picture(given, BACKGROUND, LIMIT, max_side=64)
  assert size == (90, 130) and pixels.shape == (44, 64, 3)
  np.testing.assert_array_equal(pixels, np.asarray(fit_max_side(Image.fromarray(whole), 64)))
  pixels, size = load_picture(given, BACKGROUND, LIMIT, max_side=130)
  assert size == (90, 130)
  np.testing.assert_array_equal(pixels, whole)


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(png_header(50_000, 50_000))
  assert bomb.stat().st_size < 100
  guard = Image.MAX_IMAGE_PIXELS
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # not Pillow's DecompressionBombWarning/Error either
    with pytest.raises(ValueError) as refused:
      load_image(bomb, BACKGROUND, LIMIT)
  assert str(refused.value) == (
      f"{bomb}: declares 50000x50000 pixels (2500.0 Mpx), more than the limit of 250 Mpx "
      "(config.predict.max_megapixels); not decoded."
  )
  assert Image.MAX_IMAGE_PIXELS == guard
  # The limit is the caller's: a lower one refuses a real picture the same way.
  small = picture(tmp_path / "small.png", (48, 32))
  with pytest.raises(ValueError, match=r"small.png: declares 48x32 pixels \(0.0 Mpx\)"):
    load_image(small, BACKGROUND, max_megapixels=0.001)
  with pytest.raises(ValueError, match=r"PIL image \(48, 32\) RGB: declares 48x32"):
    load_image(Image.open(small), BACKGROUND, max_megapixels=0.001)


def test_our_limit_decides_not_pillows(tmp_path, monkeypatch):
  """A 12,000 x 9,000 (108 Mpx) photo is above Pillow's warning threshold (89 Mpx) but
  within the default limit: the header passes without a DecompressionBombWarning (this
  one holds no pixel data, so it is then refused as truncated, with no 324 MB decoded)."""
  big = tmp_path / "big.png"
  big.write_bytes(png_header(12_000, 9_000))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(ValueError, match=r"big.png: is damaged or truncated: PNG 12000x9000"):
      load_image(big, BACKGROUND, LIMIT)
  # With Pillow's guard far below the picture (it would refuse it: 1536 > 2 x 500 px),
  # every format still loads under our limit, and the guard is left as it was.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
  for fmt in ("png", "jpg", "gif", "tif", "bmp", "webp"):
    path = picture(tmp_path / f"p.{fmt}", (48, 32))
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      got = load_image(path, BACKGROUND, LIMIT)
    with pytest.raises(Image.DecompressionBombError):  # Pillow's guard, untouched
      Image.open(path)
    assert got.shape == (32, 48, 3)
  assert Image.MAX_IMAGE_PIXELS == 500


def test_zero_byte_file(tmp_path):
  empty = tmp_path / "empty.jpg"
  empty.touch()
  with pytest.raises(ValueError, match=r"^.*empty.jpg: is empty \(0 bytes\)\.$"):
    load_image(empty, BACKGROUND, LIMIT)


def test_text_file_named_like_a_picture(tmp_path):
  text = tmp_path / "notes.jpg"
  text.write_text("hello, this is not a picture\n")
  with pytest.raises(
      ValueError,
      match=r"notes.jpg: is not a picture in a format Pillow reads \(it starts with b'hello, t'\)",
  ):
    load_image(text, BACKGROUND, LIMIT)


@pytest.mark.parametrize("fmt", ["jpg", "png", "bmp", "gif", "tif", "webp"])
def test_truncated_picture_is_refused_not_counted_in_part(tmp_path, fmt):
  whole = picture(tmp_path / f"whole.{fmt}", (96, 64))
  data = whole.read_bytes()
  cut = tmp_path / f"cut.{fmt}"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=rf"cut.{fmt}: is damaged or truncated: "):
    load_image(cut, BACKGROUND, LIMIT)


def test_directory_named_like_a_picture(tmp_path):
  folder = tmp_path / "photo.jpg"
  folder.mkdir()
  inside = picture(folder / "inside.png")
  real = picture(tmp_path / "real.jpg")
  with pytest.raises(ValueError, match=r"photo.jpg: is a directory, not a picture"):
    load_image(folder, BACKGROUND, LIMIT)
  # A glob hands it on to be refused (reported), not silently dropped ...
  assert collect_images([str(tmp_path / "*.jpg")]) == ([folder, real], 0)
  # ... a directory search goes into it like any directory; named, it is searched.
  assert collect_images([str(tmp_path)]) == ([folder / "inside.png", real], 0)
  assert collect_images([str(folder)]) == ([inside], 0)


def test_symbolic_link_loops_and_dangling_links(tmp_path):
  folder = tmp_path / "photos"
  folder.mkdir()
  real = picture(folder / "real.jpg")
  (folder / "a.jpg").symlink_to("b.jpg")
  (folder / "b.jpg").symlink_to("a.jpg")
  (folder / "self.jpg").symlink_to("self.jpg")
  (folder / "dangling.jpg").symlink_to("gone.jpg")
  (folder / "good_link.jpg").symlink_to("real.jpg")
  # Directory links that loop: `glob.glob("photos/**")` would list 2^40 paths.
  (folder / "here").symlink_to(".")
  (folder / "up").symlink_to("..")
  (folder / "loop_dir").symlink_to("loop_dir")
  files, ignored = finishes(lambda: collect_images([str(folder)]))
  names = ["a.jpg", "b.jpg", "dangling.jpg", "good_link.jpg", "real.jpg", "self.jpg"]
  assert files == [folder / name for name in names] and ignored == 1  # loop_dir
  files, _ = finishes(lambda: collect_images([str(folder / "**" / "*.jpg")]))
  assert sorted(files) == [folder / name for name in names]
  for name in ("a.jpg", "b.jpg", "self.jpg"):
    with pytest.raises(ValueError, match=rf"{name}: is a symbolic link loop"):
      load_image(folder / name, BACKGROUND, LIMIT)
    assert finishes(lambda n=name: collect_images([str(folder / n)]))[0] == [folder / name]
  with pytest.raises(
      ValueError, match=r"dangling.jpg: is a dangling symbolic link \(to gone.jpg, which"
  ):
    load_image(folder / "dangling.jpg", BACKGROUND, LIMIT)
  np.testing.assert_array_equal(
      load_image(folder / "good_link.jpg", BACKGROUND, LIMIT), load_image(real, BACKGROUND, LIMIT)
  )


def test_fifo_and_device_named_like_a_picture_are_not_opened(tmp_path):
  """Opening a FIFO would wait for a writer forever; a device may never end."""
  fifo = tmp_path / "pipe.jpg"
  os.mkfifo(fifo)
  with pytest.raises(ValueError, match=r"pipe.jpg: is a FIFO \(named pipe\), not a regular"):
    finishes(lambda: load_image(fifo, BACKGROUND, LIMIT))
  assert collect_images([str(tmp_path)]) == ([fifo], 0)
  device = tmp_path / "zero.jpg"
  device.symlink_to("/dev/zero")  # endless bytes
  with pytest.raises(ValueError, match=r"zero.jpg: is a device, not a regular file"):
    finishes(lambda: load_image(device, BACKGROUND, LIMIT))


def make_unreadable(path, monkeypatch):
  """`path`, which opening now fails with permission denied (root reads anything: there
  the open is made to fail as it would for a user)."""
  if os.geteuid() != 0:
    path.chmod(0)
    return path
  real_open = open

  def denied(file, *args, **kwargs):
    if os.fspath(file) == str(path):
      raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr("builtins.open", denied)
  return path


def test_unreadable_file(tmp_path, monkeypatch):
  locked = make_unreadable(picture(tmp_path / "locked.jpg"), monkeypatch)
  with pytest.raises(ValueError, match=r"locked.jpg: cannot be read \(permission denied\)"):
    load_image(locked, BACKGROUND, LIMIT)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "I;16", "CMYK"])
def test_conversion_in_bands_equals_the_whole_picture(mode, monkeypatch):
  rng = np.random.default_rng(2)
  rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
  image = rgba.convert(mode) if mode != "I;16" else rgba.convert("L").convert("I;16")
  if mode == "P":
    image.info["transparency"] = 7
  whole = load_image(image, BACKGROUND, LIMIT)
  monkeypatch.setattr(user_images, "_BAND_PIXELS", 100)  # bands of 1 row
  np.testing.assert_array_equal(load_image(image, BACKGROUND, LIMIT), whole)
  if mode in ("RGB", "L", "CMYK"):
    np.testing.assert_array_equal(whole, np.asarray(image.convert("RGB")))
  if mode == "P":
    assert (whole[np.asarray(image) == 7] == BACKGROUND).all()


def test_a_picture_in_memory_passes_the_byte_checks(tmp_path):
  buffer = io.BytesIO()
  Image.new("RGB", (16, 8), (10, 20, 30)).save(buffer, "PNG")
  with Image.open(buffer) as image:
    assert load_image(image, BACKGROUND, LIMIT).shape == (8, 16, 3)
