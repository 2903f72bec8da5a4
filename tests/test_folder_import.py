"""The folder importer (`python -m tfds_crowd.build folder`): every annotation format from
real photos the test re-annotates from their `.mat` files, from small files typed after
each tool's documentation, and from real exports made by people with the tools; EXIF
orientation, labels, splits, and the messages for mixed, unknown and damaged folders."""

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from cfrnet_jax.data import pipeline
from cfrnet_jax.data.geometry import decode_image
from tests.conftest import shared_data
from tfds_crowd.build import build as build_dataset
from tfds_crowd.build import folder_main
from tfds_crowd.crowd_builder import as_points, screen_points
from tfds_crowd.folder import build_folder
from tfds_crowd.folder_splits import hash_position, hashed_splits
from tfds_crowd.manual_source import CrowdDataError
from tfds_crowd.shanghaitech import parse_ground_truth
from tfds_crowd.ucf_cc_50 import parse_annotation

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EXPORTS = SHARED / "annotation_exports"
FORMATS = [
    "labelme",
    "cvat",
    "label_studio",
    "via",
    "coco",
    "points_txt",
    "list",
    "csv",
    "dots",
    "cclabeler",
    "shanghaitech_mat",
]


def examples(builder) -> dict:
  """{filename: example} over every split of a built dataset."""
  return {
      e["filename"].decode(): e
      for split in builder.info.splits
      for e in builder.as_data_source(split=split)
  }


def build(folder: Path, data: Path, name: str, **options):
  """`build_folder` with one split (train) unless `options` say otherwise."""
  options.setdefault("val_fraction", 0)
  options.setdefault("test_fraction", 0)
  return build_folder(str(folder), name, data_dir=str(data), **options)


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
  for name, content in files.items():
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return folder


def picture(width: int = 40, height: int = 30, kind: str = "JPEG", mode: str = "RGB") -> bytes:
  pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), np.uint8)
  output = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(output, format=kind)
  return output.getvalue()


# Real photos in every format ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_pictures(tmp_path_factory):
  """All 50 UCF_CC_50 photos (63,974 heads) and the five sht_sample photos: {name: (photo,
  (N, 2) annotated points, (K, 2) the points the existing builders keep, (width,
  height))}. UCF_CC_50's kept points are those its builder stores (built here);
  sht_sample's are its builder's screening of the same `.mat` points."""
  ucf, sht = shared_data("ucf_cc_50"), shared_data("sht_sample")
  data = tmp_path_factory.mktemp("ucf_cc_50")
  builder = build_dataset("ucf_cc_50", str(data), str(ucf))
  stored = examples(builder)
  assert len(stored) == 50
  found = {}
  for k in range(1, 51):
    points = parse_annotation((ucf / f"{k}_ann.mat").read_bytes(), f"{k}_ann.mat")
    found[f"ucf_{k}"] = (ucf / f"{k}.jpg", points)
  for k in range(1, 6):
    truth = sht / "ground-truth" / f"GT_IMG_{k}.mat"
    found[f"sht_{k}"] = (
        sht / "images" / f"IMG_{k}.jpg",
        parse_ground_truth(truth.read_bytes(), "")[0],
    )
  pictures = {}
  for name, (photo, points) in found.items():
    width, height = Image.open(photo).size
    kept = screen_points(as_points(points, name), width, height).points
    if name.startswith("ucf_"):
      example = stored[photo.name]
      assert (example["width"], example["height"]) == (width, height)
      np.testing.assert_array_equal(example["points"], kept.astype(np.float32))
      kept = example["points"].astype(np.float64)
    pictures[name] = (photo, points, kept, (width, height))
  return pictures


def link(folder: Path, relative: str, photo: Path) -> None:
  (folder / relative).parent.mkdir(parents=True, exist_ok=True)
  os.symlink(photo, folder / relative)


def write_labelme(folder, pictures):
  for index, (name, (photo, points, _, (w, h))) in enumerate(pictures.items()):
    link(folder, f"images/{name}.jpg", photo)
    place, image_path = (
        ("annotations", f"..\\images\\{name}.jpg") if index == 0 else ("images", f"{name}.jpg")
    )
    shapes = [{"label": "head", "points": [p], "shape_type": "point"} for p in points.tolist()]
    record = {
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageWidth": w,
        "imageHeight": h,
    }
    write(folder, {f"{place}/{name}.json": json.dumps(record)})


def write_cvat(folder, pictures):
  images = []
  for index, (name, (photo, points, _, (w, h))) in enumerate(pictures.items()):
    link(folder, f"images/{name}.jpg", photo)
    pairs = ";".join(f"{x!r},{y!r}" for x, y in points.tolist())
    images.append(
        f'<image id="{index}" name="{name}.jpg" width="{w}" height="{h}">'
        f'<points label="head" occluded="0" points="{pairs}"></points></image>'
    )
  write(
      folder,
      {"annotations.xml": f"<annotations><version>1.1</version>{''.join(images)}</annotations>"},
  )


def write_label_studio(folder, pictures):
  tasks = []
  for index, (name, (photo, points, _, (w, h))) in enumerate(pictures.items()):
    link(folder, f"images/{name}.jpg", photo)
    prefix = hashlib.sha256(name.encode()).hexdigest()[:8]
    results = [
        {
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "type": "keypointlabels",
            "value": {"x": x / w * 100, "y": y / h * 100, "width": 0.5, "keypointlabels": ["head"]},
        }
        for x, y in points.tolist()
    ]
    tasks.append(
        {
            "id": index + 1,
            "annotations": [{"id": index + 1, "result": results}],
            "data": {"image": f"/data/upload/1/{prefix}-{name}.jpg"},
        }
    )
  write(folder, {"export.json": json.dumps(tasks)})


def write_via(folder, pictures):
  entries = {}
  for name, (photo, points, _, _) in pictures.items():
    link(folder, f"{name}.jpg", photo)
    regions = [
        {
            "shape_attributes": {"name": "point", "cx": x, "cy": y},
            "region_attributes": {"label": "head"},
        }
        for x, y in points.tolist()
    ]
    size = photo.stat().st_size
    entries[f"{name}.jpg{size}"] = {
        "filename": f"{name}.jpg",
        "size": size,
        "regions": regions,
        "file_attributes": {},
    }
  names = sorted(entries)
  project = {"_via_settings": {}, "_via_img_metadata": {k: entries[k] for k in names[:3]}}
  write(
      folder,
      {
          "via_project.json": json.dumps(project),
          "via_export.json": json.dumps({k: entries[k] for k in names[3:]}),
      },
  )


