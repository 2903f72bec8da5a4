"""What the folder importer's readers share: the record of one picture's points, and the
view of the user's folder every reader looks pictures up in.

Each reader (`tfds_crowd/tool_exports.py`, `tfds_crowd/coco_json.py`,
`tfds_crowd/point_files.py`) turns the files of one annotation format into
`PictureAnnotation`s and a `ReadResult`; the builder (`tfds_crowd/folder_builder.py`)
validates and stores them with the rules of the other builders. Readers never drop or
change a point themselves: what they do not read as a point (other shape types, crowd
regions, unlabelled keypoints) is counted in `ignored`, and annotations whose picture is
absent go to `ReadResult.missing`, so the build can log and count them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import posixpath
import xml.etree.ElementTree as ElementTree

import numpy as np

from tfds_crowd.crowd_builder import decode_text
from tfds_crowd.manual_source import CrowdDataError, ManualSource

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Coordinate frames: the stored pixels (what Pillow decodes without applying EXIF, as the
# training pipeline does), or the picture as displayed (EXIF orientation applied, as
# browsers and LabelMe show it).
STORED, DISPLAY = "stored", "display"


@dataclasses.dataclass
class PictureAnnotation:
  """One picture's points as one annotation file gives them, before any validation.

  `picture` is the picture's path relative to the folder (for an embedded picture, the
  path its annotation names). `labels` has one entry per point (None for an unlabelled
  point) or is None when the format has no labels. `frame` is the coordinate frame the
  tool annotates in; `declared_size` (width, height), where the annotation states one,
  lets the build check it against the picture and tell the frames apart.
  """

  picture: str
  annotation: str  # where the points come from, for messages (file, task, entry)
  points: np.ndarray  # (N, 2) float64 (x, y) as annotated
  labels: list[str | None] | None
  frame: str
  declared_size: tuple[int, int] | None = None
  annotated_count: int | None = None  # the annotation's own count field
  embedded: bytes | None = None  # the picture's bytes from the annotation, when no file
  ignored: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  notes: list[str] = dataclasses.field(default_factory=list)  # warnings for the build log


@dataclasses.dataclass
class ReadResult:
  """What one reader found in the folder."""

  annotations: list[PictureAnnotation] = dataclasses.field(default_factory=list)
  missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (picture, where)
  # Events the build summary counts that drop no point (cancelled Label Studio
  # annotations, pictures cclabeler's marks show as partly done), by description.
  tallies: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def is_hidden(name: str) -> bool:
  """Files of the operating system or archiver, not the user's data (`.DS_Store`,
  `__MACOSX/._IMG_1.jpg`, `.git/...`)."""
  return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def is_picture(name: str) -> bool:
  return name.lower().endswith(PICTURE_SUFFIXES)


class FolderFiles:
  """The user's folder (`ManualSource`: files and zip members) as readers need it: parsed
  annotation files, cached because detection reads them too, and picture look-up."""

  def __init__(self, source: ManualSource):
    self.source = source
    # Archives are read through their members (ManualSource lists both).
    self.names = [
        name
        for name, _ in source.match(r".")
        if not is_hidden(name) and not name.lower().endswith(".zip")
    ]
    self.pictures = {name for name in self.names if is_picture(name)}
    self._by_basename = collections.defaultdict(list)
    self._by_stem = collections.defaultdict(list)
    for name in sorted(self.pictures):
      self._by_basename[posixpath.basename(name)].append(name)
      self._by_stem[posixpath.splitext(name)[0]].append(name)
    self._names = set(self.names)
    self._parsed: dict[str, object] = {}

  def has(self, name: str) -> bool:
    return name in self._names

  def describe(self, name: str) -> str:
    return self.source.describe(name)

  def read(self, name: str) -> bytes:
    return self.source.read_bytes(name)

  def text(self, name: str) -> str:
    return decode_text(self.read(name), self.describe(name))

  def json(self, name: str):
    """The parsed JSON file, or a `CrowdDataError` naming it."""
    if name not in self._parsed:
      where = self.describe(name)
      try:
        self._parsed[name] = json.loads(self.text(name))
      except (ValueError, RecursionError) as error:
        raise CrowdDataError(f"{where}: not valid JSON ({error}).") from None
    return self._parsed[name]

  def xml(self, name: str) -> ElementTree.Element:
    """The parsed XML file's root, or a `CrowdDataError` naming it. (Python's expat
    refuses entity-expansion bombs and ElementTree resolves no external entities.)"""
    if name not in self._parsed:
      try:
        self._parsed[name] = ElementTree.fromstring(self.text(name))
      except ElementTree.ParseError as error:
        raise CrowdDataError(f"{self.describe(name)}: not valid XML ({error}).") from None
    return self._parsed[name]

  def resolve(
      self, reference: str, annotation: str, where: str, by_name: bool = True
  ) -> str | None:
    """The picture an annotation file names: `reference` relative to the annotation's
    folder, else relative to the folder's root, else (`by_name`) the one picture with
    that file name (with the most trailing folders in common where several share it).
    None when absent; a `CrowdDataError` naming `where` when several pictures fit."""
    reference = reference.replace("\\", "/")
    if not reference.startswith("/"):
      for base in (posixpath.dirname(annotation), ""):
        path = posixpath.normpath(posixpath.join(base, reference))
        if path in self.pictures:
          return path
    return self.by_name(reference, where) if by_name else None

  def with_stem(self, stem: str, where: str) -> str | None:
    """The picture `stem` + a picture suffix (`IMG_1` -> `IMG_1.jpg`), None when there is
    none, a `CrowdDataError` naming `where` when there are several."""
    found = self._by_stem.get(stem, [])
    expect(len(found) <= 1, where, f"several pictures fit it: {found}.")
    return found[0] if found else None

  def locate(self, reference: str, annotation: str) -> str | None:
    """A file (of any kind) named relative to `annotation`'s folder or to the root."""
    reference = reference.replace("\\", "/")
    for base in (posixpath.dirname(annotation), ""):
      path = posixpath.normpath(posixpath.join(base, reference))
      if path in self._names:
        return path
    return None

  def by_name(self, reference: str, where: str) -> str | None:
    """The picture whose file name is `reference`'s; ties broken by the number of
    trailing folders in common with `reference`; None when none has it."""
    parts = [p for p in reference.replace("\\", "/").split("/") if p not in ("", ".")]
    candidates = self._by_basename.get(parts[-1], []) if parts else []
    if len(candidates) <= 1:
      return candidates[0] if candidates else None

    def shared(name: str) -> int:
      common = 0
      for mine, theirs in zip(reversed(name.split("/")), reversed(parts)):
        if mine != theirs:
          break
        common += 1
      return common

    best = max(shared(name) for name in candidates)
    closest = [name for name in candidates if shared(name) == best]
    if len(closest) > 1:
      raise CrowdDataError(
          f"{where}: the picture {reference!r} is ambiguous: {len(closest)} pictures have that "
          f"name ({', '.join(closest[:4])}); give its path relative to the folder."
      )
    return closest[0]


