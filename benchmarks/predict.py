"""Predict-mode throughput on a folder of mixed sizes, compilations, tiled vs whole.

    python benchmarks/predict.py                                  # paper model, fresh
    python benchmarks/predict.py --workdir runs/quickstart        # a trained run
    python benchmarks/predict.py --workdir runs/quickstart --tile_check_only
    python benchmarks/predict.py --workdir runs/quickstart --video_only   # needs .[video]
    python benchmarks/predict.py --workdir runs/quickstart --figure docs/predict_overlay.png

    python benchmarks/predict.py --images_only --batch_sizes 4 8    # the device check's row
    python benchmarks/predict.py --images_only --config configs/tiny.py --photos 2 \
        --scales 0.5 --synthetic 2                                  # its --smoke row

The folder: the five real photos of ../shared/data/sht_sample, each also at 0.5x and
0.75x, and 10 synthetic_crowd test images (25 images, 19 distinct sizes). It runs
`predict_files` (decoding on host threads, forward, overlay PNG, CSV, synced rows) twice
per batch size, with `predict.batch_size` 1 (one picture per forward pass) and each of
`--batch_sizes` (pictures of one padded shape share a forward pass): the first pass
compiles, the second is warm. Reports pictures/s for both and the warm speed-up over
batch 1, the number of compilations (= distinct padded shapes) against the number of
distinct image sizes, and
for a trained run, the whole vs tiled count of a large image (a 3 x 4 mosaic of
synthetic test images, tiled at 512 px with 256 px overlap).

Video (`--video_only`, or with the rest unless `--no_video`): a 1280x720 H.264 video of
the five sample photos, each held for 8 frames at 25 fps (40 frames), counted whole by
`video_counting.count_video` with `predict.batch_size` 1 (one frame per forward pass) and
the batch sizes of `--video_batch_sizes`; each is run once to compile, then timed over
all 40 frames. Reports frames/s (decoding, forward pass, points) and the speed-up.
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

from cfrnet_jax.inference import video_io  # noqa: E402
from cfrnet_jax.inference.counter import CrowdCounter  # noqa: E402
from cfrnet_jax.inference.overlay import draw_prediction  # noqa: E402
from cfrnet_jax.inference.predict_mode import predict_files  # noqa: E402
from cfrnet_jax.inference.video_counting import count_video  # noqa: E402
from tfds_crowd.synthetic_crowd import render_crowd_image  # noqa: E402

SHT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sht_sample" / "images"


def make_folder(
    folder: Path, photos: int = 5, scales=(1.0, 0.75, 0.5), synthetic: int = 10
) -> list[tuple[int, int]]:
  """The first `photos` sample photos at each of `scales`, and `synthetic` test images."""
  sizes = []
  for path in sorted(SHT_SAMPLE.glob("*.jpg"))[:photos]:
    with Image.open(path) as photo:
      photo = photo.convert("RGB")
      for scale in scales:
        size = (round(photo.width * scale), round(photo.height * scale))
        photo.resize(size, Image.BILINEAR).save(folder / f"{path.stem}_{scale}.jpg", quality=95)
        sizes.append(size)
  for index in range(synthetic):
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


def figure(counter: CrowdCounter, path: str) -> dict:
  """The README's overlay: synthetic_crowd test image 0 with its head points and a region
  over its lower half."""
  data, truth = render_crowd_image(np.random.default_rng([1, 0]))
  image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  height, width = image.shape[:2]
  half = height // 2
  lower = [[2, half], [width - 2, half], [width - 2, height - 2], [2, height - 2]]
  prediction = counter.predict(image, regions={"lower half": lower})
  draw_prediction(prediction, 2048).save(path)
  return {
      "people": len(truth),
      "counted": round(prediction.count, 2),
      "points": len(prediction.points),
      "lower half": round(prediction.regions["lower half"], 2),
      "people in the lower half": int(np.sum(truth[:, 1] >= half)),
  }


def video_check(counter: CrowdCounter, batch_sizes: list[int]) -> dict:
  """frames/s of `count_video` on a 1280x720 video, one frame at a time vs batched."""
  photos = [
      np.asarray(Image.open(path).convert("RGB").resize((1280, 720), Image.BILINEAR))
      for path in sorted(SHT_SAMPLE.glob("*.jpg"))
  ]
  result = {}
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "crowds.mp4"
    frames = video_io.write_video(path, (p for p in photos for _ in range(8)), 25.0)
    result["video"] = f"1280x720, {frames} frames, 25 fps, H.264"
    for batch_size in [1, *batch_sizes]:
      config = counter.config.copy_and_resolve_references()
      config.predict.batch_size = batch_size
      batched = CrowdCounter(config, counter._variables)
      count_video(batched, path)  # compiles
      start = time.perf_counter()
      counts = count_video(batched, path)
      seconds = time.perf_counter() - start
      result[f"batch_{batch_size}"] = {
          "frames_per_second": round(len(counts) / seconds, 3),
          "seconds": round(seconds, 2),
      }
  single = result["batch_1"]["frames_per_second"]
  for batch_size in batch_sizes:
    result[f"batch_{batch_size}"]["speedup"] = round(
        result[f"batch_{batch_size}"]["frames_per_second"] / single, 3
    )
  return result


def folder_check(counter: CrowdCounter, batch_sizes: list[int], **folder_options) -> dict:
  """pictures/s of `predict_files` on the mixed folder (`make_folder(**folder_options)`),
  cold and warm, per batch size."""
  result = {}
  with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / "images"
    folder.mkdir()
    sizes = make_folder(folder, **folder_options)
    result["images"], result["distinct_sizes"] = len(sizes), len(set(sizes))
    for batch_size in [1, *batch_sizes]:
      config = counter.config.copy_and_resolve_references()
      config.predict.batch_size = batch_size
      batched = CrowdCounter(config, counter._variables)
      row = {}
      for name in ("cold", "warm"):  # a fresh --out each: a rerun into one would skip all
        summary = predict_files(batched, [str(folder)], Path(tmp) / f"{batch_size}_{name}")
        row[name] = {k: summary[k] for k in ("images_per_second", "seconds", "compilations")}
      result[f"batch_{batch_size}"] = row
  single = result["batch_1"]["warm"]["images_per_second"]
  for batch_size in batch_sizes:
    warm = result[f"batch_{batch_size}"]["warm"]["images_per_second"]
    result[f"batch_{batch_size}"]["warm_speedup"] = round(warm / single, 3)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--workdir",
      help="a training workdir (default: the paper model, "
      "freshly initialised, from configs/base.py)",
  )
  parser.add_argument(
      "--config", help="without --workdir: this config file's model (default configs/base.py)"
  )
  parser.add_argument("--tile_check_only", action="store_true")
  parser.add_argument("--video_only", action="store_true")
  parser.add_argument("--no_video", action="store_true")
  parser.add_argument("--video_batch_sizes", type=int, nargs="+", default=[4, 8])
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[4], help="pictures")
  parser.add_argument("--images_only", action="store_true", help="only the folder's pictures/s")
  parser.add_argument("--photos", type=int, default=5, help="sample photos in the folder")
  parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75, 0.5])
  parser.add_argument("--synthetic", type=int, default=10, help="synthetic images in it")
  parser.add_argument("--figure", help="only write the README's overlay picture to this path")
  args = parser.parse_args()
  if args.workdir:
    counter = CrowdCounter.from_checkpoint(args.workdir)
    model = f"checkpoint of {args.workdir}"
  else:
    import importlib.util

    path = args.config or str(Path(__file__).resolve().parents[1] / "configs" / "base.py")
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counter = CrowdCounter.from_config(module.get_config())
    model = f"model of {os.path.relpath(path)}, freshly initialised"
  result = {
      "machine": f"{platform.machine()} {jax.devices()[0].device_kind}",
      "date": time.strftime("%Y-%m-%d"),
      "model": model,
  }
  if args.figure:
    result["figure"] = figure(counter, args.figure)
    print(json.dumps(result, indent=2))
    return
  if args.video_only or not (args.tile_check_only or args.no_video or args.images_only):
    result["video"] = video_check(counter, args.video_batch_sizes)
  if not (args.tile_check_only or args.video_only):
    result.update(
        folder_check(
            counter,
            args.batch_sizes,
            photos=args.photos,
            scales=tuple(args.scales),
            synthetic=args.synthetic,
        )
    )
  if args.workdir and not (args.video_only or args.images_only):
    result["tiled_vs_whole"] = tile_check(counter)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