def write_coco(folder, pictures):
  images, annotations = [], []
  for index, (name, (photo, points, _, (w, h))) in enumerate(pictures.items()):
    link(folder, f"images/{name}.jpg", photo)
    images.append({"id": index, "file_name": f"{name}.jpg", "width": w, "height": h})
    if index % 2:  # keypoints: each point with visibility 2, in one annotation
      flat = [v for x, y in points for v in (x, y, 2)]
      annotations.append(
          {"id": len(annotations), "image_id": index, "category_id": 1, "keypoints": flat}
      )
    else:  # boxes 4 px wide centred on each point
      for x, y in points.tolist():
        annotations.append(
            {
                "id": len(annotations),
                "image_id": index,
                "category_id": 1,
                "bbox": [x - 2, y - 2, 4, 4],
            }
        )
  record = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "head"}]}
  write(folder, {"annotations/instances.json": json.dumps(record)})


def write_points_txt(folder, pictures):
  for index, (name, (photo, points, _, _)) in enumerate(pictures.items()):
    link(folder, f"{name}.jpg", photo)
    separator = "," if index % 2 else " "
    write(folder, {f"{name}.txt": "".join(f"{x!r}{separator}{y!r}\n" for x, y in points.tolist())})


def write_list(folder, pictures):
  lines = []
  for name, (photo, points, _, _) in pictures.items():
    link(folder, f"images/{name}.jpg", photo)
    write(folder, {f"labels/{name}.txt": "".join(f"{x!r} {y!r}\n" for x, y in points.tolist())})
    lines.append(f"images/{name}.jpg labels/{name}.txt\n")
  write(folder, {"train.list": "".join(lines)})


def write_csv(folder, pictures):
  rows = ["image,x,y,label\n"]
  for name, (photo, points, _, _) in pictures.items():
    link(folder, f"pictures/{name}.jpg", photo)
    rows += [f"pictures/{name}.jpg,{x!r},{y!r},head\n" for x, y in points.tolist()]
  write(folder, {"points.csv": "".join(rows)})


