"""The folder importer's annotation formats: their names, and which one a folder holds.

Every file of the folder is sorted once (`classify`): pictures, annotation files of a
format (recognised by content for JSON and XML, by name and place for the others),
files that are not annotations (ignored, logged and counted), and files that look like
annotations of no known format. Detection then refuses a folder that mixes formats,
holds annotation-like files of no known format, or matches none, with a message naming
what it found; `--format NAME` picks one format and ignores (and reports) the files of
the others. The chosen format's reader (`tool_exports.py`, `coco_json.py`,
`point_files.py`) reads them.
"""

from __future__ import annotations

import collections
import dataclasses
import posixpath
from collections.abc import Callable

from absl import logging

from tfds_crowd import coco_json, point_files, tool_exports
from tfds_crowd.manual_source import CrowdDataError, ManualSource
from tfds_crowd.point_annotations import FolderFiles, PictureAnnotation, ReadResult


@dataclasses.dataclass(frozen=True)
class Format:
  read: Callable[[FolderFiles, list[str]], ReadResult]
  labelled: bool  # whether the format can carry labels
  description: str


FORMATS = {
    "labelme": Format(tool_exports.read_labelme, True, "LabelMe JSON, one per picture"),
    "cvat": Format(tool_exports.read_cvat, True, "CVAT for images 1.1 XML"),
    "label_studio": Format(tool_exports.read_label_studio, True, "Label Studio JSON export"),
    "via": Format(tool_exports.read_via, True, "VIA 2.x project or JSON export"),
    "coco": Format(coco_json.read_coco, True, "COCO JSON (boxes or keypoints)"),
    "points_txt": Format(point_files.read_points_txt, False, "X.txt beside X.jpg, 'x y' lines"),
    "list": Format(point_files.read_list, False, "P2PNet/APGCC list files"),
    "csv": Format(point_files.read_csv, True, "CSV of image,x,y[,label] rows"),
    "dots": Format(
        point_files.read_dots, False, "dot maps X_dots.png, X_dots_NNN.png, Xdots.png (PNG)"
    ),
    "cclabeler": Format(point_files.read_cclabeler, False, "cclabeler (NWPU-Crowd) JSON"),
    "shanghaitech_mat": Format(
        point_files.read_shanghaitech_mat, False, "ShanghaiTech GT_X.mat in ground-truth/"
    ),
}
AUTO = "auto"


@dataclasses.dataclass
class FolderAnnotations:
  """A folder's annotations in one format, and what the build must report about it."""

  format: str
  files: FolderFiles
  annotations: list[PictureAnnotation]
  missing: list[tuple[str, str]]  # (picture, where): annotations without their picture
  unannotated: list[str]  # pictures no annotation names
  ignored_files: list[str]  # files read as no annotation, described
  tallies: collections.Counter


@dataclasses.dataclass
class _Sorted:
  by_format: dict[str, list[str]] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(list)
  )
  unknown: list[str] = dataclasses.field(default_factory=list)  # described
  ignored: list[str] = dataclasses.field(default_factory=list)  # described


def _json_kind(name: str, record) -> str | None:
  """The format of a parsed JSON file, or None."""
  if isinstance(record, dict):
    if isinstance(record.get("shapes"), list):
      return "labelme"
    if "_via_img_metadata" in record:
      return "via"
    if isinstance(record.get("images"), list) and isinstance(record.get("annotations"), list):
      return "coco"
    if "points" in record and ("human_num" in record or "img_id" in record):
      return "cclabeler"
    entries = list(record.values())
    if entries and all(isinstance(e, dict) and {"filename", "regions"} <= set(e) for e in entries):
      return "via"
  if isinstance(record, list) and record:
    if all(isinstance(task, dict) and "data" in task for task in record):
      return "label_studio"
    in_marks = posixpath.basename(posixpath.dirname(name)) == "marks"
    if in_marks and all(value in (0, 1) for value in record):
      return "cclabeler"  # the annotator's progress grid beside cclabeler's jsons/
  return None


def _shape(record) -> str:
  """What an unrecognised JSON value looks like, for messages."""
  if isinstance(record, dict):
    return f"a JSON object with keys {sorted(record)[:8]}"
  if isinstance(record, list):
    return f"a JSON list of {len(record)} values"
  return f"a JSON {type(record).__name__}"


