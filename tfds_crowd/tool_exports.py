"""Readers of the exports of interactive annotation tools: LabelMe, CVAT, Label Studio
and VIA.

These tools show the picture as a browser or Qt displays it, with its EXIF orientation
applied, so their points are in the DISPLAY frame by default; where the export states the
picture's size (LabelMe, CVAT, Label Studio), the build checks it against the picture and
uses it to tell the frames apart (`tfds_crowd/orientation.py`). COCO files come from many
converters rather than one tool and have their own reader (`tfds_crowd/coco_json.py`).
Each reader returns a `ReadResult`; docs/datasets.md ("Your own annotations") shows a
minimal file of each format.
"""

from __future__ import annotations

import base64
import binascii
import collections
import posixpath
import re
import urllib.parse

import numpy as np

from tfds_crowd.crowd_builder import as_points
from tfds_crowd.manual_source import CrowdDataError
from tfds_crowd.point_annotations import (
    DISPLAY,
    FolderFiles,
    PictureAnnotation,
    ReadResult,
    expect,
    label_of,
    number,
    whole_size,
)

# Label Studio stores uploads as `<8 hex digits>-<original name>`.
_UPLOAD_PREFIX = re.compile(r"[0-9a-fA-F]{8}-(.+)")
_KEYPOINT_RESULTS = ("keypointlabels", "keypoint")


def _points(values: list, where: str) -> np.ndarray:
  """(N, 2) points checked by the builders' rule (`as_points`); none is (0, 2)."""
  return as_points(values, where) if values else np.zeros((0, 2))


# LabelMe ------------------------------------------------------------------------------


def read_labelme(files: FolderFiles, names: list[str]) -> ReadResult:
  """LabelMe JSON, one per picture: `shapes` with `shape_type` "point" (other shape
  types are counted as ignored); the picture is `imagePath` relative to the JSON
  (backslashes allowed), or the base64 `imageData` when that file is absent."""
  result = ReadResult()
  for name in names:
    record, where = files.json(name), files.describe(name)
    expect(
        isinstance(record, dict) and isinstance(record.get("shapes"), list),
        where,
        "not a LabelMe file: no 'shapes' list.",
    )
    points, labels, ignored = _labelme_points(record["shapes"], where)
    picture, embedded = _labelme_picture(files, name, record, where)
    if picture is None:
      result.missing.append((str(record.get("imagePath")), where))
      continue
    size = whole_size(record.get("imageWidth"), record.get("imageHeight"), where)
    result.annotations.append(
        PictureAnnotation(
            picture, where, points, labels, DISPLAY, size, embedded=embedded, ignored=ignored
        )
    )
  return result


def _labelme_points(shapes: list, where: str):
  """(points, labels, ignored shape kinds) of a LabelMe `shapes` list."""
  points, labels, ignored = [], [], collections.Counter()
  for index, shape in enumerate(shapes):
    at = f"{where}, shape {index}"
    expect(isinstance(shape, dict), at, f"a shape must be a JSON object, got {shape!r:.60}.")
    kind = shape.get("shape_type") or "polygon"  # LabelMe's default when the key is absent
    if kind != "point":
      ignored[f"{kind} shape"] += 1
      continue
    coordinates = shape.get("points")
    expect(
        isinstance(coordinates, list) and len(coordinates) == 1,
        at,
        f"a point shape holds exactly one [x, y], got {coordinates!r:.80}.",
    )
    points.append(coordinates[0])
    labels.append(label_of(shape.get("label"), at))
  return _points(points, where), labels, ignored


def _labelme_picture(files: FolderFiles, name: str, record: dict, where: str):
  """(picture path, embedded bytes or None): the file at `imagePath`, else the embedded
  `imageData`, else the picture with imagePath's file name elsewhere in the folder;
  (None, None) when there is none."""
  reference = record.get("imagePath")
  expect(reference is None or isinstance(reference, str), where, "imagePath must be a string.")
  picture = files.resolve(reference, name, where, by_name=False) if reference else None
  if picture is not None:
    return picture, None
  data = record.get("imageData")
  if not data:
    return (files.by_name(reference, where) if reference else None), None
  expect(isinstance(data, str), where, "imageData must be a base64 string.")
  try:
    embedded = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as error:
    raise CrowdDataError(f"{where}: imageData is not valid base64 ({error}).") from None
  folder = posixpath.dirname(name)
  if reference:
    path = posixpath.normpath(posixpath.join(folder, reference.replace("\\", "/")))
    if reference.startswith(("/", "\\")) or ":" in reference or path.startswith(".."):
      path = posixpath.join(folder, reference.replace("\\", "/").rsplit("/", 1)[-1])
  else:
    suffix = ".png" if embedded.startswith(b"\x89PNG") else ".jpg"
    path = posixpath.splitext(name)[0] + suffix
  return path, embedded


# CVAT ---------------------------------------------------------------------------------