def dot_pixels(kept: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """The pixels (column, row) a dot map marks for `kept` points: the pixel each point
  falls in (a point on the right or bottom border: the last pixel)."""
  return np.minimum(np.floor(kept).astype(int), np.array(size) - 1)


def write_dots(folder, pictures):
  for name, (photo, _, kept, (w, h)) in pictures.items():
    link(folder, f"{name}.jpg", photo)
    marked = np.zeros((h, w), bool)
    columns, rows = dot_pixels(kept, (w, h)).T
    marked[rows, columns] = True
    Image.fromarray(marked).save(folder / f"{name}_dots.png")  # mode "1"


def write_cclabeler(folder, pictures):
  for name, (photo, points, _, _) in pictures.items():
    link(folder, f"data/images/{name}.jpg", photo)
    record = {
        "img_id": f"{name}.jpg",
        "human_num": len(points),
        "boxes": [],
        "points": [{"x": x, "y": y} for x, y in points.tolist()],
    }
    write(folder, {f"data/jsons/{name}.json": json.dumps(record)})


def write_shanghaitech_mat(folder, pictures):
  for name, (photo, points, _, _) in pictures.items():
    link(folder, f"images/{name}.jpg", photo)
    info = np.empty((1, 1), dtype=object)
    info[0, 0] = {"location": points, "number": np.array([[len(points)]], np.float64)}
    (folder / "ground-truth").mkdir(exist_ok=True)
    scipy.io.savemat(folder / "ground-truth" / f"GT_{name}.mat", {"image_info": info})


WRITERS = {name: globals()[f"write_{name}"] for name in FORMATS}


@pytest.fixture(scope="module")
def real_builds(real_pictures, tmp_path_factory):
  """{format: (FolderBuild, {filename: example})}: the real photos written in each format
  and built through the command's own function (default splits 0.2 / 0.2)."""
  root = tmp_path_factory.mktemp("real")
  built = {}
  for name in FORMATS:
    folder = root / name
    WRITERS[name](folder, real_pictures)
    argv = ["--manual_dir", str(folder), "--name", f"real_{name}", "--data_dir", str(root / "data")]
    result = folder_main(argv)
    built[name] = (result, examples(result.builder))
  return built


@pytest.mark.parametrize("name", FORMATS)
def test_real_photos_in_every_format(real_builds, real_pictures, name):
  """All 55 real photos (the 50 of UCF_CC_50 and the 5 of sht_sample) written in each
  format and built: every picture present, every count the existing builders' (for dot
  maps, one per marked pixel), every point within 0.01 px of the annotation's (a dot
  map's within its pixel), and the points outside their picture dropped as the builders
  drop them (2 in UCF_CC_50)."""
  result, found = real_builds[name]
  assert {Path(f).stem for f in found} == set(real_pictures)
  assert sorted(result.builder.info.splits) == ["test", "train", "val"]
  for filename, example in found.items():
    _, points, kept, size = real_pictures[Path(filename).stem]
    dropped = 0
    if name == "dots":  # one point per marked pixel, at its centre
      pixels = dot_pixels(kept, size)
      unique = np.unique(pixels, axis=0)
      assert example["count"] == len(unique)
      np.testing.assert_array_equal(
          np.unique(np.floor(example["points"]).astype(int), axis=0), unique
      )
      np.testing.assert_allclose(example["points"] % 1, 0.5)
      assert np.abs(kept - (pixels + 0.5)).max(initial=0) <= 0.5
    else:
      assert example["count"] == len(kept)
      np.testing.assert_allclose(example["points"], kept, atol=0.01, rtol=0)
      dropped = len(points) - len(kept)
    assert (example["width"], example["height"]) == size
    assert (example["dropped_points"], example["duplicate_points"]) == (dropped, 0)


def test_real_photo_counts_are_the_published_ones(real_builds, real_pictures):
  """UCF_CC_50 (63,974 heads, 2 of them outside their image: docs/datasets.md, "Bad
  data") and sht_sample as its README gives them."""
  _, found = real_builds["shanghaitech_mat"]
  counts = {Path(f).stem: int(e["count"]) for f, e in found.items()}
  assert sum(count for name, count in counts.items() if name.startswith("ucf_")) == 63_972
  assert {name: counts[name] for name in ("ucf_1", "ucf_4", "ucf_5")} == {
      "ucf_1": 4633,
      "ucf_4": 96,
      "ucf_5": 469,
  }
  assert {name: count for name, count in counts.items() if name.startswith("sht_")} == {
      "sht_1": 21,
      "sht_2": 58,
      "sht_3": 11,
      "sht_4": 222,
      "sht_5": 256,
  }
  for builder in ("shanghaitech_mat", "cclabeler"):  # the count fields the writers wrote
    _, found = real_builds[builder]
    annotated = {Path(f).stem: int(e["annotated_count"]) for f, e in found.items()}
    assert annotated == {name: len(points) for name, (_, points, _, _) in real_pictures.items()}


def test_real_photos_keep_their_bytes_and_splits_are_recorded(real_builds, real_pictures):
  result, found = real_builds["csv"]
  for filename, example in found.items():
    assert example["image"] == real_pictures[Path(filename).stem][0].read_bytes()
    assert set(example["labels"]) <= {b"head"}
  record = result.builder.info.metadata["folder_import"]
  assert record["format"] == "csv" and record["val_fraction"] == 0.2
  assert not result.builder.info.description.startswith("None")  # the builder's own text
  by_split = {
      s: sorted(e["filename"].decode() for e in result.builder.as_data_source(split=s))
      for s in result.builder.info.splits
  }
  assert by_split == record["splits"]
  assert any(line.startswith("real_csv/train: ") for line in result.summary)


# Small files typed after each tool's documentation -------------------------------------


def png_base64(width: int = 40, height: int = 30) -> str:
  return base64.b64encode(picture(width, height, "PNG")).decode()


def labelme_file(
    image_path: str, points: list, image_data: str | None = None, size=(40, 30)
) -> str:
  shapes = [
      {
          "label": label,
          "points": [xy],
          "group_id": None,
          "description": "",
          "shape_type": "point",
          "flags": {},
      }
      for label, xy in points
  ]
  shapes.append(
      {
          "label": "crowd",
          "points": [[1, 1], [20, 1], [20, 10]],
          "group_id": None,
          "shape_type": "polygon",
          "flags": {},
      }
  )
  return json.dumps(
      {
          "version": "5.2.1",
          "flags": {},
          "shapes": shapes,
          "imagePath": image_path,
          "imageData": image_data,
          "imageHeight": size[1],
          "imageWidth": size[0],
      },
      indent=2,
  )


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task><id>7</id><name>heads</name><size>2</size><mode>annotation</mode>
      <labels><label><name>head</name></label><label><name>car</name></label></labels>
    </task>
  </meta>
  <image id="0" name="frame_000000.jpg" width="40" height="30">
    <points label="head" source="manual" occluded="0" points="10.00,5.00;20.50,15.25" z_order="0">
    </points>
    <box label="car" source="manual" occluded="0" xtl="1.00" ytl="2.00" xbr="8.00" ybr="9.00"
      z_order="0">
    </box>
  </image>
  <image id="1" name="frame_000001.jpg" width="40" height="30">
    <points label="car" source="manual" occluded="1" points="3.00,4.00" z_order="0">
    </points>
  </image>
</annotations>
"""

LABEL_STUDIO_JSON = """[
  {
    "id": 1,
    "annotations": [
      {
        "id": 11, "completed_by": 1, "was_cancelled": false, "ground_truth": false,
        "result": [
          {"original_width": 40, "original_height": 30, "image_rotation": 0,
           "value": {"x": 25.0, "y": 50.0, "width": 0.6, "keypointlabels": ["head"]},
           "id": "kp1", "from_name": "kp", "to_name": "image", "type": "keypointlabels",
           "origin": "manual"},
          {"original_width": 40, "original_height": 30, "image_rotation": 0,
           "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0,
                     "rectanglelabels": ["car"]},
           "id": "box1", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "origin": "manual"}
        ]
      }
    ],
    "predictions": [],
    "data": {"image": "/data/upload/1/8f3e2a1b-IMG_1.jpg"},
    "file_upload": "8f3e2a1b-IMG_1.jpg"
  },
  {
    "id": 2,
    "annotations": [
      {"id": 21, "was_cancelled": true, "result": [
        {"original_width": 40, "original_height": 30, "image_rotation": 0,
         "value": {"x": 1, "y": 1, "width": 0.6, "keypointlabels": ["head"]},
         "from_name": "kp", "to_name": "image", "type": "keypointlabels"}]},
      {"id": 22, "was_cancelled": false, "result": [
        {"original_width": 40, "original_height": 30, "image_rotation": 90,
         "value": {"x": 50.0, "y": 10.0, "width": 0.6, "keypointlabels": ["head"]},
         "from_name": "kp", "to_name": "image", "type": "keypointlabels"}]}
    ],
    "data": {"image": "/data/upload/1/0a1b2c3d-IMG_2.jpg"}
  }
]
"""

VIA_PROJECT = """{
  "_via_settings": {"ui": {"annotation_editor_height": 25}, "core": {"buffer_size": 18,
    "filepath": {}, "default_filepath": ""}, "project": {"name": "heads"}},
  "_via_img_metadata": {
    "street.jpg1234": {
      "filename": "street.jpg", "size": 1234,
      "regions": [
        {"shape_attributes": {"name": "point", "cx": 12, "cy": 7},
         "region_attributes": {"label": "head"}},
        {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 5, "height": 5},
         "region_attributes": {"label": "car"}}
      ],
      "file_attributes": {}
    }
  },
  "_via_attributes": {"region": {"label": {"type": "dropdown", "description": "",
    "options": {"head": "", "car": ""}, "default_options": {}}}, "file": {}},
  "_via_data_format_version": "2.0.10",
  "_via_image_id_list": ["street.jpg1234"]
}"""

VIA_EXPORT = """{"park.jpg4321": {"filename": "park.jpg", "size": 4321, "regions": [
  {"shape_attributes": {"name": "point", "cx": 3, "cy": 4},
   "region_attributes": {"kind": {"head": true, "car": false}}}], "file_attributes": {}}}"""

COCO_JSON = """{
  "info": {"description": "heads", "version": "1.0"},
  "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
  "annotations": [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 4, 6], "area": 24, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 2, "keypoints": [5, 5, 2, 0, 0, 0, 7, 8, 1],
     "num_keypoints": 2, "bbox": [4, 4, 4, 5], "iscrowd": 0},
    {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1,
     "segmentation": {"counts": [0, 1200], "size": [30, 40]}}
  ],
  "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "head",
                 "keypoints": ["top", "middle", "chin"], "skeleton": []}]
}"""


def ground_truth_mat(points) -> bytes:
  output = io.BytesIO()
  info = np.empty((1, 1), dtype=object)
  info[0, 0] = {"location": np.array(points, np.float64), "number": np.array([[len(points)]])}
  scipy.io.savemat(output, {"image_info": info})
  return output.getvalue()


def dot_map(marked: list[tuple[int, int]], size=(40, 30), colour=None) -> bytes:
  """A PNG marking the pixels (column, row): mode "1", or RGB dots of `colour` on black
  (VGG cells' dot maps are red dots on black)."""
  pixels = np.zeros(size[::-1], bool)
  for column, row in marked:
    pixels[row, column] = True
  if colour is not None:
    pixels = pixels[..., None] * np.array(colour, np.uint8)
  output = io.BytesIO()
  Image.fromarray(pixels).save(output, format="PNG")
  return output.getvalue()


def tool_fixtures(jpeg: bytes, png: bytes) -> dict:
  """The interactive tools' files, as their documentation shows them."""
  return {
      "labelme": (
          {
              "images/street.jpg": jpeg,
              "annotations/street.json": labelme_file(
                  "..\\images\\street.jpg", [("head", [12.0, 8.5]), ("head", [30.25, 20])]
              ),
              "embedded.json": labelme_file("embedded.png", [("head", [5, 6])], png_base64()),
          },
          {
              "images/street.jpg": [("head", 12, 8.5), ("head", 30.25, 20)],
              "embedded.png": [("head", 5, 6)],
          },
      ),
      "cvat": (
          {
              "annotations.xml": CVAT_XML,
              "images/frame_000000.jpg": jpeg,
              "images/frame_000001.jpg": jpeg,
          },
          {
              "images/frame_000000.jpg": [("head", 10, 5), ("head", 20.5, 15.25)],
              "images/frame_000001.jpg": [("car", 3, 4)],
          },
      ),
      "label_studio": (
          {
              "project-1-at-2024.json": LABEL_STUDIO_JSON,
              "pictures/IMG_1.jpg": jpeg,
              "pictures/0a1b2c3d-IMG_2.jpg": jpeg,
              "pictures/IMG_2.jpg": jpeg,
          },
          {
              "pictures/IMG_1.jpg": [("head", 10, 15)],
              "pictures/0a1b2c3d-IMG_2.jpg": [("head", 20, 3)],
          },
      ),
      "via": (
          {
              "via_project.json": VIA_PROJECT,
              "via_export.json": VIA_EXPORT,
              "street.jpg": jpeg,
              "park.jpg": jpeg,
          },
          {"street.jpg": [("head", 12, 7)], "park.jpg": [("head", 3, 4)]},
      ),
      "coco": (
          {"annotations/instances_default.json": COCO_JSON, "images/a.jpg": jpeg},
          {"images/a.jpg": [("person", 12, 13), ("head", 5, 5), ("head", 7, 8)]},
      ),
  }


def file_fixtures(jpeg: bytes, png: bytes) -> dict:
  """The point files of scripts and research code."""
  return {
      "points_txt": (
          {"a.jpg": jpeg, "a.txt": "10 5\n20.5,15.25\n\n", "b.png": png, "b.txt": ""},
          {"a.jpg": [("", 10, 5), ("", 20.5, 15.25)], "b.png": []},
      ),
      "list": (
          {
              "train.list": "images/a.jpg gt/a.txt\n",
              "test.list": "images/b.jpg gt/b.txt\n",
              "images/a.jpg": jpeg,
              "images/b.jpg": jpeg,
              "gt/a.txt": "10 5\n",
              "gt/b.txt": "1 2\n3 4\n",
          },
          {"images/a.jpg": [("", 10, 5)], "images/b.jpg": [("", 1, 2), ("", 3, 4)]},
      ),
      "csv": (
          {
              "points.csv": "image,x,y,label\na.jpg,10,5,head\na.jpg,20.5,15.25,car\nb.jpg,,\n",
              "more.csv": "c.jpg,1,2\n",
              "a.jpg": jpeg,
              "b.jpg": jpeg,
              "c.jpg": jpeg,
          },
          {"a.jpg": [("head", 10, 5), ("car", 20.5, 15.25)], "b.jpg": [], "c.jpg": [("", 1, 2)]},
      ),
      "dots": (
          {
              "X.png": png,
              "X_dots.png": dot_map([(3, 4), (10, 7)]),
              "cells_001.png": png,
              "cells_dots_001.png": dot_map([(0, 0)]),
              "vgg/001cell.png": png,
              "vgg/001dots.png": dot_map([(39, 29), (2, 1)], colour=(255, 0, 0)),
              "trancos/image-1-000001.jpg": jpeg,
              "trancos/image-1-000001dots.png": dot_map([(5, 6)], colour=(255, 255, 255)),
          },
          {
              "X.png": [("", 3.5, 4.5), ("", 10.5, 7.5)],
              "cells_001.png": [("", 0.5, 0.5)],
              "vgg/001cell.png": [("", 2.5, 1.5), ("", 39.5, 29.5)],
              "trancos/image-1-000001.jpg": [("", 5.5, 6.5)],
          },
      ),
      "cclabeler": (
          {
              "data/images/1.jpg": jpeg,
              "data/jsons/1.json": (
                  '{"img_id": "1.jpg", "human_num": 3, "boxes": [{"sx": 1, "sy": 2, "ex": 5, '
                  '"ey": 6}], "points": [{"x": 10, "y": 5}, {"x": 20.5, "y": 15.25}]}'
              ),
          },
          {"data/images/1.jpg": [("", 10, 5), ("", 20.5, 15.25), ("", 3, 4)]},
      ),
      "shanghaitech_mat": (
          {
              "train_data/images/IMG_1.jpg": jpeg,
              "train_data/ground-truth/GT_IMG_1.mat": ground_truth_mat([[10, 5], [20.5, 15.25]]),
          },
          {"train_data/images/IMG_1.jpg": [("", 10, 5), ("", 20.5, 15.25)]},
      ),
  }


def hand_fixtures() -> dict:
  """{format: (files, {filename: [(label, x, y)]})}, the files as each tool documents
  them, the pictures tiny ones made here."""
  jpeg, png = picture(), picture(kind="PNG")
  return tool_fixtures(jpeg, png) | file_fixtures(jpeg, png)


@pytest.mark.parametrize("name", FORMATS)
def test_documented_example_of_every_format(tmp_path, name):
  files, expected = hand_fixtures()[name]
  result = build(write(tmp_path / "folder", files), tmp_path / "data", f"hand_{name}")
  assert result.builder.info.metadata["folder_import"]["format"] == name
  found = examples(result.builder)
  assert sorted(found) == sorted(expected)
  for filename, points in expected.items():
    example = found[filename]
    assert [label.decode() for label in example["labels"]] == [label for label, _, _ in points]
    want = np.array([[x, y] for _, x, y in points], np.float32).reshape(-1, 2)
    np.testing.assert_allclose(example["points"], want, atol=0.01)
    assert example["count"] == len(points)


def test_documented_examples_details(tmp_path):
  """What each fixture adds: the embedded LabelMe picture's bytes, ignored shapes and
  cancelled annotations in the summary, cclabeler's box counted in human_num."""
  fixtures = hand_fixtures()
  labelme = build(write(tmp_path / "l", fixtures["labelme"][0]), tmp_path / "d", "hand_l")
  found = examples(labelme.builder)
  assert found["embedded.png"]["image"] == base64.b64decode(png_base64())
  assert "ignored 2 shapes that are not points (polygon shape 2)" in labelme.summary[0]
  studio = build(write(tmp_path / "s", fixtures["label_studio"][0]), tmp_path / "d", "hand_s")
  assert "1 cancelled Label Studio annotations" in studio.summary[-1]
  assert "1 pictures without annotations dropped (pictures/IMG_2.jpg)" in studio.summary[-1]
  embedded = {
      "a/x.json": labelme_file("x.jpg", [("head", [1, 2])], png_base64()),
      "b/x.jpg": picture(),
  }
  result = build(write(tmp_path / "e", embedded), tmp_path / "d", "hand_e")  # not b/x.jpg
  assert examples(result.builder)["a/x.jpg"]["image"] == base64.b64decode(png_base64())
  assert "1 pictures without annotations dropped (b/x.jpg)" in result.summary[-1]
  coco = build(write(tmp_path / "c", fixtures["coco"][0]), tmp_path / "d", "hand_c")
  assert "iscrowd region 1" in coco.summary[0] and "keypoint with v=0 1" in coco.summary[0]
  cclabeler = build(write(tmp_path / "n", fixtures["cclabeler"][0]), tmp_path / "d", "hand_n")
  example = examples(cclabeler.builder)["data/images/1.jpg"]
  assert (example["annotated_count"], example["count"]) == (3, 3)


# Mixed, unknown and damaged folders ---------------------------------------------------


def test_mixed_unknown_and_empty_folders_are_refused(tmp_path):
  jpeg = picture()
  mixed = write(
      tmp_path / "mixed",
      {
          "a.jpg": jpeg,
          "a.json": labelme_file("a.jpg", [("head", [1, 2])]),
          "b.jpg": jpeg,
          "b.txt": "1 2\n",
      },
  )
  with pytest.raises(
      CrowdDataError,
      match=r"mixes annotation formats: .*labelme \(1 files: a\.json\).*points_txt \(1 files: b\.t",
  ):
    build(mixed, tmp_path / "data", "mixed")
  unknown = write(
      tmp_path / "unknown", {"a.jpg": jpeg, "a.txt": "1 2\n", "notes.json": '{"foo": 1}'}
  )
  with pytest.raises(
      CrowdDataError, match=r"no known format: .*notes\.json \(a JSON object with keys \['foo'\]\)"
  ):
    build(unknown, tmp_path / "data", "unknown")
  ucf_layout = write(tmp_path / "ucf", {"1.jpg": jpeg, "1_ann.mat": ground_truth_mat([[1, 2]])})
  with pytest.raises(CrowdDataError, match=r"1_ann\.mat \(a MATLAB file outside ShanghaiTech"):
    build(ucf_layout, tmp_path / "data", "ucf")
  nothing = write(tmp_path / "nothing", {"a.jpg": jpeg, "README.md": "pictures"})
  with pytest.raises(
      CrowdDataError,
      match=r"no annotations of a known format found; it holds 1 pictures; 1 other files \(.*READ",
  ):
    build(nothing, tmp_path / "data", "nothing")
  with pytest.raises(CrowdDataError, match=r"no cvat annotations found"):
    build(nothing, tmp_path / "data", "nothing", format="cvat")


def test_a_chosen_format_ignores_and_reports_the_others(tmp_path):
  folder = write(
      tmp_path / "folder",
      {
          "a.jpg": picture(),
          "a.json": labelme_file("a.jpg", [("head", [1, 2])]),
          "b.jpg": picture(),
          "b.txt": "1 2\n3 4\n",
          "notes.json": '{"foo": 1}',
      },
  )
  result = build(folder, tmp_path / "data", "chosen", format="points_txt")
  assert {name: int(e["count"]) for name, e in examples(result.builder).items()} == {"b.jpg": 2}
  assert "2 files ignored (not points_txt annotations)" in result.summary[-1]
  assert "1 pictures without annotations dropped (a.jpg)" in result.summary[-1]


def cvat_xml(width: int, points: str) -> str:
  image = f'<image name="a.jpg" width="{width}" height="30">'
  return f'<annotations>{image}<points label="h" points="{points}"/></image></annotations>'


def studio_task(task: int, image: str) -> str:
  return json.dumps([{"id": task, "data": {"image": image}, "annotations": []}])


DAMAGED = {
    "invalid JSON": ({"a.jpg": "JPEG", "a.json": '{"shapes": ['}, r"a\.json: not valid JSON"),
    "not UTF-8": ({"a.jpg": "JPEG", "a.txt": b"1 2\xff\n"}, r"a\.txt: not a UTF-8 text file"),
    "invalid XML": (
        {"a.jpg": "JPEG", "annotations.xml": "<annotations><image"},
        r"annotations\.xml: not valid XML",
    ),
    "CVAT points": (
        {
            "a.jpg": "JPEG",
            "annotations.xml": cvat_xml(40, "1,2;3"),
        },
        r"annotations\.xml, <image name='a\.jpg'>: points='1,2;3' is not",
    ),
    "CVAT size": (
        {
            "a.jpg": "JPEG",
            "annotations.xml": cvat_xml(50, "1,2"),
        },
        r"<image name='a\.jpg'>: the annotation is for a 50x30 picture, but the picture is 40x30",
    ),
    "LabelMe point": (
        {
            "a.jpg": "JPEG",
            "a.json": json.dumps(
                {
                    "shapes": [{"label": "h", "points": [[1, 2], [3, 4]], "shape_type": "point"}],
                    "imagePath": "a.jpg",
                }
            ),
        },
        r"a\.json, shape 0: a point shape holds exactly one \[x, y\]",
    ),
    "LabelMe picture twice": (
        {"a.jpg": "JPEG", "a.json": labelme_file("a.jpg", []), "b.json": labelme_file("a.jpg", [])},
        r"b\.json: the picture a\.jpg is annotated twice \(also in .*a\.json\)",
    ),
    "text line": (
        {"a.jpg": "JPEG", "a.txt": "1 2\n1 2 3\n"},
        r"a\.txt, line 2: expected 'x y' or 'x,y', got '1 2 3'",
    ),
    "damaged picture": (
        {"a.jpg": "TRUNCATED", "a.txt": "1 2\n"},
        r"a\.jpg: cannot decode the image",
    ),
    "damaged .mat": (
        {"images/IMG_1.jpg": "JPEG", "ground-truth/GT_IMG_1.mat": ground_truth_mat([[1, 2]])[:150]},
        r"GT_IMG_1\.mat: ",
    ),
    "Label Studio missing": (
        {
            "a.jpg": "JPEG",
            "export.json": studio_task(7, "/data/upload/3/deadbeef-b.jpg"),
        },
        r"export\.json, task 7: no picture named 'deadbeef-b\.jpg' or 'b\.jpg'",
    ),
    "Label Studio ambiguous": (
        {
            "x/a.jpg": "JPEG",
            "y/a.jpg": "JPEG",
            "export.json": studio_task(8, "/data/upload/3/a.jpg"),
        },
        r"export\.json, task 8: the picture '/data/upload/3/a\.jpg' is ambiguous: 2 pictures",
    ),
    "COCO image id": (
        {
            "a.jpg": "JPEG",
            "coco.json": json.dumps(
                {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2}]}
            ),
        },
        r"coco\.json, annotation 0: unknown image_id 2",
    ),
    "CSV number": (
        {"a.jpg": "JPEG", "p.csv": "image,x,y\na.jpg,1,two\n"},
        r"p\.csv, line 2: x and y must be numbers",
    ),
    "inverted dot map": (
        {"a.png": "PNG", "a_dots.png": dot_map([(x, y) for x in range(40) for y in range(30)])},
        r"a_dots\.png: 1200 of its 1200 pixels are marked: not a dot map",
    ),
    "dot map size": (
        {"a.png": "PNG", "a_dots.png": dot_map([(1, 1)], (20, 20))},
        r"a_dots\.png: the annotation is for a 20x20 picture",
    ),
    "dot map of two pictures": (
        {"001cell.png": "PNG", "001.jpg": "JPEG", "001dots.png": dot_map([(1, 1)])},
        (
            r"001dots\.png: the dot map fits several pictures: 001cell\.png, 001\.jpg \(its "
            r"name may belong to 001cell\.\* or 001\.\*\)"
        ),
    ),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_files_are_named(tmp_path, case):
  files, message = DAMAGED[case]
  contents = {"JPEG": picture(), "PNG": picture(kind="PNG"), "TRUNCATED": picture()[:200]}
  folder = write(tmp_path / "folder", {k: contents.get(v, v) for k, v in files.items()})
  with pytest.raises(CrowdDataError, match=message):
    build(folder, tmp_path / "data", "damaged")
  assert not (tmp_path / "data" / "damaged").exists()


