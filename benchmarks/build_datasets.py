"""Time the dataset builders on the data this machine has.

    python benchmarks/build_datasets.py [--shared ../shared/data]

Builds, each into a fresh temporary data dir: `synthetic_crowd` (generated), `ucf_cc_50`
(the complete dataset from ../shared/data/ucf_cc_50) and `shanghaitech/part_a` from the
five real `sht_sample` images placed in a ShanghaiTech layout. Prints seconds and
images/s; the per-image rate is what to expect for the other datasets' JPEGs of similar
size, as building is dominated by decoding each image once to validate it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfds_crowd.build import build  # noqa: E402


def timed_build(name: str, manual_dir: str | None) -> tuple[float, int]:
  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    builder = build(name, data_dir, manual_dir)
    seconds = time.perf_counter() - start
  return seconds, sum(split.num_examples for split in builder.info.splits.values())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
  )
  args = parser.parse_args()
  shared = Path(args.shared)
  rows = [("synthetic_crowd", None)]
  if (shared / "ucf_cc_50").is_dir():
    rows.append(("ucf_cc_50", str(shared / "ucf_cc_50")))
  staging = tempfile.mkdtemp()
  if (shared / "sht_sample").is_dir():
    for split in ("train", "test"):
      folder = Path(staging) / "part_A" / f"{split}_data"
      shutil.copytree(shared / "sht_sample" / "images", folder / "images")
      shutil.copytree(shared / "sht_sample" / "ground-truth", folder / "ground-truth")
    rows.append(("shanghaitech/part_a", staging))
  results = [(name, *timed_build(name, manual)) for name, manual in rows]
  shutil.rmtree(staging)
  print(f"# build_datasets  {datetime.date.today()}  {platform.machine()}  {os.cpu_count()} cpus")
  print("| dataset | images | build seconds | images/s |")
  print("|---|---|---|---|")
  for name, seconds, images in results:
    print(f"| {name} | {images} | {seconds:.1f} | {images / seconds:.0f} |")


if __name__ == "__main__":
  main()
