"""TFDS builders: fixtures in each official layout, built and read back exactly."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tests.conftest import shared_data
from tfds_crowd import fold_splits
from tfds_crowd.build import build
from tfds_crowd.crowd_builder import CrowdDataError
from tfds_crowd.synthetic_crowd import render_crowd_image


def write_jpeg(path: Path, height: int, width: int, mode: str = "RGB"):
  from PIL import Image

  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(height * width).integers(0, 255, (height, width, 3))
  image = Image.fromarray(pixels.astype(np.uint8))
  (image.convert(mode) if mode != "RGB" else image).save(path, format="JPEG")


def write_sht_mat(path: Path, points, number):
  """`image_info{1}.location` / `.number`, nested like the official files."""
  path.parent.mkdir(parents=True, exist_ok=True)
  info = np.empty((1, 1), dtype=object)
  info[0, 0] = {
      "location": np.asarray(points, np.float64).reshape(-1, 2),
      "number": np.array([[number]], np.float64),
  }
  scipy.io.savemat(path, {"image_info": info})


def read_split(builder, split):
  """{filename: example} of a built split."""
  return {e["filename"].decode(): e for e in builder.as_data_source(split=split)}


def zip_folder(folder: Path, archive: Path):
  with zipfile.ZipFile(archive, "w") as out:
    for path in sorted(folder.rglob("*")):
      if path.is_file():
        out.write(path, path.relative_to(folder.parent).as_posix())


# ShanghaiTech -------------------------------------------------------------------------

SHT_POINTS = {  # (part, split, k): points
    ("A", "train", 1): [[1.5, 2.5], [30.0, 20.0], [39.9, 29.9]],
    ("A", "train", 2): [],
    ("A", "test", 1): [[5.0, 5.0], [0.0, 0.0], [200.0, 5.0], [40.5, 30.0]],
    ("B", "train", 7): [[10.0, 12.0]],
    ("B", "test", 3): [[3.0, 4.0], [5.0, 6.0]],
}


def make_shanghaitech(root: Path, final_naming: bool):
  for (part, split, k), points in SHT_POINTS.items():
    folder = root / (f"part_{part}_final" if final_naming else f"part_{part}") / f"{split}_data"
    write_jpeg(folder / "images" / f"IMG_{k}.jpg", 30, 40)
    truth = "ground_truth" if final_naming else "ground-truth"
    write_sht_mat(folder / truth / f"GT_IMG_{k}.mat", points, len(points))


@pytest.mark.parametrize("final_naming, zipped", [(False, False), (True, True)])
def test_shanghaitech_reads_both_namings_folders_and_zips(tmp_path, final_naming, zipped):
  manual = tmp_path / "manual"
  make_shanghaitech(tmp_path / "extracted", final_naming)
  if zipped:
    manual.mkdir()
    for part in sorted((tmp_path / "extracted").iterdir()):
      zip_folder(part, manual / f"{part.name}.zip")
  else:
    shutil.copytree(tmp_path / "extracted", manual)
  part_a = build("shanghaitech/part_a", str(tmp_path / "data"), str(manual))
  train, test = read_split(part_a, "train"), read_split(part_a, "test")
  assert sorted(train) == ["train_data/IMG_1.jpg", "train_data/IMG_2.jpg"]
  np.testing.assert_array_equal(
      train["train_data/IMG_1.jpg"]["points"], np.float32(SHT_POINTS[("A", "train", 1)])
  )
  assert train["train_data/IMG_2.jpg"]["points"].shape == (0, 2)
  assert train["train_data/IMG_2.jpg"]["count"] == 0
  example = test["test_data/IMG_1.jpg"]
  # (200, 5) is outside the 40x30 image: dropped and counted; (40.5, 30) is within the
  # 1-px tolerance: moved onto the border and counted.
  np.testing.assert_array_equal(example["points"], np.float32([[5, 5], [0, 0], [40, 30]]))
  assert (example["count"], example["dropped_points"], example["clipped_points"]) == (3, 1, 1)
  assert example["annotated_count"] == 4
  assert (example["height"], example["width"]) == (30, 40)
  part_b = build("shanghaitech/part_b", str(tmp_path / "data"), str(manual))
  assert [e["count"] for e in read_split(part_b, "test").values()] == [2]
  assert list(read_split(part_b, "train")) == ["train_data/IMG_7.jpg"]


def test_sht_sample_real_mat_files_through_the_shanghaitech_builder(tmp_path):
  sample = shared_data("sht_sample")
  split_dir = tmp_path / "manual" / "part_A" / "test_data"
  shutil.copytree(sample / "images", split_dir / "images")
  shutil.copytree(sample / "ground-truth", split_dir / "ground-truth")
  shutil.copytree(split_dir, tmp_path / "manual" / "part_A" / "train_data")
  builder = build("shanghaitech/part_a", str(tmp_path / "data"), str(tmp_path / "manual"))
  test = read_split(builder, "test")
  counts = {name: int(e["count"]) for name, e in test.items()}
  assert counts == {
      "test_data/IMG_1.jpg": 21,
      "test_data/IMG_2.jpg": 58,
      "test_data/IMG_3.jpg": 11,
      "test_data/IMG_4.jpg": 222,
      "test_data/IMG_5.jpg": 256,
  }
  for name, example in test.items():
    assert example["dropped_points"] == 0
    assert example["annotated_count"] == example["count"]
    stem = name.split("/")[-1][:-4]
    mat = scipy.io.loadmat(sample / "ground-truth" / f"GT_{stem}.mat")
    np.testing.assert_array_equal(
        example["points"], mat["image_info"][0, 0]["location"][0, 0].astype(np.float32)
    )
    assert example["image"] == (sample / "images" / f"{stem}.jpg").read_bytes()


# UCF_CC_50 ----------------------------------------------------------------------------


def test_ucf_cc_50_fixture_folds(tmp_path):
  manual = tmp_path / "UCF_CC_50"
  for k in range(1, 51):
    write_jpeg(manual / f"{k}.jpg", 20, 24, mode="L")
    points = np.array([[k % 24, 3.0]] * (k % 4))
    scipy.io.savemat(manual / f"{k}_ann.mat", {"annPoints": points.reshape(-1, 2)})
  zip_path = tmp_path / "dl" / "UCF_CC_50.zip"
  zip_path.parent.mkdir()
  zip_folder(manual, zip_path)
  builder = build("ucf_cc_50", str(tmp_path / "data"), str(zip_path.parent))
  for fold in range(1, 6):
    examples = read_split(builder, f"fold{fold}")
    numbers = sorted(int(name[:-4]) for name in examples)
    assert numbers == list(range(10 * fold - 9, 10 * fold + 1))
    for name, example in examples.items():
      assert example["count"] == int(name[:-4]) % 4
  assert fold_splits(3) == ("fold1+fold2+fold4+fold5", "fold3")
  train = builder.as_data_source(split=fold_splits(3)[0])
  assert len(train) == 40


def test_ucf_cc_50_real_dataset(tmp_path):
  source = shared_data("ucf_cc_50")
  builder = build("ucf_cc_50", str(tmp_path / "data"), str(source))
  examples = {}
  for fold in range(1, 6):
    split = read_split(builder, f"fold{fold}")
    assert len(split) == 10
    examples.update(split)
  assert len(examples) == 50
  kept = sum(int(e["count"]) for e in examples.values())
  dropped = sum(int(e["dropped_points"]) for e in examples.values())
  clipped = sum(int(e["clipped_points"]) for e in examples.values())
  assert kept + dropped == 63_974
  # Two heads lie far outside their image (image 6 at x = -358.7, image 20 at x = 637.2
  # in a 600-px-wide image); three lie within 0.35 px of the border (1, 1, 17).
  assert (dropped, clipped) == (2, 3)
  assert examples["6.jpg"]["dropped_points"] == 1 and examples["20.jpg"]["dropped_points"] == 1
  assert examples["1.jpg"]["count"] == 4633
  assert examples["4.jpg"]["count"] == 96
  assert examples["5.jpg"]["count"] == 469
  assert max(int(e["count"]) for e in examples.values()) == 4633


# JHU-Crowd++ --------------------------------------------------------------------------


def test_jhu_crowd_keeps_labels_and_per_head_attributes(tmp_path):
  root = tmp_path / "manual" / "jhu_crowd_v2.0"
  heads = {
      "train": {"0001": "10 12 4 5 1 0\n35 20 6 7 2 1\n99 99 3 3 3 0\n", "0002": ""},
      "val": {"0003": "1 1 2 2 1 1\n"},
      "test": {"0004": "5 6 7 8 2 0\n20 25 1 1 1 1\n"},
  }
  labels = {
      "0001": "3,marketplace,2,0",
      "0002": "0,street,0,1",
      "0003": "1,stadium,1,0",
      "0004": "2,concert,3,0",
  }
  for split, files in heads.items():
    lines = []
    for stem, text in files.items():
      write_jpeg(root / split / "images" / f"{stem}.jpg", 30, 40)
      (root / split / "gt").mkdir(parents=True, exist_ok=True)
      (root / split / "gt" / f"{stem}.txt").write_text(text)
      lines.append(f"{stem},{labels[stem]}")
    (root / split / "image_labels.txt").write_text("\n".join(lines) + "\n")
  builder = build("jhu_crowd", str(tmp_path / "data"), str(tmp_path / "manual"))
  train = read_split(builder, "train")
  first = train["train/0001.jpg"]
  np.testing.assert_array_equal(first["points"], np.float32([[10, 12], [35, 20]]))
  np.testing.assert_array_equal(first["head_size"], np.float32([[4, 5], [6, 7]]))
  np.testing.assert_array_equal(first["occlusion"], [1, 2])
  np.testing.assert_array_equal(first["blur"], [0, 1])
  assert (first["count"], first["dropped_points"], first["annotated_count"]) == (2, 1, 3)
  assert (first["scene"], first["weather"], first["distractor"]) == (b"marketplace", 2, 0)
  assert train["train/0002.jpg"]["count"] == 0 and train["train/0002.jpg"]["distractor"] == 1
  assert list(read_split(builder, "val")) == ["val/0003.jpg"]
  assert read_split(builder, "test")["test/0004.jpg"]["weather"] == 3


def test_jhu_crowd_bad_annotation_line_names_the_file(tmp_path):
  root = tmp_path / "manual" / "train"
  write_jpeg(root / "images" / "0001.jpg", 10, 10)
  (root / "gt").mkdir()
  (root / "gt" / "0001.txt").write_text("1 2 3\n")
  (root / "image_labels.txt").write_text("0001,1,street,0,0\n")
  with pytest.raises(CrowdDataError, match=r"gt/0001\.txt, line 1: expected"):
    build("jhu_crowd", str(tmp_path / "data"), str(tmp_path / "manual"))


# NWPU-Crowd ---------------------------------------------------------------------------


def test_nwpu_crowd_from_official_zips_with_unlabeled_test(tmp_path):
  staging, manual = tmp_path / "staging", tmp_path / "manual"
  manual.mkdir()
  annotations = {"0001": [[1, 2], [30, 20]], "0002": [[5, 5]], "0003": []}
  for image_id in ("0001", "0002", "0003", "0004"):
    write_jpeg(staging / "images" / f"{image_id}.jpg", 30, 40)
  for image_id, points in annotations.items():
    (staging / "jsons").mkdir(exist_ok=True)
    (staging / "jsons" / f"{image_id}.json").write_text(
        json.dumps(
            {
                "img_id": f"{image_id}.jpg",
                "human_num": len(points),
                "points": points,
                "boxes": [[x - 2, y - 2, x + 2, y + 2] for x, y in points],
            }
        )
    )
  zip_folder(staging / "images", manual / "images_part1.zip")
  zip_folder(staging / "jsons", manual / "jsons.zip")
  (manual / "train.txt").write_text("0001 1 2\n0003 0 0\n")
  (manual / "val.txt").write_text("0002 0 1\n")
  (manual / "test.txt").write_text("0004 1 3\n")
  builder = build("nwpu_crowd", str(tmp_path / "data"), str(manual))
  train = read_split(builder, "train")
  np.testing.assert_array_equal(train["0001.jpg"]["points"], np.float32([[1, 2], [30, 20]]))
  np.testing.assert_array_equal(train["0001.jpg"]["boxes"][1], np.float32([28, 18, 32, 22]))
  np.testing.assert_array_equal(train["0001.jpg"]["split_labels"], [1, 2])
  assert train["0003.jpg"]["count"] == 0 and train["0003.jpg"]["labeled"]
  assert read_split(builder, "val")["0002.jpg"]["count"] == 1
  test = read_split(builder, "test")["0004.jpg"]
  assert (bool(test["labeled"]), int(test["count"]), test["points"].shape) == (False, -1, (0, 2))


# Bad input and missing data -----------------------------------------------------------


def test_corrupt_image_fails_the_build_with_its_name(tmp_path):
  make_shanghaitech(tmp_path / "manual", final_naming=False)
  bad = tmp_path / "manual" / "part_A" / "train_data" / "images" / "IMG_2.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(CrowdDataError, match=r"IMG_2\.jpg: cannot decode the image"):
    build("shanghaitech/part_a", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_corrupt_annotation_fails_the_build_with_its_name(tmp_path):
  make_shanghaitech(tmp_path / "manual", final_naming=False)
  bad = tmp_path / "manual" / "part_A" / "test_data" / "ground-truth" / "GT_IMG_1.mat"
  bad.write_bytes(b"garbage")
  with pytest.raises(CrowdDataError, match=r"GT_IMG_1\.mat: cannot read the MATLAB file"):
    build("shanghaitech/part_a", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_missing_ground_truth_is_named(tmp_path):
  make_shanghaitech(tmp_path / "manual", final_naming=False)
  (tmp_path / "manual" / "part_B" / "test_data" / "ground-truth" / "GT_IMG_3.mat").unlink()
  with pytest.raises(CrowdDataError, match=r"IMG_3\.jpg: no ground truth GT_IMG_3\.mat"):
    build("shanghaitech/part_b", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_missing_download_says_what_to_get_and_where(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "unrelated.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match=r"(?s)UCF_CC_50\.zip.*manual_dir"):
    build("ucf_cc_50", str(tmp_path / "data"), str(tmp_path / "manual"))
  with pytest.raises(Exception, match=r"(?s)ShanghaiTech.*manual_dir"):
    build("shanghaitech/part_a", str(tmp_path / "data"), str(tmp_path / "empty"))


def test_build_rejects_unknown_names_and_missing_configs(tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset"):
    build("mall", str(tmp_path))
  with pytest.raises(ValueError, match="shanghaitech/part_a"):
    build("shanghaitech", str(tmp_path))


# Synthetic ----------------------------------------------------------------------------


def test_synthetic_generation_is_deterministic():
  first = render_crowd_image(np.random.default_rng([0, 5]))
  second = render_crowd_image(np.random.default_rng([0, 5]))
  other = render_crowd_image(np.random.default_rng([0, 6]))
  assert first[0] == second[0]
  np.testing.assert_array_equal(first[1], second[1])
  assert first[0] != other[0]


def test_synthetic_crowd_builds_without_download(tmp_path):
  builder = build("synthetic_crowd", str(tmp_path / "data"))
  train, test = read_split(builder, "train"), read_split(builder, "test")
  assert (len(train), len(test)) == (240, 60)
  counts = np.array([int(e["count"]) for e in train.values()])
  assert (counts == 0).sum() >= 10  # some empty images
  assert counts.max() > 100
  for example in list(train.values())[:20]:
    points = example["points"]
    assert len(points) == example["count"] and example["dropped_points"] == 0
    assert (points[:, 0] <= example["width"]).all() and (points[:, 1] <= example["height"]).all()