def _classify_file(files: FolderFiles, name: str, listed: set[str], found: _Sorted) -> None:
  """Files into formats by content (JSON, XML) or by name and place (the rest). A PNG
  named as a dot map (`point_files.DOT_MAP`) is one, beside its picture or not: it is
  never a picture itself (one without its picture is an annotation without a picture)."""
  lower, where = name.lower(), files.describe(name)
  stem = posixpath.splitext(name)[0]
  if point_files.is_dot_map(name):
    found.by_format["dots"].append(name)
  elif lower.endswith(".json"):
    record = files.json(name)
    kind = _json_kind(name, record)
    if kind:
      found.by_format[kind].append(name)
    else:
      found.unknown.append(f"{where} ({_shape(record)})")
  elif lower.endswith(".xml"):
    root = files.xml(name)
    if root.tag == "annotations":
      found.by_format["cvat"].append(name)
    else:
      found.unknown.append(f"{where} (an XML file whose root element is <{root.tag}>)")
  elif lower.endswith((".csv", ".list")):
    found.by_format["csv" if lower.endswith(".csv") else "list"].append(name)
  elif lower.endswith(".txt") and (name in listed or files.with_stem(stem, where)):
    found.by_format["list" if name in listed else "points_txt"].append(name)
  elif lower.endswith(".mat"):
    if point_files.SHANGHAITECH_TRUTH.match(name):
      found.by_format["shanghaitech_mat"].append(name)
    else:
      found.unknown.append(f"{where} (a MATLAB file outside ShanghaiTech's ground-truth/GT_X.mat)")
  elif name not in files.pictures:
    found.ignored.append(where)


def classify(files: FolderFiles) -> _Sorted:
  """Sorts every file of the folder; damaged JSON, XML and list files raise a
  `CrowdDataError` naming them."""
  found = _Sorted()
  listed = set()
  for name in files.names:
    if name.lower().endswith(".list"):
      listed.update(point_file for _, _, point_file in point_files.list_entries(files, name))
  for name in files.names:
    _classify_file(files, name, listed, found)
  return found


def _found(found: _Sorted, pictures: int) -> str:
  """What a folder holds, for messages."""
  parts = [f"{pictures} pictures"]
  for kind, names in sorted(found.by_format.items()):
    parts.append(f"{kind} ({len(names)} files: {', '.join(names[:3])}{', ...' * (len(names) > 3)})")
  if found.ignored:
    parts.append(f"{len(found.ignored)} other files ({', '.join(found.ignored[:3])})")
  return "; ".join(parts)


def choose(found: _Sorted, requested: str, root, pictures: int) -> str:
  """The format to read: `requested`, or the only one found (`AUTO`); a `CrowdDataError`
  for unknown annotation files (with `AUTO`), mixed formats, or none."""
  if requested != AUTO and requested not in FORMATS:
    raise ValueError(f"Unknown format {requested!r}; choose from {AUTO}, {', '.join(FORMATS)}.")
  if requested == AUTO and found.unknown:
    raise CrowdDataError(
        f"{root}: {len(found.unknown)} files look like annotations of no known format: "
        f"{'; '.join(found.unknown[:5])}. Known formats: {', '.join(FORMATS)} "
        "(docs/datasets.md, 'Your own annotations'); give --format to read one and ignore "
        "the rest."
    )
  present = sorted(kind for kind, names in found.by_format.items() if names)
  if requested == AUTO and len(present) > 1:
    raise CrowdDataError(
        f"{root} mixes annotation formats: {_found(found, pictures)}. Keep one format per "
        "folder, or give --format to read one and ignore the others."
    )
  chosen = requested if requested != AUTO else (present[0] if present else None)
  if chosen not in present:
    wanted = f"no {chosen} annotations" if chosen else "no annotations of a known format"
    raise CrowdDataError(
        f"{root}: {wanted} found; it holds {_found(found, pictures)}. Known formats: "
        f"{', '.join(FORMATS)} (docs/datasets.md, 'Your own annotations')."
    )
  return chosen


def read_folder(source: ManualSource, requested: str = AUTO) -> FolderAnnotations:
  """The folder's annotations in its one format (or `requested`), each picture once."""
  files = FolderFiles(source)
  found = classify(files)
  pictures = [name for name in files.pictures if not point_files.is_dot_map(name)]
  chosen = choose(found, requested, source.root, len(pictures))
  result = FORMATS[chosen].read(files, found.by_format[chosen])
  ignored = list(found.ignored) + list(found.unknown)
  for described in found.unknown:
    logging.warning("Reading %s: ignoring %s.", chosen, described)
  for kind, names in found.by_format.items():
    if kind != chosen and names:
      logging.warning("Reading %s: ignoring %d %s files (%s).", chosen, len(names), kind, names[0])
      ignored += [f"{files.describe(name)} ({kind})" for name in names]
  seen = {}
  for annotation in result.annotations:
    if annotation.picture in seen:
      raise CrowdDataError(
          f"{annotation.annotation}: the picture {annotation.picture} is annotated twice "
          f"(also in {seen[annotation.picture]})."
      )
    seen[annotation.picture] = annotation.annotation
  annotation_files = {name for names in found.by_format.values() for name in names}
  unannotated = sorted(files.pictures - annotation_files - set(seen))
  return FolderAnnotations(
      chosen, files, result.annotations, result.missing, unannotated, ignored, result.tallies
  )