# Dot map names ------------------------------------------------------------------------

DOT_NAMINGS = {  # {naming: (picture, dot map)}, as the public sets ship them
    "X_dots": ("street.png", "street_dots.png"),
    "X_dots_NNN (MBM)": ("BM_GRAZ_HE_0001_01_000.png", "BM_GRAZ_HE_0001_01_dots_000.png"),
    "VGG cells": ("cells/001cell.png", "cells/001dots.png"),
    "TRANCOS": ("images/image-1-000001.jpg", "images/image-1-000001dots.png"),
}


@pytest.mark.parametrize("file_format", ["auto", "dots"])
@pytest.mark.parametrize("naming", DOT_NAMINGS)
def test_dot_map_namings(tmp_path, naming, file_format):
  """Each naming, detected and with --format dots: the dot map's points go to its
  picture, and the dot map is not a picture of its own."""
  photo, dots = DOT_NAMINGS[naming]
  kind = "JPEG" if photo.endswith(".jpg") else "PNG"
  files = {photo: picture(kind=kind), dots: dot_map([(4, 3), (20, 10)], colour=(255, 0, 0))}
  result = build(write(tmp_path / "folder", files), tmp_path / "data", "dots", format=file_format)
  found = examples(result.builder)
  assert list(found) == [photo]
  np.testing.assert_allclose(found[photo]["points"], [[4.5, 3.5], [20.5, 10.5]])
  record = result.builder.info.metadata["folder_import"]
  assert record["format"] == "dots" and record["splits"] == {"train": [photo]}
  assert record["pictures_without_annotations"] == record["annotations_without_picture"] == []


