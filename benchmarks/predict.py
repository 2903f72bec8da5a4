"""Predict-mode throughput on a folder of mixed sizes, compilations, tiled vs whole.

    python benchmarks/predict.py                                  # paper model, fresh
    python benchmarks/predict.py --workdir runs/quickstart        # a trained run
    python benchmarks/predict.py --workdir runs/quickstart --tile_check_only

The folder: the five real photos of ../shared/data/sht_sample, each also at 0.5x and
0.75x, and 10 synthetic_crowd test images (25 images, 19 distinct sizes). It runs
`predict_files` (loading, forward, overlay PNG, CSV) twice with the same CrowdCounter:
the first pass compiles, the second is warm. Reports images/s for both, the number of
compilations (= distinct padded shapes) against the number of distinct image sizes, and
for a trained run, the whole vs tiled count of a large image (a 3 x 4 mosaic of
synthetic test images, tiled at 512 px with 256 px overlap).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cfrnet_jax.inference.counter import CrowdCounter  # noqa: E402
from cfrnet_jax.inference.predict_mode import predict_files  # noqa: E402
from tfds_crowd.synthetic_crowd import render_crowd_image  # noqa: E402

SHT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sht_sample" / "images"


def make_folder(folder: Path) -> list[tuple[int, int]]:
  sizes = []
  for path in sorted(SHT_SAMPLE.glob("*.jpg")):
    with Image.open(path) as photo:
      photo = photo.convert("RGB")
      for scale in (1.0, 0.75, 0.5):
        size = (round(photo.width * scale), round(photo.height * scale))
        photo.resize(size, Image.BILINEAR).save(folder / f"{path.stem}_{scale}.jpg", quality=95)
        sizes.append(size)
  for index in range(10):
    data, _ = render_crowd_image(np.random.default_rng([1, index]))
    (folder / f"synthetic_{index}.jpg").write_bytes(data)
    with Image.open(folder / f"synthetic_{index}.jpg") as image:
      sizes.append(image.size)
  return sizes


def mosaic(rows: int = 3, cols: int = 4) -> np.ndarray:
  """A large synthetic crowd picture: rows x cols test images of 320 x 288 pixels."""
  tiles = []
  for index in range(rows * cols):
    data, _ = render_crowd_image(np.random.default_rng([1, 20 + index]))
    tiles.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((320, 288))))
  return np.concatenate(
      [np.concatenate(tiles[r * cols : (r + 1) * cols], 1) for r in range(rows)], 0
  )


def tile_check(counter: CrowdCounter) -> dict:
  image = mosaic()
  whole = counter.predict(image)
  config = counter.config.copy_and_resolve_references()
  config.predict.update(tile_size=512, tile_overlap=256)
  tiled = CrowdCounter(config, counter._variables).predict(image)
  return {
      "image": list(image.shape[:2]),
      "whole": round(whole.count, 2),
      "tiled": round(tiled.count, 2),
      "tiles": tiled.tiles,
      "relative_difference": round(tiled.count / whole.count - 1, 4),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--workdir",
      help="a training workdir (default: the paper model, "
      "freshly initialised, from configs/base.py)",
  )
  parser.add_argument("--tile_check_only", action="store_true")
  args = parser.parse_args()
  if args.workdir:
    counter = CrowdCounter.from_checkpoint(args.workdir)
    model = f"checkpoint of {args.workdir}"
  else:
    from configs.base import get_config

    counter = CrowdCounter.from_config(get_config())
    model = "paper model (configs/base.py), freshly initialised"
  result = {
      "machine": f"{platform.machine()} {jax.devices()[0].device_kind}",
      "date": time.strftime("%Y-%m-%d"),
      "model": model,
  }
  if not args.tile_check_only:
    with tempfile.TemporaryDirectory() as tmp:
      folder = Path(tmp) / "images"
      folder.mkdir()
      sizes = make_folder(folder)
      result["images"], result["distinct_sizes"] = len(sizes), len(set(sizes))
      for name in ("cold", "warm"):
        summary = predict_files(counter, [str(folder)], Path(tmp) / name)
        result[name] = {k: summary[k] for k in ("images_per_second", "seconds", "compilations")}
  if args.workdir:
    result["tiled_vs_whole"] = tile_check(counter)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