def read_cvat(files: FolderFiles, names: list[str]) -> ReadResult:
  """CVAT for images 1.1 XML: `<image name width height>` elements holding
  `<points label points="x1,y1;x2,y2">` (several points each); other shapes (boxes,
  polygons, skeletons, ...) are counted as ignored. One XML covers many pictures."""
  result = ReadResult()
  for name in names:
    root, where = files.xml(name), files.describe(name)
    expect(
        root.tag == "annotations",
        where,
        f"not a CVAT XML: its root element is <{root.tag}>, not <annotations>.",
    )
    expect(
        root.find("track") is None,
        where,
        "a CVAT for video export (<track> elements); export the task as 'CVAT for images 1.1'.",
    )
    for image in root.findall("image"):
      reference = image.get("name")
      at = f"{where}, <image name={reference!r}>"
      expect(bool(reference), at, "an <image> without a name.")
      points, labels, ignored = _cvat_shapes(image, at)
      picture = files.resolve(reference, name, at)
      if picture is None:
        result.missing.append((reference, where))
        continue
      size = whole_size(image.get("width"), image.get("height"), at)
      result.annotations.append(
          PictureAnnotation(picture, at, points, labels, DISPLAY, size, ignored=ignored)
      )
  return result


def _cvat_shapes(image, at: str):
  """(points, labels, ignored element kinds) of one `<image>`: only its direct
  `<points>` children are points (a skeleton's `<points>` are one object's parts)."""
  points, labels, ignored = [], [], collections.Counter()
  for shape in image:
    if shape.tag != "points":
      ignored[f"<{shape.tag}>"] += 1
      continue
    text = shape.get("points") or ""
    for pair in text.split(";"):
      try:
        x, y = (float(value) for value in pair.split(","))
      except ValueError:
        raise CrowdDataError(f"{at}: points={text!r:.80} is not 'x1,y1;x2,y2;...'.") from None
      points.append([x, y])
      labels.append(label_of(shape.get("label"), at))
  return _points(points, at), labels, ignored


# Label Studio -------------------------------------------------------------------------


def read_label_studio(files: FolderFiles, names: list[str]) -> ReadResult:
  """Label Studio's JSON export: a list of tasks, each with `data.image` and
  `annotations[].result[]`; results of type `keypointlabels` (or `keypoint`) are points
  at `value.x`, `value.y` percent of `original_width`, `original_height`. Cancelled
  annotations are skipped and counted; a task with none left is a picture without
  annotations; a task with several is an error (export one annotation per task)."""
  result = ReadResult()
  for name in names:
    tasks, where = files.json(name), files.describe(name)
    expect(isinstance(tasks, list), where, "not a Label Studio export (a JSON list of tasks).")
    for index, task in enumerate(tasks):
      expect(isinstance(task, dict), f"{where}, task {index}", "a task must be a JSON object.")
      at = f"{where}, task {task.get('id', index)}"
      picture = _label_studio_picture(files, task, at)
      annotations = task.get("annotations") or []
      expect(isinstance(annotations, list), at, "'annotations' must be a list.")
      expect(all(isinstance(a, dict) for a in annotations), at, "annotations are JSON objects.")
      kept = [a for a in annotations if not a.get("was_cancelled")]
      result.tallies["cancelled Label Studio annotations"] += len(annotations) - len(kept)
      if not kept:
        continue
      expect(
          len(kept) == 1,
          at,
          f"{len(kept)} annotations (ids {[a.get('id') for a in kept]}); keep one per task "
          "(Label Studio's export of a single annotator, or the reviewed one).",
      )
      results = kept[0].get("result") or []
      expect(isinstance(results, list), at, "'result' must be a list.")
      result.annotations.append(_label_studio_picture_points(picture, results, at))
  return result


def _label_studio_picture(files: FolderFiles, task: dict, at: str) -> str:
  """The picture of a task's `data.image`: a server path or URL whose file name is
  matched to the folder's pictures exactly, else without Label Studio's upload prefix
  (8 hex digits and '-'). Missing or ambiguous matches are errors naming the task."""
  data = task.get("data")
  expect(isinstance(data, dict), at, "no 'data' object.")
  reference = data.get("image")
  if reference is None:
    strings = [value for value in data.values() if isinstance(value, str)]
    reference = strings[0] if len(strings) == 1 else None
  expect(isinstance(reference, str) and bool(reference), at, "no data.image naming the picture.")
  parsed = urllib.parse.urlparse(reference)
  query = urllib.parse.parse_qs(parsed.query)
  path = urllib.parse.unquote(query["d"][0] if "d" in query else parsed.path)
  picture = files.by_name(path, at)
  stripped = _UPLOAD_PREFIX.fullmatch(posixpath.basename(path))
  if picture is None and stripped:
    picture = files.by_name(posixpath.join(posixpath.dirname(path), stripped[1]), at)
  looked_for = repr(posixpath.basename(path)) + (f" or {stripped[1]!r}" if stripped else "")
  expect(picture is not None, at, f"no picture named {looked_for} for {reference!r}.")
  return picture