def test_trancos_folder_with_format_dots(tmp_path):
  """TRANCOS ships a point list and a mask beside each picture and its dot map: detection
  refuses the mask (a .mat of no known format), --format dots reads the dot maps and
  reports the rest as ignored."""
  files = {
      "images/image-1-000001.jpg": picture(),
      "images/image-1-000001dots.png": dot_map([(7, 8)]),
      "images/image-1-000001.txt": "7.2\t8.9\n",
      "images/image-1-000001mask.mat": ground_truth_mat([[1, 2]]),
  }
  folder = write(tmp_path / "trancos", files)
  with pytest.raises(CrowdDataError, match=r"image-1-000001mask\.mat \(a MATLAB file outside"):
    build(folder, tmp_path / "data", "trancos")
  result = build(folder, tmp_path / "data", "trancos", format="dots")
  found = examples(result.builder)
  np.testing.assert_allclose(found["images/image-1-000001.jpg"]["points"], [[7.5, 8.5]])
  assert "2 files ignored (not dots annotations)" in result.summary[-1]


def test_dot_maps_without_their_picture_are_dropped_and_never_pictures(tmp_path):
  """A dot map of no picture is an annotation without its picture (dropped, counted, with
  the pictures its name could belong to), in every naming; it is never a picture."""
  files = {
      "a.png": picture(kind="PNG"),
      "a_dots.png": dot_map([(1, 1)]),
      "b_dots.png": dot_map([(1, 1)]),
      "c_dots_007.png": dot_map([(1, 1)]),
      "002dots.png": dot_map([(1, 1)]),
  }
  result = build(write(tmp_path / "folder", files), tmp_path / "data", "orphans")
  assert list(examples(result.builder)) == ["a.png"]
  record = result.builder.info.metadata["folder_import"]
  assert sorted(picture for picture, _ in record["annotations_without_picture"]) == [
      "002cell.* or 002.*",
      "b.*",
      "c_007.*",
  ]
  assert record["pictures_without_annotations"] == []
  assert "3 annotations without their picture dropped" in result.summary[-1]
  assert "0 pictures without annotations dropped" in result.summary[-1]
  # In a folder of another format a dot map is a dots file: detection reports the mix,
  # and another --format ignores it (it is not a picture without annotations).
  other = {"x.jpg": picture(), "x.txt": "1 2\n", "x_dots.png": dot_map([(1, 1)])}
  folder = write(tmp_path / "other", other)
  with pytest.raises(
      CrowdDataError,
      match=r"mixes annotation formats: 1 pictures; dots \(1 files: x_dots\.png\); points_txt",
  ):
    build(folder, tmp_path / "data", "other")
  result = build(folder, tmp_path / "data", "other", format="points_txt")
  assert list(examples(result.builder)) == ["x.jpg"]
  assert "0 pictures without annotations dropped" in result.summary[-1]
  assert "1 files ignored (not points_txt annotations): " in result.summary[-1]


