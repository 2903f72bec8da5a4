"""Predict mode (`launch.py --mode predict`): tables, overlays, maps, skipped files."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from cfrnet_jax.inference import tiling
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.predict_mode import predict_files
from tests.conftest import shared_data, tiny_train_config
from tests.test_counter import local_count_fn
from tests.test_user_images import make_unreadable, picture, png_header

REPO = Path(__file__).resolve().parents[1]


def hostile_folder(folder: Path) -> dict[str, str]:
  """Files in `folder` that no picture can be read from: {name: what the skip reason
  says}. Besides them `folder` holds `photo.jpg/`, a directory named like a picture, and
  `here`, a link to the folder itself; neither is a file to skip."""
  folder.mkdir()
  (folder / "corrupt.jpg").write_bytes(b"not an image at all")
  (folder / "empty.jpg").touch()
  (folder / "bomb.png").write_bytes(png_header(50_000, 50_000))
  whole = picture(folder / "whole.tmp", (96, 64), "JPEG").read_bytes()
  (folder / "whole.tmp").unlink()
  (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
  (folder / "loop_a.jpg").symlink_to("loop_b.jpg")
  (folder / "loop_b.jpg").symlink_to("loop_a.jpg")
  (folder / "self.jpg").symlink_to("self.jpg")
  (folder / "dangling.jpg").symlink_to("gone.jpg")
  os.mkfifo(folder / "pipe.jpg")
  (folder / "photo.jpg").mkdir()
  (folder / "here").symlink_to(".")
  return {
      "corrupt.jpg": "is not a picture in a format Pillow reads (it starts with b'not an i')",
      "empty.jpg": "is empty (0 bytes)",
      "bomb.png": "declares 50000x50000 pixels (2500.0 Mpx), more than the limit of",
      "truncated.jpg": "is damaged or truncated: JPEG 96x64 declared",
      "loop_a.jpg": "is a symbolic link loop",
      "loop_b.jpg": "is a symbolic link loop",
      "self.jpg": "is a symbolic link loop",
      "dangling.jpg": "is a dangling symbolic link (to gone.jpg, which does not exist)",
      "pipe.jpg": "is a FIFO (named pipe), not a regular file; not read",
  }


@pytest.mark.slow  # CI runs it; the default selection stays under 10 minutes
def test_predict_cli_on_real_photos(trained_plain_workdir, tmp_path):
  """The real sample photos are counted; every hostile file beside them is named,
  skipped with its reason and counted in the summary, and the command succeeds."""
  images = shared_data("sht_sample") / "images"
  hostile = tmp_path / "hostile"
  reasons = hostile_folder(hostile)
  out = tmp_path / "out"
  result = subprocess.run(
      [
          sys.executable,
          "launch.py",
          "--mode",
          "predict",
          "--workdir",
          str(trained_plain_workdir),
          "--images",
          str(images),
          "--images",
          str(hostile),
          "--images",
          str(hostile / "*.jpg"),  # also matches the directory photo.jpg: refused too
          "--out",
          str(out),
          "--save_density",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  reasons["photo.jpg"] = "is a directory, not a picture"
  assert f"skipped {len(reasons)} unreadable: " in result.stderr
  with open(out / "counts.csv", newline="") as table:
    rows = list(csv.DictReader(table))
  names = sorted(p.stem for p in images.glob("*.jpg"))
  assert sorted(row["name"] for row in rows) == names
  for row in rows:
    density = np.load(out / "density" / f"{row['name']}.npy")
    assert float(row["count"]) == pytest.approx(float(density.sum(dtype=np.float64)), rel=1e-6)
    with (
        Image.open(row["file"]) as original,
        Image.open(out / "overlays" / f"{row['name']}.png") as overlay,
    ):
      assert overlay.size == original.size
      assert density.shape == (-(-original.height // 4), -(-original.width // 4))
  summary = json.loads((out / "summary.json").read_text())
  assert summary["images"] == 5
  assert summary["skipped"].keys() == {str(hostile / name) for name in reasons}
  for name, reason in reasons.items():
    assert summary["skipped"][str(hostile / name)].startswith(f"{hostile / name}: {reason}")
    assert f"Skipped {hostile / name}: {reason}" in result.stderr
  # IMG_1..3 are 1024x768, IMG_4 1600x1067, IMG_5 1049x721: three padded shapes.
  assert summary["compilations"] == 3
  # The Python API on the same checkpoint gives the same counts.
  counter = CrowdCounter.from_checkpoint(trained_plain_workdir)
  first = next(row for row in rows if row["name"] == "IMG_5")
  assert counter.count(first["file"]) == pytest.approx(float(first["count"]), rel=1e-5)


def test_hostile_files_are_skipped_with_their_reason(tmp_path, monkeypatch):
  """Predict mode (what `launch.py --mode predict` runs) on a folder of good pictures
  and every kind of bad file: the good ones are counted, each bad one is named and
  skipped with its reason; `CrowdCounter.predict` raises ValueError naming each."""
  config = tiny_train_config(None)
  config.predict.max_megapixels = 0.01  # 10,000 pixels: refuses large.png below
  counter = CrowdCounter.from_config(config)
  folder = tmp_path / "photos"
  reasons = hostile_folder(folder)
  reasons["bomb.png"] += " 0.01 Mpx (config.predict.max_megapixels); not decoded."
  good = [
      picture(folder / "good.jpg", (64, 48)),
      picture(folder / "photo.jpg" / "inside.png", (40, 40), seed=1),  # searched
  ]
  picture(folder / "large.png", (200, 100), seed=2)
  reasons["large.png"] = "declares 200x100 pixels (0.0 Mpx), more than the limit of 0.01 Mpx"
  make_unreadable(picture(folder / "locked.jpg", (32, 32), seed=3), monkeypatch)
  reasons["locked.jpg"] = "cannot be read (permission denied)"
  out = tmp_path / "out"
  summary = predict_files(counter, [str(folder), str(folder / "*.jpg")], out)
  reasons["photo.jpg"] = "is a directory, not a picture"
  assert summary["images"] == 2
  assert summary["skipped"].keys() == {str(folder / name) for name in reasons}
  for name, reason in reasons.items():
    assert summary["skipped"][str(folder / name)].startswith(f"{folder / name}: {reason}")
  with open(out / "counts.csv", newline="") as table:
    rows = list(csv.DictReader(table))
  assert [row["file"] for row in rows] == [str(path) for path in good]
  for row, path in zip(rows, good):
    assert float(row["count"]) == pytest.approx(counter.count(path), rel=1e-5)  # batched
  for name in reasons:
    with pytest.raises(ValueError, match="^" + re.escape(f"{folder / name}: {reasons[name]}")):
      counter.predict(folder / name)


def test_a_picture_larger_than_a_tile_runs_in_tiles_of_bounded_size(tmp_path, monkeypatch):
  """A picture longer than `predict.tile_size` goes through the model in tiles no larger
  than tile_size x tile_size (what bounds the forward pass's memory, whatever the
  picture's size; benchmarks/large_picture_memory.py measures it), and its map is the
  whole picture's map cell for cell (a stand-in model whose density is local), with the
  count written to counts.csv; the overlay stays at `overlay_max_side`."""
  local_density = local_count_fn(channel=1)
  height, width = 700, 2900
  path = picture(tmp_path / "wide.png", (width, height))
  config = tiny_train_config(None)
  config.predict.update(tile_size=512, tile_overlap=128, overlay_max_side=640)
  tiled = CrowdCounter(config, None)
  seen = []

  def recording(variables, image, valid_size):
    seen.append(image.shape)
    return local_density(variables, image, valid_size)

  monkeypatch.setattr(tiled, "_count_fn", recording)
  summary = predict_files(tiled, [str(path)], tmp_path / "out", save_density=True)
  spans = len(tiling.tile_spans(height, 512, 128, 4)) * len(tiling.tile_spans(width, 512, 128, 4))
  assert summary["images"] == 1 and len(seen) == spans == 2 * 8
  assert {shape for shape in seen} == {(1, 512, 512, 3)}
  whole_config = tiny_train_config(None)
  whole_config.predict.tile_size = 3072  # one tile: the whole picture
  whole = CrowdCounter(whole_config, None)
  monkeypatch.setattr(whole, "_count_fn", jax.jit(local_density))
  expected = whole.predict(path)
  assert expected.tiles == 1
  density = np.load(tmp_path / "out" / "density" / "wide.npy")
  np.testing.assert_allclose(density, expected.density, rtol=1e-6)
  with open(tmp_path / "out" / "counts.csv", newline="") as table:
    (row,) = csv.DictReader(table)
  assert int(row["tiles"]) == spans
  assert float(row["count"]) == pytest.approx(expected.count, rel=1e-6)
  with Image.open(tmp_path / "out" / "overlays" / "wide.png") as overlay:
    assert overlay.size == (640, round(height * 640 / width))
