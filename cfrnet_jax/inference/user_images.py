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

Hostile files are refused with a ValueError naming the file and what is wrong, before
anything large is allocated: a directory, a symbolic link that is dangling or loops, a
FIFO, socket or device (never opened: reading a FIFO would wait forever), an empty or
unreadable file, content that is not a picture, and a picture whose header declares more
than `max_megapixels` (`config.predict.max_megapixels`) - a decompression bomb, a few
bytes declaring 50,000 x 50,000 pixels, is refused from its header, before decoding.
That limit replaces Pillow's own guard (`PIL.Image.MAX_IMAGE_PIXELS`, which warns above
89 Mpx and refuses above 179 Mpx): the guard is switched off only while a header is read
and while a picture already checked against the limit and larger than the guard is
decoded, under a lock, and restored right after, so it is never changed for the rest of
the process. A picture that breaks off (truncated) is refused, never counted in part.

`load_picture` returns the array the model sees: the picture converted to RGB and, when
its longer side exceeds the config's `data.max_side`, resized (bilinear, as
`data.geometry.fit_max_side` resizes dataset images) before it becomes an array, so that
it is converted to numpy once. A picture that is not resized is converted in bands of
rows, so that loading holds the decoded picture and the returned array, and no further
whole-picture copy (a 12,000 x 9,000 photo: 2 x 324 MB).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import threading
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from cfrnet_jax.data.geometry import fit_max_side

ImageSource = str | Path | Image.Image | np.ndarray

# What a directory given to `collect_images` is searched for.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_BAND_PIXELS = 1 << 22  # pixels converted to RGB at a time (4 Mpx: 12 MB as RGB).
_PILLOW_GUARD = threading.Lock()


def describe(source: ImageSource) -> str:
  """A short name for messages: the path, or the kind of in-memory image."""
  if isinstance(source, (str, Path)):
    return str(source)
  if isinstance(source, np.ndarray):
    return f"numpy array {source.shape} {source.dtype}"
  return f"PIL image {source.size} {source.mode}"


def load_image(source: ImageSource, background: np.ndarray, max_megapixels: float) -> np.ndarray:
  """(H, W, 3) uint8 RGB of `source` at its own size (`load_picture` without resizing)."""
  return load_picture(source, background, max_megapixels, max_side=0)[0]


def load_picture(
    source: ImageSource, background: np.ndarray, max_megapixels: float, max_side: int
) -> tuple[np.ndarray, tuple[int, int]]:
  """((H, W, 3) uint8 RGB of `source` with its longer side at most `max_side` (0: any),
  (height, width) of the picture before that resize); `background` (3,) uint8 fills
  transparent pixels. A file or PIL image with more than `max_megapixels` million pixels
  (`config.predict.max_megapixels`) is refused before it is decoded.

  Raises ValueError naming the source when it cannot be read, is too large or has an
  unusable shape.
  """
  if not isinstance(source, (str, Path, Image.Image, np.ndarray)):
    raise TypeError(f"Expected a path, a PIL image or a numpy array, got {type(source)}.")
  try:
    if isinstance(source, (str, Path)):
      return _load_file(Path(source), background, max_megapixels, max_side)
    if isinstance(source, Image.Image):
      check_pixels(source.size, max_megapixels)
      image = ImageOps.exif_transpose(source)
    else:
      image = _array_to_pil(source)
    return model_view(image, background, max_side), (image.height, image.width)
  except ValueError as error:
    raise ValueError(f"{describe(source)}: {error}") from error
  except Exception as error:  # Pillow raises many types for unreadable files.
    raise ValueError(f"{describe(source)}: cannot read the image ({error}).") from error


def check_pixels(size: tuple[int, int], max_megapixels: float) -> None:
  """ValueError when a picture of `size` (width, height) has more than `max_megapixels`
  million pixels."""
  width, height = size
  if width * height > max_megapixels * 1e6:
    raise ValueError(
        f"declares {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), more than the "
        f"limit of {max_megapixels:g} Mpx (config.predict.max_megapixels); not decoded."
    )


