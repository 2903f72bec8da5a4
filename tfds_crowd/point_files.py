"""Readers of point files written by scripts and research code rather than interactive
tools: text point lists (`points_txt`, P2PNet/APGCC `list`), `csv`, dot maps (`dots`),
cclabeler's NWPU-Crowd JSON (`cclabeler`) and ShanghaiTech's `.mat` (`shanghaitech_mat`).

Such files come from code that reads pixels without applying EXIF orientation (Pillow,
OpenCV, MATLAB), so their points are in the STORED frame. None of these formats has
labels except `csv` with a label column. Each reader returns a `ReadResult`;
docs/datasets.md ("Your own annotations") shows a minimal file of each format.
"""

from __future__ import annotations

import collections
import csv
import io
import posixpath
import re

import numpy as np
from PIL import Image

from tfds_crowd.crowd_builder import as_count, as_points, image_size
from tfds_crowd.manual_source import CrowdDataError
from tfds_crowd.point_annotations import (
    STORED,
    FolderFiles,
    PictureAnnotation,
    ReadResult,
    expect,
    label_of,
    number,
)
from tfds_crowd.shanghaitech import parse_ground_truth

# A dot map's name: `X_dots.png` (picture `X`), `X_dots_NNN.png` (picture `X_NNN`, as
# MBM and other cell sets ship them), or `Xdots.png` (picture `Xcell`, VGG cells'
# `001dots.png` for `001cell.png`; or picture `X`, TRANCOS's `image-1-000001dots.png` for
# `image-1-000001.jpg`). Every PNG so named is a dot map, never a picture.
DOT_MAP = re.compile(
    r"^(?P<base>(?:.*/)?[^/]+?)(?:_(?P<dots>dots)(?P<index>_\d+)?|(?P<joined>dots))\.png$",
    re.IGNORECASE,
)
SHANGHAITECH_TRUTH = re.compile(r"^(?P<root>(?:.*/)?)ground[-_]truth/GT_(?P<stem>[^/]+)\.mat$")
# Pictures whose dot map marks more than this share of pixels are refused: an inverted
# map (white background) or a photo, not dots.
MAX_MARKED_SHARE = 0.5
_CSV_COLUMNS = {
    "image": ("image", "filename", "file_name", "file", "image_name", "path", "picture"),
    "x": ("x",),
    "y": ("y",),
    "label": ("label", "class", "category", "name"),
}


def parse_point_lines(text: str, where: str) -> np.ndarray:
  """Text with one `x y` (or `x,y`) per line -> (N, 2) points; blank lines are skipped,
  anything else is a `CrowdDataError` naming the file and line."""
  rows = []
  for line_number, line in enumerate(text.splitlines(), start=1):
    fields = line.replace(",", " ").split()
    if not fields:
      continue
    try:
      x, y = (float(value) for value in fields)
    except ValueError:
      raise CrowdDataError(
          f"{where}, line {line_number}: expected 'x y' or 'x,y', got {line.strip()!r:.80}."
      ) from None
    rows.append([x, y])
  return as_points(rows, where) if rows else np.zeros((0, 2))


# points_txt and list ------------------------------------------------------------------


def read_points_txt(files: FolderFiles, names: list[str]) -> ReadResult:
  """`IMG_1.txt` beside `IMG_1.jpg`: one `x y` (or `x,y`) per line."""
  result = ReadResult()
  for name in names:
    where = files.describe(name)
    picture = files.with_stem(posixpath.splitext(name)[0], where)
    points = parse_point_lines(files.text(name), where)
    result.annotations.append(PictureAnnotation(picture, where, points, None, STORED))
  return result


