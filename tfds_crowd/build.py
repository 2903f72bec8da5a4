"""Build a crowd dataset without TensorFlow: the pure-Python twin of `tfds build`.

    python -m tfds_crowd.build shanghaitech/part_a --manual_dir ~/crowd_downloads
    python -m tfds_crowd.build synthetic_crowd

writes the same `array_record` files as
`tfds build shanghaitech/part_a --imports tfds_crowd --manual_dir ~/crowd_downloads`
(which needs TensorFlow for the CLI itself) into `--data_dir`
(default ~/tensorflow_datasets).
"""

from __future__ import annotations

import argparse
import time

import tensorflow_datasets as tfds

from tfds_crowd import BUILDERS
from tfds_crowd.crowd_builder import DEFAULT_FILE_FORMAT


def build(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    file_format: str = DEFAULT_FILE_FORMAT,
) -> tfds.core.DatasetBuilder:
  """Builds `name` (`dataset` or `dataset/config`) and returns its prepared builder."""
  dataset, _, config = name.partition("/")
  if dataset not in BUILDERS:
    raise ValueError(f"Unknown dataset {dataset!r}; choose from {sorted(BUILDERS)}.")
  builder_class = BUILDERS[dataset]
  configs = [c.name for c in builder_class.BUILDER_CONFIGS]
  if configs and config not in configs:
    raise ValueError(f"{dataset} needs a config: one of {[f'{dataset}/{c}' for c in configs]}.")
  builder = builder_class(config=config or None, data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def ensure_synthetic(data_config) -> None:
  """Builds `synthetic_crowd` (seconds, no download) if a run needs it and it is absent;
  the real datasets need the user's download and are never built implicitly."""
  if data_config.name != "synthetic_crowd":
    return
  builder = BUILDERS["synthetic_crowd"](data_dir=data_config.data_dir)
  if not builder.is_prepared():
    print(f"Building synthetic_crowd in {builder.data_dir} (a few seconds, no download).")
    build("synthetic_crowd", data_config.data_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "name", help=f"one of {sorted(BUILDERS)}, with /config where needed (shanghaitech/part_a)"
  )
  parser.add_argument("--manual_dir", help="folder holding the manual download")
  parser.add_argument("--data_dir", help="TFDS data dir (default ~/tensorflow_datasets)")
  args = parser.parse_args()
  start = time.perf_counter()
  builder = build(args.name, args.data_dir, args.manual_dir)
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(
      f"Built {builder.name}/{builder.builder_config.name if builder.builder_config else ''}"
      f" {builder.version} in {time.perf_counter() - start:.1f} s at {builder.data_dir}: "
      f"{sizes}"
  )


if __name__ == "__main__":
  main()
