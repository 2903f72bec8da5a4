"""Peak resident memory of predict mode on one very large photo (12,000 x 9,000 by default).

    python benchmarks/large_picture_memory.py --workdir runs/quickstart
    python benchmarks/large_picture_memory.py --workdir runs/quickstart --tile_size 1024
    python benchmarks/large_picture_memory.py --fresh     # no trained run: configs/default.py's
                                                          # model, freshly initialised

A run to count with comes from the quick start (`python launch.py --config
configs/default.py --workdir runs/quickstart`); `--fresh` measures the same model without
one (its count means nothing).

The photo is a noisy JPEG written to a temporary folder (smooth colour gradients, blobs
and noise, quality 90). It is counted by `predict_files`, exactly what `launch.py --mode
predict` runs (loading, tiles of `predict.tile_size` through the model, head points,
overlay PNG, CSV), in a child process, so that the figures are the predict's alone. The
child reports its peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`)
for three phases, resetting the peak between them (`/proc/self/clear_refs`, Linux):
  setup     imports and the restored checkpoint;
  tile      a first picture of one tile (tile_size x tile_size), which compiles the tile
            shape and runs one tile: the part of memory the tile size bounds;
  photo     the large photo, counted in tiles with the shape already compiled.
The photo's peak is the tile's plus what grows with the picture: the decoded picture
(3 bytes a pixel, held while it is counted) and the decoder's own copy while loading.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_photo(path: Path, width: int, height: int, seed: int = 0) -> None:
  """A noisy (width x height) JPEG, generated in bands of rows (the generator never
  holds more than the PIL image and one band)."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(seed)
  image = Image.new("RGB", (width, height))
  x = np.linspace(0.0, 1.0, width, dtype=np.float32)
  centres = rng.uniform((0, 0), (width, height), (400, 2)).astype(np.float32)
  band = 512
  for top in range(0, height, band):
    rows = np.arange(top, min(height, top + band), dtype=np.float32)[:, None]
    base = np.stack(
        [
            80 + 100 * x[None, :] + 0 * rows,
            60 + 120 * (rows / height) + 0 * x[None, :],
            140 - 60 * x[None, :] * (rows / height),
        ],
        -1,
    )
    near = centres[np.abs(centres[:, 1] - (top + band / 2)) < band + 60]
    for cx, cy in near:  # dark blobs, about a head's size
      dy = rows - cy
      dx = np.arange(max(0, int(cx) - 40), min(width, int(cx) + 40), dtype=np.float32) - cx
      blob = np.exp(-(dy**2 + dx[None, :] ** 2) / (2 * 12.0**2))
      base[:, max(0, int(cx) - 40) : min(width, int(cx) + 40)] -= 90 * blob[..., None]
    noisy = base + rng.normal(0, 12, base.shape).astype(np.float32)
    pixels = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    image.paste(Image.fromarray(pixels), (0, top))
  image.save(path, quality=90)


def _peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _rss_mib() -> float:
  with open("/proc/self/statm") as statm:
    return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
  """The peak back to the current resident size (Linux >= 4.0)."""
  try:
    Path("/proc/self/clear_refs").write_text("5")
    return True
  except OSError:
    return False