def list_entries(files: FolderFiles, name: str) -> list[tuple[str, str, str]]:
  """(where, picture reference, point file or None) per line of a P2PNet/APGCC list
  file (`image.jpg image.txt` per line, paths relative to the list's folder)."""
  entries, where = [], files.describe(name)
  for line_number, line in enumerate(files.text(name).splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    at = f"{where}, line {line_number}"
    expect(len(fields) == 2, at, f"expected 'picture points_file', got {line.strip()!r:.80}.")
    entries.append((at, fields[0], files.locate(fields[1], name)))
    expect(entries[-1][2] is not None, at, f"no point file {fields[1]!r}.")
  return entries


def read_list(files: FolderFiles, names: list[str]) -> ReadResult:
  """P2PNet/APGCC list files (`train.list`: `image.jpg image.txt` per line)."""
  result = ReadResult()
  for name in names:
    if not name.lower().endswith(".list"):
      continue  # a point file a list names: read through its list
    for at, reference, point_file in list_entries(files, name):
      picture = files.resolve(reference, name, at)
      if picture is None:
        result.missing.append((reference, at))
        continue
      points = parse_point_lines(files.text(point_file), files.describe(point_file))
      where = f"{files.describe(point_file)} (listed in {at})"
      result.annotations.append(PictureAnnotation(picture, where, points, None, STORED))
  return result


# csv ----------------------------------------------------------------------------------


def _csv_layout(first: list[str], where: str) -> tuple[dict[str, int], bool]:
  """({column: index}, whether `first` is a header). Without a header the columns are
  image, x, y and an optional label."""
  cells = [cell.strip() for cell in first]
  try:
    [float(cell) for cell in cells[1:3] if cell]
    header = False
  except ValueError:
    header = True
  if not header:
    expect(len(cells) in (3, 4), where, f"expected image,x,y[,label] columns, got {first}.")
    return {key: i for i, key in enumerate(("image", "x", "y", "label")[: len(cells)])}, False
  lower = [cell.lower() for cell in cells]
  layout = {}
  for key, names in _CSV_COLUMNS.items():
    found = [i for i, cell in enumerate(lower) if cell in names]
    if found:
      layout[key] = found[0]
  expect(
      {"image", "x", "y"} <= set(layout),
      where,
      f"its header {cells} lacks an image, x or y column (image may be called "
      f"{'/'.join(_CSV_COLUMNS['image'])}).",
  )
  return layout, True


def _csv_rows(files: FolderFiles, name: str):
  """{picture reference: (points, labels, where)} of one CSV file, in file order."""
  where = files.describe(name)
  rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(files.text(name))), 1)]
  rows = [(n, row) for n, row in rows if any(cell.strip() for cell in row)]
  expect(bool(rows), where, "the CSV file is empty.")
  layout, header = _csv_layout(rows[0][1], where)
  groups = {}
  for line_number, row in rows[1:] if header else rows:
    at = f"{where}, line {line_number}"
    needed = max(index for key, index in layout.items() if key != "label")
    expect(len(row) > needed, at, f"expected {len(layout)} columns, got {row}.")
    cells = {key: row[index].strip() for key, index in layout.items() if index < len(row)}
    expect(bool(cells["image"]), at, "no picture named.")
    points, labels, _ = groups.setdefault(cells["image"], ([], [], at))
    if cells["x"] == cells["y"] == "":  # a picture without objects
      continue
    try:
      points.append([float(cells["x"]), float(cells["y"])])
    except ValueError:
      raise CrowdDataError(f"{at}: x and y must be numbers, got {row}.") from None
    labels.append(label_of(cells.get("label"), at))
  return groups, "label" in layout


def read_csv(files: FolderFiles, names: list[str]) -> ReadResult:
  """CSV of `image,x,y[,label]` rows, paths relative to the CSV's folder; the header is
  optional (then the columns are in that order); a row `image,,` is a picture without
  objects."""
  result = ReadResult()
  for name in names:
    groups, labelled = _csv_rows(files, name)
    for reference, (points, labels, at) in groups.items():
      picture = files.resolve(reference, name, at)
      if picture is None:
        result.missing.append((reference, files.describe(name)))
        continue
      points = as_points(points, at) if points else np.zeros((0, 2))
      result.annotations.append(
          PictureAnnotation(picture, at, points, labels if labelled else None, STORED)
      )
  return result


# dots ---------------------------------------------------------------------------------


def is_dot_map(name: str) -> bool:
  """Whether `name` is named as a dot map (such a file is never read as a picture)."""
  return DOT_MAP.match(name) is not None