def check_file(path: Path) -> None:
  """ValueError saying what is wrong when `path` is not a non-empty regular file (after
  following symbolic links); nothing is opened."""
  try:
    info = path.stat()
  except OSError as error:
    if error.errno == errno.ELOOP:
      raise ValueError("is a symbolic link loop (following it leads back to it).") from None
    if error.errno == errno.ENOENT and path.is_symlink():
      raise ValueError(
          f"is a dangling symbolic link (to {os.readlink(path)}, which does not exist)."
      ) from None
    if error.errno == errno.ENOENT:
      raise ValueError("does not exist.") from None
    if error.errno == errno.EACCES:
      raise ValueError("cannot be read (permission denied).") from None
    raise ValueError(f"cannot be read ({error.strerror}).") from None
  if stat.S_ISDIR(info.st_mode):
    raise ValueError("is a directory, not a picture (name the directory to search it).")
  if not stat.S_ISREG(info.st_mode):
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(info.st_mode)
        else "a socket"
        if stat.S_ISSOCK(info.st_mode)
        else "a device"
    )
    raise ValueError(f"is {kind}, not a regular file; not read.")
  if info.st_size == 0:
    raise ValueError("is empty (0 bytes).")


@contextlib.contextmanager
def _without_pillow_guard():
  """Pillow's decompression-bomb guard off (see the module's docstring), restored after."""
  with _PILLOW_GUARD:
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
      yield
    finally:
      Image.MAX_IMAGE_PIXELS = saved


def _load_file(
    path: Path, background: np.ndarray, max_megapixels: float, max_side: int
) -> tuple[np.ndarray, tuple[int, int]]:
  check_file(path)
  try:
    with _without_pillow_guard():  # the header only: the size is checked below.
      image = Image.open(path)
  except UnidentifiedImageError:
    with open(path, "rb") as file:
      start = file.read(8)
    raise ValueError(
        f"is not a picture in a format Pillow reads (it starts with {start!r})."
    ) from None
  except PermissionError:
    raise ValueError("cannot be read (permission denied).") from None
  except OSError as error:  # e.g. a WebP cut short: Pillow cannot start decoding it
    raise ValueError(f"is damaged or truncated: cannot be opened ({error}).") from None
  with image:
    check_pixels(image.size, max_megapixels)
    guard = Image.MAX_IMAGE_PIXELS
    larger_than_guard = guard is not None and image.width * image.height > guard
    with _without_pillow_guard() if larger_than_guard else contextlib.nullcontext():
      try:
        image.load()
      except MemoryError:
        raise ValueError(
            f"{image.width}x{image.height} pixels do not fit in the memory available."
        ) from None
      except Exception as error:  # Pillow raises OSError, SyntaxError, EOFError, ...
        raise ValueError(
            f"is damaged or truncated: {image.format} {image.width}x{image.height} "
            f"declared, decoding failed ({error})."
        ) from None
      ImageOps.exif_transpose(image, in_place=True)
      return model_view(image, background, max_side), (image.height, image.width)


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


def model_view(
    image: Image.Image | np.ndarray, background: np.ndarray, max_side: int
) -> np.ndarray:
  """(H, W, 3) uint8 RGB of `image` (a PIL image of any mode, or an (H, W, 3) uint8 RGB
  array such as a decoded video frame) with its longer side at most `max_side` (0: any).
  A picture that fits is converted band by band (an array that fits is returned itself);
  a larger one is converted to RGB whole, resized, and only then turned into an array."""
  width, height = image.size if isinstance(image, Image.Image) else image.shape[1::-1]
  if width * height == 0:
    raise ValueError("the image is empty (0 pixels).")
  if not max_side or max(width, height) <= max_side:
    return image if isinstance(image, np.ndarray) else _to_rgb(image, background)
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  return np.asarray(fit_max_side(_rgb_image(image, background), max_side))


