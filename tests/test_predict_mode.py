"""Predict mode (`launch.py --mode predict`): tables, overlays, maps, skipped files."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfrnet_jax.inference.counter import CrowdCounter
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[1]


def test_predict_cli_on_real_photos(trained_workdir, tmp_path):
  images = shared_data("sht_sample") / "images"
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"not an image at all")
  out = tmp_path / "out"
  result = subprocess.run(
      [
          sys.executable,
          "launch.py",
          "--mode",
          "predict",
          "--workdir",
          str(trained_workdir),
          "--images",
          str(images),
          "--images",
          str(corrupt),
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
  assert "skipped 1 unreadable: " + str(corrupt) in result.stderr
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
  assert summary["images"] == 5 and list(summary["skipped"]) == [str(corrupt)]
  # IMG_1..3 are 1024x768, IMG_4 1600x1067, IMG_5 1049x721: three padded shapes.
  assert summary["compilations"] == 3
  # The Python API on the same checkpoint gives the same counts.
  counter = CrowdCounter.from_checkpoint(trained_workdir)
  first = next(row for row in rows if row["name"] == "IMG_5")
  assert counter.count(first["file"]) == pytest.approx(float(first["count"]), rel=1e-5)