def dot_map_pictures(name: str) -> list[str]:
  """The picture paths (without suffix) a dot map's name can belong to: `X_dots.png` ->
  `X`, `X_dots_007.png` -> `X_007`, `Xdots.png` -> `Xcell` (VGG cells) or `X` (TRANCOS);
  `cell` in the case of `dots`. Names that are dot maps themselves are left out."""
  found = DOT_MAP.match(name)
  base = found["base"]
  if found["dots"]:
    stems = [base + (found["index"] or "")]
  else:
    stems = [base + ("CELL" if found["joined"].isupper() else "cell"), base]
  return [stem for stem in stems if not is_dot_map(stem + ".png")]


def dot_points(data: bytes, where: str) -> tuple[np.ndarray, tuple[int, int]]:
  """((N, 2) points at the centres (x + 0.5, y + 0.5) of the marked pixels, (width,
  height)) of a dot map. A pixel is marked when a colour channel is nonzero and it is
  not fully transparent."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.mode == "P":
        image = image.convert("RGBA")
      pixels = np.asarray(image)
      bands = image.getbands()
  except Exception:  # Pillow raises many types for bad files: give the builders' message
    image_size(data, where)
    raise
  pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
  colour = [i for i, band in enumerate(bands) if band != "A"]
  marked = (pixels[..., colour] != 0).any(-1)
  if "A" in bands:
    marked &= pixels[..., bands.index("A")] != 0
  height, width = marked.shape
  expect(
      marked.sum() <= MAX_MARKED_SHARE * marked.size,
      where,
      f"{marked.sum()} of its {marked.size} pixels are marked: not a dot map (an inverted "
      "one, with a light background?).",
  )
  rows, columns = np.nonzero(marked)
  return np.stack([columns + 0.5, rows + 0.5], 1).astype(np.float64), (width, height)


def dot_map_picture(files: FolderFiles, name: str, by_stem: dict[str, list[str]]) -> str | None:
  """The one picture the dot map `name` belongs to (`dot_map_pictures`), None when there
  is none, a `CrowdDataError` naming the dot map and the pictures when several fit.
  `by_stem` maps a stem to the folder's pictures of that stem (dot maps left out)."""
  stems = dot_map_pictures(name)
  found = [picture for stem in stems for picture in by_stem.get(stem, [])]
  expect(
      len(found) <= 1,
      files.describe(name),
      f"the dot map fits several pictures: {', '.join(found)} (its name may belong to "
      f"{' or '.join(stem + '.*' for stem in stems)}); keep one of them.",
  )
  return found[0] if found else None


def read_dots(files: FolderFiles, names: list[str]) -> ReadResult:
  """Dot maps (named as `DOT_MAP` says, beside their picture): a PNG the size of the
  picture whose marked pixels are the objects, one point per pixel. A dot map that fits
  no picture is an annotation without its picture (dropped and counted, with the
  pictures its name could belong to)."""
  result = ReadResult()
  by_stem = collections.defaultdict(list)
  for picture in sorted(files.pictures):
    if not is_dot_map(picture):
      by_stem[posixpath.splitext(picture)[0]].append(picture)
  for name in names:
    where = files.describe(name)
    picture = dot_map_picture(files, name, by_stem)
    if picture is None:
      stems = dot_map_pictures(name)
      result.missing.append((" or ".join(stem + ".*" for stem in stems) or "(none)", where))
      continue
    points, size = dot_points(files.read(name), where)
    result.annotations.append(PictureAnnotation(picture, where, points, None, STORED, size))
  return result


# cclabeler ----------------------------------------------------------------------------