# EXIF orientation ---------------------------------------------------------------------


def turned_jpeg() -> bytes:
  """A 40x30 stored picture with EXIF orientation 6 (shown turned 90 degrees clockwise,
  30x40), a white 4x4 block around stored (32, 7): shown around (30 - 7, 32) = (23, 32)."""
  pixels = np.zeros((30, 40, 3), np.uint8)
  pixels[5:9, 30:34] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  output = io.BytesIO()
  Image.fromarray(pixels).save(output, format="JPEG", quality=95, exif=exif.tobytes())
  return output.getvalue()


@pytest.mark.parametrize(
    "files",
    [
        {"a.json": labelme_file("a.jpg", [("head", [23, 32])], size=(30, 40))},  # as shown
        {"a.json": labelme_file("a.jpg", [("head", [32, 7])], size=(40, 30))},  # stored pixels
        {"a.txt": "32 7\n"},  # scripts read the stored pixels
    ],
    ids=["labelme_as_displayed", "labelme_declaring_stored_size", "points_txt_stored"],
)
def test_exif_turned_picture_is_stored_upright_with_its_points(tmp_path, files):
  result = build(write(tmp_path / "f", {"a.jpg": turned_jpeg(), **files}), tmp_path / "d", "turned")
  example = examples(result.builder)["a.jpg"]
  assert (example["width"], example["height"]) == (30, 40)
  np.testing.assert_allclose(example["points"], [[23, 32]])
  stored = Image.open(io.BytesIO(example["image"]))
  assert stored.format == "PNG" and stored.getexif().get(0x0112) is None
  pixels, scale = decode_image(example["image"], 0, "a.jpg")  # the training pipeline's decoder
  assert pixels.shape == (40, 30, 3) and tuple(scale) == (1, 1)
  assert pixels[32, 23].min() > 200 and pixels[5, 5].max() < 50
  assert "1 pictures stored upright (EXIF orientation)" in result.summary[0]