def label_of(value, where: str) -> str | None:
  """A point's label: a string (an empty one is no label), or None; anything else is a
  `CrowdDataError` naming `where`."""
  if value is None:
    return None
  if not isinstance(value, str):
    raise CrowdDataError(f"{where}: a label must be a string, got {value!r}.")
  return value or None


def number(value, where: str, field: str) -> float:
  """A coordinate from JSON: a real number (not a boolean or string), or a
  `CrowdDataError` naming `where` and `field`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise CrowdDataError(f"{where}: {field} must be a number, got {value!r}.")
  return float(value)


def whole_size(width, height, where: str) -> tuple[int, int] | None:
  """A declared (width, height) of positive whole numbers, None when both are absent,
  else a `CrowdDataError`."""
  if width is None and height is None:
    return None
  values = []
  for field, value in (("width", width), ("height", height)):
    if isinstance(value, str) and value.strip().isdigit():
      value = int(value)
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise CrowdDataError(
          f"{where}: the picture's {field} must be a positive integer, got {value!r}."
      )
    values.append(value)
  return values[0], values[1]


def expect(condition: bool, where: str, message: str) -> None:
  """Raises a `CrowdDataError` '`where`: `message`' unless `condition`."""
  if not condition:
    raise CrowdDataError(f"{where}: {message}")
