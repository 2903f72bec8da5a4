"""Predict mode: count a list of picture files and write a table, overlays and maps.

`launch.py --mode predict` calls `predict_files`; so can any script holding a
`CrowdCounter`. Unreadable files are reported by name with the reason, skipped and
counted in the summary; the run does not stop for them.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.overlay import render_overlay
from cfrnet_jax.inference.user_images import IMAGE_SUFFIXES, collect_images


def _unique_stem(path: Path, taken: set[str]) -> str:
  stem, n = path.stem, 1
  while stem in taken:
    n += 1
    stem = f"{path.stem}_{n}"
  taken.add(stem)
  return stem


def predict_files(
    counter: CrowdCounter, patterns: list[str], out_dir: str | Path, save_density: bool = False
) -> dict:
  """Counts every image named by `patterns` (see `user_images.collect_images`) and
  writes into `out_dir`:
    counts.csv            file, count, height, width (as counted), tiles;
    overlays/NAME.png     the density map over the image, with the count;
    density/NAME.npy      the raw float32 map (with `save_density`);
    summary.json          images counted, skipped files and why, seconds, compilations.
  Unreadable files are reported by name and skipped. Returns the summary."""
  files, ignored = collect_images(patterns)
  out_dir = Path(out_dir)
  (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
  if save_density:
    (out_dir / "density").mkdir(exist_ok=True)
  if ignored:
    logging.warning(
        "Ignored %d files without an image suffix (%s) in the given directories.",
        ignored,
        ", ".join(IMAGE_SUFFIXES),
    )
  rows, skipped, taken = [], {}, set()
  start, compilations = time.perf_counter(), counter.compilations
  for path in tqdm(files, desc="Counting", unit="image"):
    try:
      prediction = counter.predict(path)
    except ValueError as error:
      skipped[str(path)] = str(error)
      logging.warning("Skipped %s", error)
      continue
    stem = _unique_stem(path, taken)
    render_overlay(
        prediction.image,
        prediction.density,
        prediction.count,
        counter.config.predict.overlay_max_side,
    ).save(out_dir / "overlays" / f"{stem}.png")
    if save_density:
      np.save(out_dir / "density" / f"{stem}.npy", prediction.density)
    rows.append((str(path), stem, prediction.count, *prediction.image.shape[:2], prediction.tiles))
  seconds = time.perf_counter() - start
  with open(out_dir / "counts.csv", "w", newline="") as table:
    writer = csv.writer(table)
    writer.writerow(["file", "name", "count", "height", "width", "tiles"])
    writer.writerows(rows)
  summary = {
      "images": len(rows),
      "skipped": skipped,
      "seconds": round(seconds, 3),
      "images_per_second": round(len(rows) / seconds, 4) if rows else 0.0,
      "compilations": counter.compilations - compilations,
  }
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  logging.info(
      "Counted %d images in %.1f s (%d compilations) into %s; skipped %d unreadable%s",
      len(rows),
      seconds,
      summary["compilations"],
      out_dir,
      len(skipped),
      (": " + ", ".join(skipped)) if skipped else ".",
  )
  return summary
