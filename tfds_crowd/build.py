"""Build a crowd dataset without TensorFlow: the pure-Python twin of `tfds build`.

    python -m tfds_crowd.build shanghaitech/part_a --manual_dir ~/crowd_downloads
    python -m tfds_crowd.build synthetic_crowd
    python -m tfds_crowd.build folder --manual_dir ~/my_photos --name my_crowds

writes the same `array_record` files as
`tfds build shanghaitech/part_a --imports tfds_crowd --manual_dir ~/crowd_downloads`
(which needs TensorFlow for the CLI itself) into `--data_dir`
(default ~/tensorflow_datasets). `folder` imports the user's own pictures and point
annotations (`tfds_crowd/folder.py`; formats in docs/datasets.md, "Your own annotations").
"""

from __future__ import annotations

import argparse
import sys
import time

import tensorflow_datasets as tfds

from tfds_crowd import BUILDERS
from tfds_crowd.annotation_formats import AUTO, FORMATS
from tfds_crowd.crowd_builder import DEFAULT_FILE_FORMAT
from tfds_crowd.folder import FolderBuild, build_folder
from tfds_crowd.folder_splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from tfds_crowd.manual_source import CrowdDataError


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


def folder_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m tfds_crowd.build folder",
      description="Import a folder of pictures and point annotations as a TFDS dataset.",
  )
  parser.add_argument("--manual_dir", required=True, help="the folder of pictures and annotations")
  parser.add_argument("--name", required=True, help="the dataset's name, e.g. my_crowds")
  parser.add_argument(
      "--format",
      default=AUTO,
      choices=[AUTO, *FORMATS],
      help="the annotation format (default: detected from the files)",
  )
  parser.add_argument("--labels", help="keep only points with these labels, e.g. head,person")
  parser.add_argument("--splits", help='JSON split file {"train": [paths], "val": [...], ...}')
  parser.add_argument(
      "--val_fraction",
      type=float,
      default=DEFAULT_VAL_FRACTION,
      help=f"share of pictures in val, by path hash; 0 = no val split ({DEFAULT_VAL_FRACTION})",
  )
  parser.add_argument(
      "--test_fraction",
      type=float,
      default=DEFAULT_TEST_FRACTION,
      help=f"share in test, by path hash; 0 = no test split ({DEFAULT_TEST_FRACTION})",
  )
  parser.add_argument("--data_dir", help="TFDS data dir (default ~/tensorflow_datasets)")
  return parser


def folder_main(argv: list[str]) -> FolderBuild:
  """`python -m tfds_crowd.build folder ...`: builds, prints the summary, returns it."""
  args = folder_parser().parse_args(argv)
  start = time.perf_counter()
  result = build_folder(
      args.manual_dir,
      args.name,
      data_dir=args.data_dir,
      format=args.format,
      labels=args.labels.split(",") if args.labels is not None else None,
      splits_file=args.splits,
      val_fraction=args.val_fraction,
      test_fraction=args.test_fraction,
  )
  for line in result.summary:
    print(line)
  sizes = {name: split.num_examples for name, split in result.builder.info.splits.items()}
  print(
      f"Built {args.name} {result.builder.version} in {time.perf_counter() - start:.1f} s at "
      f"{result.builder.data_dir}: {sizes}"
  )
  return result


def main(argv: list[str] | None = None):
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "folder":
    try:
      folder_main(argv[1:])
    except (CrowdDataError, FileNotFoundError, ValueError) as error:  # the folder's fault
      sys.exit(f"error: {error}")
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "name",
      help=f"one of {sorted(BUILDERS)}, with /config where needed (shanghaitech/part_a), or "
      "'folder' to import your own annotations (folder --help)",
  )
  parser.add_argument("--manual_dir", help="folder holding the manual download")
  parser.add_argument("--data_dir", help="TFDS data dir (default ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
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