def child(args) -> None:
  """Counts the photo in this (fresh) process and prints the figures as JSON."""
  import jax

  from cfrnet_jax import run_config
  from cfrnet_jax.inference.counter import CrowdCounter
  from cfrnet_jax.inference.predict_mode import predict_files
  from configs import default

  start = time.perf_counter()
  if args.fresh:
    config = default.get_config()
  else:
    config = run_config.load_run_config(args.workdir)
  if args.tile_size:
    config.predict.tile_size = args.tile_size
  if args.fresh:
    counter = CrowdCounter.from_config(config)
  else:
    counter = CrowdCounter.from_checkpoint(args.workdir, config=config)
  tile = config.predict.tile_size
  figures = {"setup": {"peak_mib": _peak_mib(), "seconds": time.perf_counter() - start}}
  Path(args.out).mkdir(parents=True, exist_ok=True)
  small = Path(args.out) / "tile.jpg"
  make_photo(small, tile, tile, seed=1)

  def phase(name: str, photo: Path) -> dict:
    reset = _reset_peak()
    before, start = _rss_mib(), time.perf_counter()
    summary = predict_files(counter, [str(photo)], Path(args.out) / name)
    with open(Path(args.out) / name / "counts.csv") as table:
      header, row = (line.strip().split(",") for line in list(table)[:2])
    row = dict(zip(header, row))
    figures[name] = {
        "rss_before_mib": before,
        "peak_mib": _peak_mib(),
        "peak_reset": reset,
        "seconds": time.perf_counter() - start,
        "count": float(row["count"]),
        "tiles": int(row["tiles"]),
        "size": f"{row['width']}x{row['height']}",
        "skipped": summary["skipped"],
    }

  phase("compile", small)  # compiles the tile shape
  phase("tile", small)  # the same picture of one tile, warm
  phase("photo", Path(args.photo))  # the large photo, warm
  figures.update(
      compilations=counter.compilations,
      tile_size=tile,
      tile_overlap=config.predict.tile_overlap,
      max_megapixels=config.predict.max_megapixels,
      jax=f"jax {jax.__version__}, {jax.default_backend()}",
  )
  print("FIGURES " + json.dumps(figures))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/quickstart", help="a trained run")
  parser.add_argument("--fresh", action="store_true", help="configs/default.py, fresh weights")
  parser.add_argument("--width", type=int, default=12_000)
  parser.add_argument("--height", type=int, default=9_000)
  parser.add_argument("--tile_size", type=int, default=0, help="default: the run's config")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--photo", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  if not args.fresh and not (Path(args.workdir) / "config.json").exists():
    sys.exit(
        f"{args.workdir} is not a trained run. Make one with\n"
        f"  python launch.py --config configs/default.py --workdir runs/quickstart\n"
        f"or measure a freshly initialised model with --fresh."
    )
  with tempfile.TemporaryDirectory() as folder:
    photo = Path(folder) / "large.jpg"
    start = time.perf_counter()
    make_photo(photo, args.width, args.height)
    made = time.perf_counter() - start
    command = [sys.executable, __file__, "--child", "--photo", str(photo)]
    command += ["--out", str(Path(folder) / "out"), "--workdir", args.workdir]
    command += ["--tile_size", str(args.tile_size)] + (["--fresh"] if args.fresh else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FIGURES ")]
    if result.returncode or not lines:
      sys.exit(f"The child failed:\n{result.stderr[-4000:]}")
    figures = json.loads(lines[-1][len("FIGURES ") :])
    figures.update(photo_mib=photo.stat().st_size / 2**20, photo_seconds_to_make=made)
  megapixels = args.width * args.height / 1e6
  picture_mib = args.width * args.height * 3 / 2**20
  photo, tile = figures["photo"], figures["tile"]
  print(
      f"{args.width}x{args.height} noisy JPEG ({megapixels:.0f} Mpx, "
      f"{figures['photo_mib']:.1f} MiB; decoded RGB {picture_mib:.0f} MiB), "
      f"{'fresh configs/default.py model' if args.fresh else args.workdir}, "
      f"tile {figures['tile_size']} overlap {figures['tile_overlap']}: "
      f"{photo['tiles']} tiles, count {photo['count']:.2f}, {photo['seconds']:.1f} s, "
      f"{figures['compilations']} compilation(s)."
  )
  print(
      f"Peak RSS of predict_files (child process, ru_maxrss): "
      f"setup {figures['setup']['peak_mib']:.0f} MiB, first {figures['tile_size']}^2 "
      f"picture (compiling) {figures['compile']['peak_mib']:.0f} MiB, the same again "
      f"{tile['peak_mib']:.0f} MiB, the {megapixels:.0f} Mpx photo {photo['peak_mib']:.0f} "
      f"MiB: {photo['peak_mib'] - tile['peak_mib']:.0f} MiB more than one tile "
      f"({(photo['peak_mib'] - tile['peak_mib']) / picture_mib:.2f}x the decoded picture)."
      + ("" if photo["peak_reset"] else " (peaks could not be reset: cumulative)")
  )
  print(
      f"{platform.machine()}, {os.cpu_count()} CPUs, {figures['jax']}, "
      f"{time.strftime('%Y-%m-%d')}"
  )
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
