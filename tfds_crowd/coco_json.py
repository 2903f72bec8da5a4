"""The reader of COCO JSON annotations: an object's keypoints, or its box's centre.

COCO files come from many converters and dataset scripts, most of which read the pixels
without EXIF, so their points are in the STORED frame by default; where an image states
its `width` and `height`, the build checks them against the picture and uses them to
tell the frames apart (`tfds_crowd/orientation.py`). The reader returns a `ReadResult`;
docs/datasets.md ("Your own annotations") shows a minimal file.
"""

from __future__ import annotations

import collections

import numpy as np

from tfds_crowd.crowd_builder import as_points
from tfds_crowd.point_annotations import (
    STORED,
    FolderFiles,
    PictureAnnotation,
    ReadResult,
    expect,
    number,
    whole_size,
)


def read_coco(files: FolderFiles, names: list[str]) -> ReadResult:
  """COCO JSON: an annotation with keypoints gives each keypoint with visibility v > 0
  (its box is then not used); one without keypoints gives its box's centre
  (x + w/2, y + h/2). `iscrowd` regions, keypoints with v = 0 and annotations with
  neither are counted as ignored. Labels are category names."""
  result = ReadResult()
  for name in names:
    record, where = files.json(name), files.describe(name)
    expect(
        isinstance(record, dict)
        and isinstance(record.get("images"), list)
        and isinstance(record.get("annotations"), list),
        where,
        "not a COCO file: no 'images' and 'annotations' lists.",
    )
    images, found = _coco_images(record["images"], where), {}
    categories = {c.get("id"): c.get("name") for c in record.get("categories") or []}
    for image_id in images:
      found[image_id] = ([], [], collections.Counter())
    for index, annotation in enumerate(record["annotations"]):
      at = f"{where}, annotation {index}"
      expect(isinstance(annotation, dict), at, "an annotation must be a JSON object.")
      expect(
          annotation.get("image_id") in images,
          at,
          f"unknown image_id {annotation.get('image_id')!r}.",
      )
      category = annotation.get("category_id")
      expect(category is None or category in categories, at, f"unknown category_id {category!r}.")
      _coco_points(annotation, at, categories.get(category), *found[annotation["image_id"]])
    for image_id, (reference, size, at) in images.items():
      points, labels, ignored = found[image_id]
      picture = files.resolve(reference, name, at)
      if picture is None:
        result.missing.append((reference, where))
        continue
      points = as_points(points, at) if points else np.zeros((0, 2))
      result.annotations.append(
          PictureAnnotation(picture, at, points, labels, STORED, size, ignored=ignored)
      )
  return result


def _coco_images(images: list, where: str) -> dict:
  """{image id: (file_name, declared size, where)} of a COCO `images` list."""
  found = {}
  for index, image in enumerate(images):
    at = f"{where}, image {index}"
    expect(
        isinstance(image, dict) and isinstance(image.get("file_name"), str),
        at,
        "a COCO image needs 'id' and 'file_name'.",
    )
    at = f"{where}, image {image['file_name']!r}"
    expect(image.get("id") not in found, at, f"image id {image.get('id')!r} appears twice.")
    size = whole_size(image.get("width"), image.get("height"), at)
    found[image.get("id")] = (image["file_name"], size, at)
  return found


def _coco_points(annotation: dict, at: str, label, points: list, labels: list, ignored) -> None:
  """Adds one COCO annotation's points (visible keypoints, else its box centre) to
  its picture's lists, or counts why it gives none."""
  if annotation.get("iscrowd"):
    ignored["iscrowd region"] += 1
    return
  keypoints = annotation.get("keypoints")
  if keypoints:
    expect(
        isinstance(keypoints, list) and len(keypoints) % 3 == 0,
        at,
        "keypoints must be a list [x1, y1, v1, x2, y2, v2, ...].",
    )
    for k in range(0, len(keypoints), 3):
      x, y, visible = (number(v, at, "a keypoint value") for v in keypoints[k : k + 3])
      if visible > 0:
        points.append([x, y])
        labels.append(label)
      else:
        ignored["keypoint with v=0"] += 1
  elif annotation.get("bbox") is not None:
    box = annotation["bbox"]
    expect(isinstance(box, list) and len(box) == 4, at, f"bbox must be [x, y, w, h], got {box!r}.")
    x, y, w, h = (number(v, at, "a bbox value") for v in box)
    points.append([x + w / 2, y + h / 2])
    labels.append(label)
  else:
    ignored["annotation without bbox or keypoints"] += 1