def _label_studio_picture_points(picture: str, results: list, at: str) -> PictureAnnotation:
  """One task's annotation: keypoints from percent to pixels of the size the results
  declare (the picture as the browser showed it)."""
  points, labels, ignored, sizes, turns = [], [], collections.Counter(), set(), set()
  for result in results:
    expect(isinstance(result, dict), at, "a result must be a JSON object.")
    kind = result.get("type")
    if kind not in _KEYPOINT_RESULTS:
      ignored[f"{kind} result"] += 1
      continue
    value = result.get("value")
    expect(isinstance(value, dict), at, "a keypoint result without a 'value' object.")
    size = whole_size(result.get("original_width"), result.get("original_height"), at)
    expect(size is not None, at, "a keypoint without original_width and original_height.")
    sizes.add(size)
    turns.add(number(result.get("image_rotation", 0) or 0, at, "image_rotation"))
    x = number(value.get("x"), at, "value.x") / 100 * size[0]
    y = number(value.get("y"), at, "value.y") / 100 * size[1]
    points.append([x, y])
    names = value.get("keypointlabels") or []
    expect(isinstance(names, list) and len(names) <= 1, at, f"one label per point, got {names!r}.")
    labels.append(label_of(names[0], at) if names else None)
  expect(len(sizes) <= 1, at, f"its keypoints give different picture sizes {sorted(sizes)}.")
  notes = [
      f"{at}: annotated with the view turned by {turn:g} degrees (image_rotation); the "
      "coordinates are relative to the unturned picture, as Label Studio stores them."
      for turn in sorted(turns - {0.0})
  ]
  declared = sizes.pop() if sizes else None
  return PictureAnnotation(
      picture, at, _points(points, at), labels, DISPLAY, declared, ignored=ignored, notes=notes
  )


# VIA ----------------------------------------------------------------------------------


def read_via(files: FolderFiles, names: list[str]) -> ReadResult:
  """VIA 2.x JSON: a project file's `_via_img_metadata`, or the annotation export (the
  same entries keyed by file name and size). Regions whose `shape_attributes.name` is
  "point" are points at `cx`, `cy`; other regions are counted as ignored. A region's
  label is its region attribute `label`, or its only region attribute (a checkbox
  attribute: the one ticked option)."""
  result = ReadResult()
  for name in names:
    record, where = files.json(name), files.describe(name)
    expect(isinstance(record, dict), where, "not a VIA file (a JSON object).")
    entries = record.get("_via_img_metadata", record)
    expect(isinstance(entries, dict), where, "_via_img_metadata must be a JSON object.")
    for key, entry in entries.items():
      at = f"{where}, entry {key!r}"
      expect(
          isinstance(entry, dict) and isinstance(entry.get("filename"), str),
          at,
          "a VIA entry needs a 'filename' string.",
      )
      regions = entry.get("regions") or []
      regions = list(regions.values()) if isinstance(regions, dict) else regions  # VIA 1.x
      expect(isinstance(regions, list), at, "'regions' must be a list.")
      points, labels, ignored = _via_points(regions, at)
      reference = entry["filename"]
      if urllib.parse.urlparse(reference).scheme in ("http", "https", "file"):
        reference = urllib.parse.unquote(urllib.parse.urlparse(reference).path)
      picture = files.resolve(reference, name, at)
      if picture is None:
        result.missing.append((entry["filename"], where))
        continue
      result.annotations.append(
          PictureAnnotation(picture, at, points, labels, DISPLAY, ignored=ignored)
      )
  return result


def _via_points(regions: list, at: str):
  """(points, labels, ignored region kinds) of one VIA entry's regions."""
  points, labels, ignored = [], [], collections.Counter()
  for index, region in enumerate(regions):
    region_at = f"{at}, region {index}"
    expect(isinstance(region, dict), region_at, "a region must be a JSON object.")
    shape = region.get("shape_attributes")
    expect(isinstance(shape, dict), region_at, "no 'shape_attributes' object.")
    if shape.get("name") != "point":
      ignored[f"{shape.get('name')} region"] += 1
      continue
    points.append([number(shape.get(k), region_at, k) for k in ("cx", "cy")])
    labels.append(_via_label(region.get("region_attributes") or {}, region_at))
  return _points(points, at), labels, ignored


def _via_label(attributes, at: str) -> str | None:
  """A region's label: its `label` attribute, else its only attribute (a dropdown's or
  radio's string, or a checkbox's one ticked option); None when neither exists."""
  expect(isinstance(attributes, dict), at, "'region_attributes' must be a JSON object.")
  if "label" in attributes:
    value = attributes["label"]
  elif len(attributes) == 1:
    value = next(iter(attributes.values()))
  else:
    return None
  if isinstance(value, dict):  # a checkbox attribute: {option: true, ...}
    ticked = [option for option, on in value.items() if on]
    expect(len(ticked) <= 1, at, f"one label per point, got {ticked}.")
    return ticked[0] if ticked else None
  return label_of(value, at)