def test_exif_turned_picture_with_a_size_of_neither_frame_is_refused(tmp_path):
  files = {"a.jpg": turned_jpeg(), "a.json": labelme_file("a.jpg", [("h", [1, 1])], size=(20, 40))}
  with pytest.raises(
      CrowdDataError, match=r"a 20x40 picture, but the picture is 40x30, 30x40 as displayed"
  ):
    build(write(tmp_path / "f", files), tmp_path / "d", "turned")


# Labels -------------------------------------------------------------------------------


def test_labels_select_points_and_are_checked(tmp_path):
  folder = write(tmp_path / "cvat", hand_fixtures()["cvat"][0])
  result = build(folder, tmp_path / "data", "heads", labels=["head"])
  found = examples(result.builder)
  assert [int(found[f]["count"]) for f in sorted(found)] == [2, 0]
  assert found["images/frame_000001.jpg"]["unselected_points"] == 1
  assert "1 with labels not selected: car 1" in result.summary[0]
  assert result.builder.info.metadata["folder_import"]["labels"] == ["head"]
  with pytest.raises(
      CrowdDataError,
      match=r"no point has the label dog; the annotations' labels are: head 2, car 1",
  ):
    build(folder, tmp_path / "data", "heads", labels=["dog"])
  text = write(tmp_path / "txt", {"a.jpg": picture(), "a.txt": "1 2\n"})
  with pytest.raises(CrowdDataError, match=r"--labels head: points_txt annotations have no labels"):
    build(text, tmp_path / "data", "heads", labels=["head"])


# Splits -------------------------------------------------------------------------------


def test_hashed_splits_are_deterministic_stable_and_fill_every_split():
  pictures = [f"photos/{k}.jpg" for k in range(40)]
  splits = hashed_splits(pictures, 0.2, 0.2)
  assert splits == hashed_splits(pictures[::-1], 0.2, 0.2)
  assert sorted(sum(splits.values(), [])) == sorted(pictures)
  bounds = {"test": (0, 0.2), "val": (0.2, 0.4), "train": (0.4, 1)}
  for split, names in splits.items():
    assert all(bounds[split][0] <= hash_position(p) < bounds[split][1] for p in names)
  grown = hashed_splits(pictures + [f"photos/{k}.jpg" for k in range(40, 70)], 0.2, 0.2)
  assert all(set(names) <= set(grown[split]) for split, names in splits.items())
  assert {s: len(p) for s, p in hashed_splits(["a.jpg", "b.jpg", "c.jpg"], 0.2, 0.2).items()} == {
      "train": 1,
      "val": 1,
      "test": 1,
  }
  assert list(hashed_splits(pictures, 0, 0.3)) == ["train", "test"]
  with pytest.raises(CrowdDataError, match=r"2 annotated pictures cannot fill the 3 splits"):
    hashed_splits(["a.jpg", "b.jpg"], 0.2, 0.2)
  with pytest.raises(ValueError, match=r"leaves no pictures for train"):
    hashed_splits(pictures, 0.5, 0.5)


def test_split_file(tmp_path):
  files = {f"{k}.jpg": picture() for k in "abcd"} | {f"{k}.txt": "1 2\n" for k in "abc"}
  folder = write(tmp_path / "folder", files)
  good = write(tmp_path, {"splits.json": '{"train": ["a.jpg", "./b.jpg"], "test": ["c.jpg"]}'})
  result = build(folder, tmp_path / "data", "split_file", splits_file=str(good / "splits.json"))
  record = result.builder.info.metadata["folder_import"]
  assert record["splits"] == {"train": ["a.jpg", "b.jpg"], "test": ["c.jpg"]}
  assert record["splits_file"] == str(tmp_path / "splits.json")
  assert {s: i.num_examples for s, i in result.builder.info.splits.items()} == {
      "train": 2,
      "test": 1,
  }
  bad = {
      ("a b", "c e"): r"test lists 'e\.jpg', which is not in the folder",
      ("a b d", "c"): r"train lists 'd\.jpg', which has no annotation",
      ("a b", "b c"): r"'b\.jpg' is listed in train and test",
      ("a", "c"): r"1 annotated pictures are in no split: \['b\.jpg'\]",
  }
  bad = {
      json.dumps(
          {"train": [f"{k}.jpg" for k in train.split()], "test": [f"{k}.jpg" for k in test.split()]}
      ): message
      for (train, test), message in bad.items()
  }
  bad['{"train": ["a.jpg", "b.jpg", "c.jpg"], "holdout": []}'] = r"some of the keys \['train', 'v"
  bad['{"train": ["a.jpg", "b.jpg", "c.jpg"], "val": []}'] = r"'val' must be a non-empty list"
  for text, message in bad.items():
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(CrowdDataError, match=message):
      build(folder, tmp_path / "data", "split_file", splits_file=str(tmp_path / "bad.json"))


# Names, rebuilding, reading -----------------------------------------------------------


def test_names_and_rebuilding(tmp_path):
  folder = write(tmp_path / "folder", {"a.jpg": picture(), "a.txt": "1 2\n"})
  for name, message in {
      "ucf_cc_50": "one of this project's datasets",
      "mnist": "is a TFDS dataset",
      "My-Crowds": "lower-case letters",
  }.items():
    with pytest.raises(ValueError, match=message):
      build(folder, tmp_path / "data", name)
  first = build(folder, tmp_path / "data", "mine")
  assert [int(e["count"]) for e in examples(first.builder).values()] == [1]
  (folder / "a.txt").write_text("1 2\n3 4\n")
  second = build(folder, tmp_path / "data", "mine")
  assert [int(e["count"]) for e in examples(second.builder).values()] == [2]
  (folder / "a.jpg").write_bytes(picture()[:100])  # a failed rebuild leaves the dataset
  with pytest.raises(CrowdDataError, match=r"a\.jpg: cannot decode the image"):
    build(folder, tmp_path / "data", "mine")
  assert [int(e["count"]) for e in examples(second.builder).values()] == [2]
  assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine"]
  assert sorted(p.name for p in (tmp_path / "data" / "mine").iterdir()) == ["1.0.0"]
  other = tmp_path / "data" / "theirs" / "1.0.0"
  other.mkdir(parents=True)
  (other / "dataset_info.json").write_text("{}")
  with pytest.raises(
      CrowdDataError, match=r"theirs holds a dataset the folder importer did not write"
  ):
    build(folder, tmp_path / "data", "theirs")


