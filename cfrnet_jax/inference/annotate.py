"""The annotation mode of the counting page: `launch.py --mode serve --annotate DIR`.

    python launch.py --mode serve --workdir runs/shha --annotate ~/my_pictures [--label head]

The page (`annotate_page.html` and its script `annotate_page.js`) lists the pictures of
DIR (searched as predict mode searches a directory: `user_images.collect_images`) and
shows, for each, the model's head points (`CrowdCounter.predict(...).points`) as
proposals, or the annotation saved before; a person accepts, adds, moves and removes
points and saves. Why: a counter that proposes its own points turns annotating a crowd
into correcting it, and the saved files are what the folder importer
(`python -m tfds_crowd.build folder`) reads to fine-tune the model.

What is saved, and where (docs/annotate.md):

* one LabelMe JSON beside each picture (`IMG.jpg` -> `IMG.json`): a `point` shape per
  head, labelled `--label`, `imageData: null`, `imagePath` the picture's file name,
  `imageHeight`/`imageWidth` and the points in the pixels of the picture as displayed
  (EXIF orientation applied, which is how the folder importer reads LabelMe points),
  whatever the model resized or tiled;
* written atomically: a temporary file in the same folder, flushed, then renamed over
  the old one, so a crash leaves the old file or the new one, never half of one;
* never outside DIR: a request names a picture by its path relative to DIR exactly as
  the listing gives it; anything else (`../`, an absolute path, a picture or JSON whose
  real path leaves DIR through a symbolic link) is refused with a 4xx message before
  anything is written;
* a JSON already there that this page did not write (it carries no `_WRITER_KEY`) is
  copied to `IMG.json.bak-<YYYYmmdd-HHMMSS>` (`-1`, `-2`, ... when that name is taken)
  before the first save replaces it; a LabelMe file's points are shown as the starting
  annotation.

Requests go through `serve._Handler` (token, sizes, JSON errors); this module adds the
routes of the annotation page and the file work behind them (`AnnotationService`).
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import threading
import urllib.parse
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.http_limits import ModelQueue
from cfrnet_jax.inference.serve import RequestError, _Handler
from cfrnet_jax.inference.user_images import check_file, check_pixels, collect_images

PAGE = Path(__file__).with_name("annotate_page.html")
SCRIPT = Path(__file__).with_name("annotate_page.js")
DEFAULT_LABEL = "head"
# A top-level key of the JSON files this page writes: a file without it was written by
# someone else (LabelMe, another tool, a person) and is backed up before it is replaced.
# The folder importer and LabelMe ignore keys they do not know.
_WRITER_KEY = "cfrnet_annotate"
# The largest body of a save, in bytes: 200,000 points at ~25 bytes each; larger is
# refused (413) before it is read.
MAX_SAVE_BYTES = 5_000_000
MAX_POINTS = 200_000
# EXIF orientations that swap width and height (90 and 270 degree turns).
_TURNED = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


class AnnotationService:
  """The annotation page's work apart from HTTP: the pictures of `root`, the model's
  proposals for each (computed once, cached), and saving points as LabelMe JSON."""

  def __init__(self, counter: CrowdCounter, root: str | Path, label: str = DEFAULT_LABEL):
    root = Path(root).expanduser()
    if not root.is_dir():
      raise ValueError(f"--annotate {root}: no such folder.")
    if not label or not label.strip():
      raise ValueError("--label must not be empty.")
    self.counter = counter
    self.root = root.resolve()
    self.label = label
    # The model's queue and lock; `use_model_queue` shares the counting page's, so that
    # both pages wait in one bounded queue for the one model.
    self.queue, self._lock = ModelQueue(0), threading.Lock()
    self._proposals: dict[str, dict] = {}
    self.pictures = _pictures_of(self.root)
    # Drafts in the browser's storage are kept per folder.
    self.folder_id = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

  def use_model_queue(self, queue: ModelQueue, lock: threading.Lock) -> None:
    """Waits for the model in `queue` under `lock` (the counting service's): a proposal
    or a turned picture's decoding beyond the queue's places gets 503 with Retry-After."""
    self.queue, self._lock = queue, lock

  # Naming ---------------------------------------------------------------------------

  def picture(self, name: str | None) -> Path:
    """The picture `name` (a path relative to the folder, as `listing` gives it).
    RequestError for a name that is not one of the folder's pictures."""
    if not name:
      raise RequestError("Name a picture: ?name=<path relative to the folder>.")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ":" in name[:3]:
      raise RequestError(f"{name!r}: an absolute path; name a picture relative to the folder.")
    if ".." in name.replace("\\", "/").split("/") or "\x00" in name:
      raise RequestError(f"{name!r}: '..' leads outside the folder; refused.")
    path = self.pictures.get(name)
    if path is None:
      raise RequestError(f"{name!r} is not one of the folder's pictures.", status=404)
    if not _inside(self.root, path):  # a link changed since the folder was listed
      raise RequestError(f"{name!r} leads outside the folder; refused.", status=403)
    return path

  def annotation_path(self, picture: Path) -> Path:
    """Where `picture`'s annotation is saved: beside it, `.json` for its suffix.
    RequestError when that path would lead outside the folder (a symbolic link)."""
    target = picture.with_suffix(".json")
    if target.is_symlink() or not _inside(self.root, target):
      raise RequestError(
          f"{target.relative_to(self.root).as_posix()} is a symbolic link or leads outside "
          "the folder; nothing is written.",
          status=403,
      )
    if target.exists() and not target.is_file():
      raise RequestError(f"{target.name} exists and is not a file; nothing is written.", 409)
    return target

  # Reading --------------------------------------------------------------------------

  def listing(self) -> dict:
    """The folder's pictures, each with whether it has an annotation file."""
    return {
        "folder": str(self.root),
        "folder_id": self.folder_id,
        "label": self.label,
        "pictures": [
            {"name": name, "done": path.with_suffix(".json").is_file()}
            for name, path in self.pictures.items()
        ],
    }

  def picture_size(self, path: Path) -> tuple[int, int]:
    """(width, height) of the picture as displayed (EXIF orientation applied), from its
    header; RequestError when it is not a picture this server takes."""
    try:
      check_file(path)
      with Image.open(path) as image:
        check_pixels(image.size, self.counter.config.predict.max_megapixels)
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _TURNED:
          width, height = height, width
    except (ValueError, OSError) as error:
      raise RequestError(f"{path.name}: {error}") from error
    return width, height

  def image_bytes(self, name: str) -> tuple[bytes, str]:
    """(file bytes, content type) of the picture as displayed: the file itself, or, when
    its EXIF orientation turns it, the picture turned and encoded again (so that every
    browser shows the pixels the saved coordinates refer to)."""
    path = self.picture(name)
    self.picture_size(path)  # refuses what is not a picture, or too large
    with Image.open(path) as image:
      orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
      if orientation in (None, 1) and image.format in ("JPEG", "PNG", "GIF", "WEBP", "BMP"):
        return path.read_bytes(), Image.MIME[image.format]
    with self.queue.turn(), Image.open(path) as image:  # a decoded picture: a queue place
      turned = ImageOps.exif_transpose(image)
      encoded = io.BytesIO()
      if turned.mode in ("RGBA", "LA", "P"):
        turned.save(encoded, "PNG")
        return encoded.getvalue(), "image/png"
      turned.convert("RGB").save(encoded, "JPEG", quality=92)
      return encoded.getvalue(), "image/jpeg"

  def describe(self, name: str) -> dict:
    """Everything the page shows for picture `name`: its displayed size, the model's
    count and head points (proposals), and the saved points when an annotation exists."""
    path = self.picture(name)
    width, height = self.picture_size(path)
    proposals = self._proposals_for(name, path)
    saved, note = self._saved_points(path)
    return {
        "name": name,
        "width": width,
        "height": height,
        "count": proposals["count"],
        "proposals": proposals["points"],
        "saved": saved,
        "note": note,
    }

  def _proposals_for(self, name: str, path: Path) -> dict:
    """The model's count and points for `name`, computed once, in the model's queue."""
    if name in self._proposals:
      return self._proposals[name]
    with self.queue.turn(), self._lock:
      if name not in self._proposals:
        try:
          prediction = self.counter.predict(path)
        except ValueError as error:
          raise RequestError(str(error)) from error
        self._proposals[name] = {
            "count": prediction.count,
            "points": np.round(prediction.points, 2).tolist(),
        }
        logging.info(
            "%s: %.1f people, %d proposed points.", name, prediction.count, len(prediction.points)
        )
      return self._proposals[name]

  def _saved_points(self, picture: Path) -> tuple[list | None, str | None]:
    """(the point shapes of the JSON beside `picture`, a note for the page): (None,
    None) without one; (None, why) when it is not a LabelMe point file."""
    target = picture.with_suffix(".json")
    if not target.is_file():
      return None, None
    try:
      record = json.loads(target.read_text(encoding="utf-8"))
      shapes = record["shapes"]
      points = [
          [float(shape["points"][0][0]), float(shape["points"][0][1])]
          for shape in shapes
          if shape.get("shape_type") == "point"
      ]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
      return None, (
          f"{target.name} is not a LabelMe point file ({type(error).__name__}); saving "
          f"backs it up as {target.name}.bak-<time> first."
      )
    others = sum(1 for shape in shapes if shape.get("shape_type") != "point")
    note = None
    if _WRITER_KEY not in record:
      note = f"{target.name} was written by another tool; saving backs it up first."
      if others:
        note += f" Its {others} non-point shapes stay in the backup only."
    return points, note

  # Saving ---------------------------------------------------------------------------

  def save(self, name: str, body: bytes) -> dict:
    """Saves the points of JSON `body` ({"points": [[x, y], ...]}, picture pixels as
    displayed) as `name`'s LabelMe file. RequestError with the reason, and nothing
    written, for a name outside the folder, a body over MAX_SAVE_BYTES, or points that
    are not a list of [x, y] pairs of finite numbers on the picture."""
    if len(body) > MAX_SAVE_BYTES:
      raise RequestError(
          f"The annotation is {len(body) / 1e6:.1f} MB; at most {MAX_SAVE_BYTES / 1e6:g} MB.",
          status=413,
      )
    path = self.picture(name)
    target = self.annotation_path(path)
    width, height = self.picture_size(path)
    points = parse_points(body, width, height)
    record = {
        "version": "5.4.1",
        "flags": {},
        "shapes": [
            {
                "label": self.label,
                "points": [point],
                "group_id": None,
                "description": "",
                "shape_type": "point",
                "flags": {},
            }
            for point in points
        ],
        "imagePath": path.name,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
        _WRITER_KEY: 1,
    }
    backup = None
    if target.is_file() and not _written_here(target):
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      backup, copies = target.with_name(f"{target.name}.bak-{stamp}"), 0
      while backup.exists():  # another foreign file within the second: a backup of its own
        copies += 1
        backup = target.with_name(f"{target.name}.bak-{stamp}-{copies}")
      shutil.copy2(target, backup)
      logging.info("Backed up %s as %s.", target, backup.name)
    write_atomically(target, json.dumps(record, indent=1).encode())
    logging.info("Saved %d points of %s in %s.", len(points), name, target)
    return {
        "name": name,
        "saved": target.relative_to(self.root).as_posix(),
        "points": len(points),
        "backup": backup.name if backup else None,
    }


def _pictures_of(root: Path) -> dict[str, Path]:
  """{name relative to `root`: path} of the pictures offered for annotation. Pictures
  whose real path leaves the folder (a symbolic link out of it) are left out and logged:
  the page would otherwise read files outside DIR. ValueError for a folder without
  pictures, and for pictures that would share one annotation file (`X.jpg` and `X.png`
  both save to `X.json`, as LabelMe names them): one would overwrite the other."""
  try:
    files, _ = collect_images([str(root)])
  except FileNotFoundError as error:
    raise ValueError(f"--annotate {root}: no picture in the folder or below it.") from error
  pictures, outside, by_annotation = {}, 0, collections.defaultdict(list)
  for path in files:
    if not _inside(root, path):
      logging.warning("%s leads outside %s; not offered for annotation.", path, root)
      outside += 1
      continue
    name = path.relative_to(root).as_posix()
    pictures[name] = path
    by_annotation[path.with_suffix(".json")].append(name)
  shared = [names for names in by_annotation.values() if len(names) > 1]
  if shared:
    listed = "; ".join(" and ".join(names) for names in shared[:5])
    raise ValueError(
        f"--annotate {root}: {len(shared)} groups of pictures would share one annotation "
        f"file (the picture's name with .json): {listed}. Rename all but one of each."
    )
  if not pictures:
    raise ValueError(f"--annotate {root}: its {outside} pictures all lead outside it.")
  if outside:
    logging.warning("%d pictures lead outside %s and are not offered.", outside, root)
  return pictures


def parse_points(body: bytes, width: int, height: int) -> list[list[float]]:
  """The [x, y] points of a save's JSON body, each a pair of finite numbers inside the
  picture (0 <= x <= width, 0 <= y <= height). RequestError saying what is wrong."""

  def refuse_constant(name):
    raise ValueError(f"{name} is not a number")

  try:
    record = json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
  except (UnicodeDecodeError, ValueError) as error:
    raise RequestError(f"The annotation is not valid JSON ({error}).") from error
  if not isinstance(record, dict) or not isinstance(record.get("points"), list):
    raise RequestError('The annotation must be a JSON object {"points": [[x, y], ...]}.')
  points = record["points"]
  if len(points) > MAX_POINTS:
    raise RequestError(f"{len(points)} points; at most {MAX_POINTS} are taken.", status=413)
  checked = []
  for index, point in enumerate(points):
    if not (
        isinstance(point, list)
        and len(point) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
        and all(math.isfinite(v) for v in point)
    ):
      raise RequestError(f"Point {index} is {point!r:.60}, not [x, y] with two numbers.")
    x, y = float(point[0]), float(point[1])
    if not (0 <= x <= width and 0 <= y <= height):
      raise RequestError(
          f"Point {index} [{x:g}, {y:g}] is outside the {width}x{height} picture; nothing saved."
      )
    checked.append([round(x, 2), round(y, 2)])
  return checked


def write_atomically(target: Path, data: bytes) -> None:
  """Writes `data` to `target` through a temporary file in the same folder, flushed to
  disk and renamed over `target`: a reader sees the old file or the new one, never a
  part. The temporary file is removed if anything fails."""
  handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
  try:
    with os.fdopen(handle, "wb") as file:
      file.write(data)
      file.flush()
      os.fsync(file.fileno())
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def _written_here(target: Path) -> bool:
  try:
    record = json.loads(target.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  return isinstance(record, dict) and _WRITER_KEY in record


def _inside(root: Path, path: Path) -> bool:
  """Whether `path`'s real location (symbolic links followed, `..` resolved) is inside
  `root` (itself resolved)."""
  try:
    real = Path(os.path.realpath(path))
  except (OSError, ValueError):
    return False
  return real == root or root in real.parents


class AnnotationHandler(_Handler):
  """The routes of the annotation page, over the counting page's handler (whose token
  check, JSON answers and `/api/count` stay):

  GET  /                      the page (the counting page moves to /count)
  GET  /annotate_page.js      its script (a file of its own: no inline script)
  GET  /api/pictures          the folder's pictures and which have an annotation
  GET  /api/picture?name=N    N's displayed size, the model's count and points, saved points
  GET  /api/image?name=N      N's pixels as displayed
  POST /api/annotation?name=N save N's points: {"points": [[x, y], ...]} as JSON
  """

  annotation: AnnotationService  # set on the subclass `serve.make_server` builds

  def do_GET(self):  # noqa: N802 - http.server's name
    url = urllib.parse.urlparse(self.path)
    name = urllib.parse.parse_qs(url.query).get("name", [None])[0]
    try:
      if url.path in ("/", "/index.html"):
        self.send_body(200, PAGE.read_bytes(), "text/html; charset=utf-8")
      elif url.path == "/annotate_page.js":
        self.send_body(200, SCRIPT.read_bytes(), "text/javascript; charset=utf-8")
      elif url.path == "/api/pictures":
        self.send_json(200, self.annotation.listing())
      elif url.path == "/api/picture":
        self.send_json(200, self.annotation.describe(name))
      elif url.path == "/api/image":
        self.send_body(200, *self.annotation.image_bytes(name))
      else:
        super().do_GET()
    except RequestError as error:
      self.send_json(error.status, {"error": str(error)}, error.headers)
    except Exception as error:  # never a dead server: log it, tell the client
      logging.exception("GET %s failed.", self.path)
      self.send_json(500, {"error": f"{url.path} failed: {error!r}"})

  def do_POST(self):  # noqa: N802
    url = urllib.parse.urlparse(self.path)
    if url.path != "/api/annotation":
      super().do_POST()
      return
    name, body = urllib.parse.parse_qs(url.query).get("name", [None])[0], None
    try:
      # A JSON content type cannot be sent across sites without a CORS preflight, which
      # this server never grants: another web page cannot make the browser save here.
      if self.headers.get_content_type() != "application/json":
        raise RequestError("Send the annotation as Content-Type: application/json.", 415)
      length = self.declared_length(MAX_SAVE_BYTES, "The annotation", picture=False)
      body = self.read_body(length)  # within the server's deadline (http_limits)
      self.send_json(200, self.annotation.save(name, body))
    except RequestError as error:
      if body is None:
        self.close_connection = True  # the body is not read
      self.send_json(error.status, {"error": str(error)})
    except Exception as error:
      logging.exception("Saving %s failed.", name)
      self.send_json(500, {"error": f"Saving {name} failed: {error!r}"})