def _to_rgb(image: Image.Image, background: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 RGB of `image`, converted band by band (no whole-picture copies
  beyond the result)."""
  width, height = image.size
  pixels = np.empty((height, width, 3), np.uint8)
  rows = max(1, _BAND_PIXELS // width)
  for top in range(0, height, rows):
    bottom = min(height, top + rows)
    pixels[top:bottom] = _rgb_image(image.crop((0, top, width, bottom)), background)
  return pixels


def _rgb_image(image: Image.Image, background: np.ndarray) -> Image.Image:
  """`image` in RGB: 16-bit and float modes scaled to 8 bits, transparency composited
  over `background`."""
  if image.mode in _SIXTEEN_BIT_MODES:
    scaled = np.asarray(image, np.float64) / 257.0
    image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
  elif image.mode == "F":
    image = Image.fromarray(np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8))
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
    under = Image.new("RGBA", image.size, tuple(int(v) for v in background) + (255,))
    image = Image.alpha_composite(under, image.convert("RGBA"))
  return image if image.mode == "RGB" else image.convert("RGB")


def collect_images(patterns: list[str]) -> tuple[list[Path], int]:
  """The files named by `patterns`, in order without repeats, and how many other files
  the directories held (reported, not read). A pattern is
  * a directory: searched recursively for `IMAGE_SUFFIXES`; its subdirectories are
    searched whatever their names, symbolic links to directories are not followed (so
    links that loop cannot hang the search), and every other entry named like a picture
    (a dangling or looping link, a FIFO, ...) is kept for `load_image` to refuse with
    its reason;
  * a path that exists, or is a symbolic link: kept as it is;
  * a glob pattern (`**` for any depth of directories, without following symbolic
    links): every match but directories, and directories named like a picture (which
    `load_image` then refuses, so they are reported rather than dropped).
  Raises FileNotFoundError for a pattern that matches nothing."""
  files, ignored = [], 0
  for pattern in patterns:
    path = Path(pattern).expanduser()
    if path.is_dir():
      matched, others = _search(path)
      ignored += others
    elif os.path.lexists(path):
      matched = [path]
    else:
      matched = sorted(
          p for p in _glob(str(path)) if not p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES
      )
    if not matched:
      raise FileNotFoundError(f"--images {pattern!r} matches no image file.")
    files += matched
  return list(dict.fromkeys(files)), ignored


def _search(root: Path) -> tuple[list[Path], int]:
  """(the entries of `root`'s tree named like pictures, how many other entries), going
  down real directories only; each directory is read once (bind mounts can loop too)."""
  found, ignored, seen, folders = [], 0, set(), [root]
  while folders:
    folder = folders.pop()
    try:
      info = folder.stat()
      if (info.st_dev, info.st_ino) in seen:
        continue
      seen.add((info.st_dev, info.st_ino))
      with os.scandir(folder) as listing:
        entries = list(listing)
    except OSError as error:
      logging.warning("Cannot search %s (%s); its pictures are not counted.", folder, error)
      continue
    for entry in entries:
      if entry.is_dir(follow_symlinks=False):
        folders.append(Path(entry.path))
      elif entry.is_symlink() and _is_dir(entry):
        continue  # not followed
      elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
        found.append(Path(entry.path))
      else:
        ignored += 1
  return sorted(found), ignored


def _is_dir(entry: os.DirEntry) -> bool:
  try:
    return entry.is_dir()
  except OSError:
    return False


def _glob(pattern: str) -> list[Path]:
  """`glob.glob(pattern, recursive=True)`, except that `**` does not follow symbolic
  links: `glob.glob` does, and two links to `.` make it list 2^40 paths."""
  path = Path(pattern)
  if path.parts and path.parts[-1] == "**":
    path = path / "*"  # glob.glob's "DIR/**" lists the files below DIR too.
  if "**" in path.parts:
    anchor = Path(path.anchor) if path.anchor else Path()
    relative = path.relative_to(path.anchor) if path.anchor else path
    try:
      return list(anchor.glob(str(relative)))
    except (ValueError, NotImplementedError):
      pass
  return [Path(p) for p in glob.glob(pattern)]  # `**` inside a name acts as `*`.