def test_the_training_pipeline_reads_a_folder_dataset(tmp_path):
  from configs import tiny

  folder = write(
      tmp_path / "f",
      {f"{k}.jpg": picture() for k in "abc"} | {f"{k}.txt": "10 5\n20 6\n" for k in "abc"},
  )
  build(folder, tmp_path / "data", "mine", val_fraction=0.2, test_fraction=0.2)
  source = tfds.data_source("mine", split="val", data_dir=str(tmp_path / "data"))
  assert len(source) == 1
  config = tiny.get_config()
  config.data.name, config.data.data_dir = "mine", str(tmp_path / "data")
  train = pipeline.open_split(config.data, "train")
  element = pipeline.EvalImage(config.data, multiple=128).map(train[0])
  assert element["image"].shape == (128, 128, 3) and element["count"] == 2
  np.testing.assert_allclose(element["points"], [[10, 5], [20, 6]])


def test_the_command_line(tmp_path):
  folder = write(tmp_path / "f", {"a.jpg": picture(), "a.txt": "1 2\n3 4\n", "b.jpg": picture()})
  command = [
      sys.executable,
      "-m",
      "tfds_crowd.build",
      "folder",
      "--manual_dir",
      str(folder),
      "--name",
      "cli",
      "--data_dir",
      str(tmp_path / "data"),
      "--val_fraction",
      "0",
      "--test_fraction",
      "0",
  ]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "cli/train: 1 pictures, 2 points kept" in done.stdout
  assert "1 pictures without annotations dropped (b.jpg)" in done.stdout
  assert "Built cli 1.0.0 in" in done.stdout and "{'train': 1}" in done.stdout
  assert "b.jpg: no annotation names this picture; it is dropped." in done.stderr
  assert len(tfds.data_source("cli", split="train", data_dir=str(tmp_path / "data"))) == 1


# Real exports made with the tools (../shared/data/annotation_exports) -----------------


def test_real_cvat_export(tmp_path):
  result = build(shared_data("annotation_exports/cvat_estop"), tmp_path / "data", "cvat_estop")
  found = examples(result.builder)
  assert len(found) == 7 and {int(e["count"]) for e in found.values()} == {5}
  record = result.builder.info.metadata["folder_import"]
  assert len(record["annotations_without_picture"]) == 12
  assert "12 annotations without their picture dropped" in result.summary[-1]
  for filename, example in found.items():
    photo = EXPORTS / "cvat_estop" / filename
    assert example["image"] == photo.read_bytes() and Image.open(photo).mode == "RGBA"
    pixels, _ = decode_image(example["image"], 0, filename)  # RGBA -> RGB, as trained
    assert pixels.shape == (example["height"], example["width"], 3)
    assert set(example["labels"]) == {b"estop"}
  first = found["data/clipped_images/Clipped_image_20231015_123645.png"]
  np.testing.assert_allclose(first["points"][0], [71.30, 69.54], atol=1e-4)


def test_real_labelme_files(tmp_path):
  result = build(shared_data("annotation_exports/labelme_fixtures"), tmp_path / "data", "labelme")
  found = examples(result.builder)
  counts = {Path(f).name: int(e["count"]) for f, e in found.items()}
  assert counts == {"primitives.jpg": 1, "Mandrill.jpg": 3}
  mandrill = next(e for f, e in found.items() if f.endswith("Mandrill.jpg"))
  assert [v.decode() for v in mandrill["labels"]] == ["Nostril", "Nostril", "Glabella"]
  assert "ignored 19 shapes that are not points" in result.summary[0]
  assert "mask shape 1" in result.summary[0]


def test_real_dot_maps(tmp_path):
  result = build(shared_data("annotation_exports/dots_mbm"), tmp_path / "data", "dots")
  counts = {f: int(e["count"]) for f, e in examples(result.builder).items()}
  assert counts == {
      "BM_GRAZ_HE_0001_01_000.png": 167,
      "BM_GRAZ_HE_0001_02_001.png": 180,
      "BM_GRAZ_HE_0002_01_002.png": 166,
  }


def test_real_cclabeler_files(tmp_path):
  head = build(shared_data("annotation_exports/cclabeler_nwpu/HEAD"), tmp_path / "data", "head")
  found = examples(head.builder)
  counts = {Path(f).name: (int(e["count"]), int(e["annotated_count"])) for f, e in found.items()}
  assert counts == {"1.jpg": (5, 5), "2.jpg": (15, 15), "3.jpg": (0, 0)}  # boxes count
  assert "0 pictures whose count field disagrees" in head.summary[0]
  assert "2 pictures cclabeler's marks show as not finished" in head.summary[-1]
  older = build(
      shared_data("annotation_exports/cclabeler_nwpu/commit_14763182"), tmp_path / "data", "older"
  )
  counts = {Path(f).stem: int(e["count"]) for f, e in examples(older.builder).items()}
  assert counts == {
      "IMG_17": 44,
      "IMG_52": 24,
      "IMG_6": 36,
      "scene_001_2": 8,
      "scene_010_1": 20,
      "scene_020_2": 20,
  }


def test_duplicates_outside_points_and_count_fields_are_dropped_and_counted(tmp_path):
  folder = write(
      tmp_path / "txt", {"a.jpg": picture(), "a.txt": "1 2\n1 2\n500 5\nnan 3\n40.5 30\n3 4\n"}
  )
  result = build(folder, tmp_path / "data", "drops")
  example = examples(result.builder)["a.jpg"]
  np.testing.assert_allclose(example["points"], [[1, 2], [40, 30], [3, 4]])
  dropped = example["duplicate_points"], example["dropped_points"], example["clipped_points"]
  assert dropped == (1, 2, 1)
  assert result.summary[0].startswith(
      "drops/train: 1 pictures, 3 points kept (1 moved onto the border); 3 points dropped (1 "
      "outside their picture, 1 with NaN or infinite coordinates, 1 duplicates, 0 with labels "
      "not selected); 0 pictures whose count field disagrees with their points"
  )
  record = '{"img_id": "1.jpg", "human_num": 5, "points": [{"x": 1, "y": 2}], "boxes": []}'
  folder = write(tmp_path / "ccl", {"images/1.jpg": picture(), "jsons/1.json": record})
  result = build(folder, tmp_path / "data", "mismatch")
  example = examples(result.builder)["images/1.jpg"]
  assert (example["count"], example["annotated_count"]) == (1, 5)
  assert "1 pictures whose count field disagrees with their points" in result.summary[0]


def test_a_zipped_folder(tmp_path):
  (tmp_path / "folder").mkdir()
  with zipfile.ZipFile(tmp_path / "folder" / "photos.zip", "w") as archive:
    archive.writestr("photos/a.jpg", picture())
    archive.writestr("photos/a.txt", "1 2\n3 4\n")
  result = build(tmp_path / "folder", tmp_path / "data", "zipped")
  assert {f: int(e["count"]) for f, e in examples(result.builder).items()} == {"photos/a.jpg": 2}
  assert "0 files ignored" in result.summary[-1]