def _cclabeler_objects(record: dict, where: str) -> np.ndarray:
  """Points plus box centres. cclabeler writes {"x", "y"} points and {"sx", "sy", "ex",
  "ey"} boxes, each box a person of its own (its `human_num` counts both). In the list
  form NWPU-Crowd released ([x, y] points, [x1, y1, x2, y2] boxes) every box is the head
  box of a point, so boxes add nothing."""
  values, boxes = record.get("points") or [], record.get("boxes") or []
  expect(isinstance(values, list) and isinstance(boxes, list), where, "points and boxes are lists.")
  points = []
  for value in values:
    if isinstance(value, dict):
      points.append([number(value.get(k), where, f"a point's {k}") for k in ("x", "y")])
    else:
      points.append(value)
  for box in boxes:
    if isinstance(box, dict):
      sx, sy, ex, ey = (number(box.get(k), where, f"a box's {k}") for k in ("sx", "sy", "ex", "ey"))
      points.append([(sx + ex) / 2, (sy + ey) / 2])
  return as_points(points, where) if points else np.zeros((0, 2))


def _cclabeler_marks(files: FolderFiles, name: str, where: str) -> tuple[int, int] | None:
  """(regions marked done, regions) from cclabeler's `marks/X.json` beside `jsons/`
  (the annotator's progress grid, 256 regions), or None when there is none."""
  folder = posixpath.dirname(posixpath.dirname(name))
  marks = posixpath.join(folder, "marks", posixpath.basename(name))
  if not files.has(marks):
    return None
  grid, at = files.json(marks), files.describe(marks)
  expect(
      isinstance(grid, list) and all(value in (0, 1) for value in grid),
      at,
      "cclabeler's marks file must be a list of 0 and 1.",
  )
  return int(sum(grid)), len(grid)


def read_cclabeler(files: FolderFiles, names: list[str]) -> ReadResult:
  """cclabeler's NWPU-Crowd JSON (`data/jsons/X.json` for `data/images/X.jpg`): points
  and box centres, checked against `human_num`. Its `marks/X.json` files are the
  annotator's progress grid: a picture with some regions not marked done is noted."""
  result = ReadResult()
  for name in names:
    if posixpath.basename(posixpath.dirname(name)) == "marks":
      continue
    record, where = files.json(name), files.describe(name)
    expect(isinstance(record, dict) and "points" in record, where, "no 'points' list.")
    points = _cclabeler_objects(record, where)
    human_num = as_count(record["human_num"], where, "human_num") if "human_num" in record else None
    reference = record.get("img_id")
    expect(reference is None or isinstance(reference, str), where, "img_id must be a string.")
    stem = posixpath.splitext(posixpath.basename(name))[0]
    folder = posixpath.dirname(name)
    if posixpath.basename(folder) == "jsons":  # cclabeler's data/jsons/ beside data/images/
      folder = posixpath.join(posixpath.dirname(folder), "images")
    images = folder
    picture = posixpath.join(images, reference) if reference else None
    if picture not in files.pictures:  # img_id may lack the suffix, or be absent
      picture = files.with_stem(posixpath.join(images, stem), where)
    if picture is None:
      result.missing.append((reference or stem, where))
      continue
    notes, marks = [], _cclabeler_marks(files, name, where)
    if marks and marks[0] < marks[1]:
      result.tallies["pictures cclabeler's marks show as not finished"] += 1
      notes.append(
          f"{where}: cclabeler's marks say {marks[0]} of {marks[1]} regions are done; the "
          "picture may be only partly annotated."
      )
    result.annotations.append(
        PictureAnnotation(picture, where, points, None, STORED, None, human_num, notes=notes)
    )
  return result


# shanghaitech_mat ---------------------------------------------------------------------


def read_shanghaitech_mat(files: FolderFiles, names: list[str]) -> ReadResult:
  """ShanghaiTech's layout: `images/IMG_k.jpg` + `ground-truth/GT_IMG_k.mat` (or
  `ground_truth/`), read by the ShanghaiTech builder's parser (`image_info.location`,
  `image_info.number`)."""
  result = ReadResult()
  for name in names:
    found, where = SHANGHAITECH_TRUTH.match(name), files.describe(name)
    picture = files.with_stem(f"{found['root']}images/{found['stem']}", where)
    if picture is None:
      result.missing.append((f"{found['root']}images/{found['stem']}.jpg", where))
      continue
    points, count = parse_ground_truth(files.read(name), where)
    result.annotations.append(PictureAnnotation(picture, where, points, None, STORED, None, count))
  return result
