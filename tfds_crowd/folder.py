"""The folder importer: a folder of pictures and point annotations -> a TFDS dataset.

    python -m tfds_crowd.build folder --manual_dir ~/my_photos --name my_crowds

reads the folder in one of the formats of `tfds_crowd/annotation_formats.py` and writes
the dataset `my_crowds` in TFDS's layout (`DATA_DIR/my_crowds/1.0.0/`), with the
features of the other crowd builders, so training, evaluation and prediction read it
with `data.name = "my_crowds"` unchanged (`tfds.data_source` finds an unregistered name
on disk). The name is not registered: it must not be one of this project's datasets or
a TFDS dataset, and rebuilding replaces the dataset (the new one is written beside it and
moved into place only once complete).

This module plans the build (`plan_folder`: reads the annotations, checks --labels and
assigns the splits, so that a bad folder fails before an existing dataset is touched),
runs the builder (`tfds_crowd/folder_builder.py`) into a staging folder, moves the
result into place and logs the summary (`summary_lines`). Splits `train`, `val` and
`test` come from a split file or from a hash of each picture's path
(`tfds_crowd/folder_splits.py`; a picture keeps its split as the folder grows); the
assignment is recorded in the dataset's metadata (`info.metadata["folder_import"]`).
Validation follows the other builders (`crowd_builder.py`); what this importer adds
(label selection, duplicates, pictures without annotations and annotations without
pictures, EXIF orientation) is logged per file and counted in the summary the build
prints.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

from tfds_crowd.annotation_formats import AUTO, FORMATS, FolderAnnotations, read_folder
from tfds_crowd.folder_builder import METADATA_KEY, VERSION, FolderBuilder, FolderPlan, tally
from tfds_crowd.folder_splits import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    SPLITS,
    file_splits,
    hashed_splits,
)
from tfds_crowd.manual_source import CrowdDataError, ManualSource, MissingDataError

_NAME = re.compile(r"[a-z][a-z0-9_]*")


# The name -----------------------------------------------------------------------------


def check_name(name: str) -> None:
  """Refuses a dataset name TFDS would not resolve to the files on disk: one of this
  project's builders, a registered TFDS dataset, or not a TFDS name."""
  from tfds_crowd import BUILDERS  # (the package imports this module)

  if not _NAME.fullmatch(name):
    raise ValueError(
        f"--name {name!r}: a dataset name is lower-case letters, digits and '_', starting "
        "with a letter (e.g. my_crowds)."
    )
  if name in BUILDERS:
    raise ValueError(f"--name {name!r} is one of this project's datasets; choose another name.")
  try:
    registered = tfds.builder_cls(name) is not None
  except tfds.core.registered.DatasetNotFoundError:
    registered = name in tfds.list_builders(with_community_datasets=False)
  if registered:
    raise ValueError(
        f"--name {name!r} is a TFDS dataset; tfds.data_source would load that one. Choose "
        "another name."
    )


# The plan -----------------------------------------------------------------------------


def _wanted_labels(found: FolderAnnotations, labels: list[str] | None) -> frozenset | None:
  """The labels --labels selects, checked against the labels the annotations carry."""
  if labels is None:
    return None
  wanted = frozenset(label.strip() for label in labels if label.strip())
  if not wanted:
    raise ValueError("--labels names no label (give e.g. --labels head,person).")
  counts = collections.Counter(
      label for a in found.annotations for label in (a.labels or []) if label is not None
  )
  if not counts:
    why = "have no labels" if not FORMATS[found.format].labelled else "carry no labels here"
    raise CrowdDataError(
        f"--labels {','.join(sorted(wanted))}: {found.format} annotations {why}; leave out "
        "--labels to keep every point."
    )
  absent = sorted(wanted - set(counts))
  if len(absent) == len(wanted):
    raise CrowdDataError(
        f"--labels: no point has the label {' or '.join(absent)}; the annotations' labels "
        f"are: {tally(counts)}."
    )
  if absent:
    logging.warning("--labels: no point has the label %s (labels: %s).", absent, tally(counts))
  return wanted


def _log_dropped(found: FolderAnnotations) -> None:
  """One warning per picture or annotation dropped before splitting, and per file
  ignored, each with its name (the summary only counts them)."""
  for picture, where in found.missing:
    logging.warning("%s: no picture %r in the folder; its annotation is dropped.", where, picture)
  for picture in found.unannotated:
    where = found.files.describe(picture)
    logging.warning("%s: no annotation names this picture; it is dropped.", where)
  for described in found.ignored_files:
    logging.warning("Ignored %s: not a %s annotation file.", described, found.format)


def plan_folder(
    manual_dir: str,
    name: str,
    *,
    format: str = AUTO,
    labels: list[str] | None = None,
    splits_file: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> FolderPlan:
  """Reads the folder's annotations and assigns the splits (every error about the
  folder's files, except unreadable pictures, is raised here)."""
  root = Path(manual_dir).expanduser()
  if not root.is_dir():
    raise MissingDataError(f"--manual_dir {root}: no such folder.")
  found = read_folder(ManualSource(root), format)
  wanted = _wanted_labels(found, labels)
  _log_dropped(found)
  by_picture = {annotation.picture: annotation for annotation in found.annotations}
  if not by_picture:
    raise CrowdDataError(f"{root}: no annotated picture to import ({found.format}).")
  if splits_file:
    splits = file_splits(splits_file, found)
  else:
    splits = hashed_splits(sorted(by_picture), val_fraction, test_fraction)
  record = {
      "source": str(root.resolve()),
      "format": found.format,
      "labels": sorted(wanted) if wanted else None,
      "splits_file": str(Path(splits_file).resolve()) if splits_file else None,
      "val_fraction": None if splits_file else val_fraction,
      "test_fraction": None if splits_file else test_fraction,
      "splits": splits,
      "pictures_without_annotations": found.unannotated,
      "annotations_without_picture": [[p, where] for p, where in found.missing],
      "ignored_files": found.ignored_files,
  }
  return FolderPlan(
      name,
      found,
      {split: [by_picture[p] for p in pictures] for split, pictures in splits.items()},
      wanted,
      {METADATA_KEY: record},
  )


def _some(names: list[str], limit: int = 3) -> str:
  """The first few names, for the printed summary (logs and metadata list them all)."""
  return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def summary_lines(plan: FolderPlan) -> list[str]:
  """What the build printed: a line per split, and one for what was dropped or ignored
  before the split (pictures without annotations, annotations without pictures, files
  that are not annotations, and the readers' tallies)."""
  found = plan.found
  lines = [plan.reports[split].line() for split in SPLITS if split in plan.reports]
  unannotated = f" ({_some(found.unannotated)})" if found.unannotated else ""
  missing = f" ({_some([p for p, _ in found.missing])})" if found.missing else ""
  ignored = f": {_some(found.ignored_files)}" if found.ignored_files else ""
  head = f"{plan.name} from {found.files.source.root} ({found.format})"
  parts = [
      f"{head}: {len(found.annotations)} annotated pictures",
      f"{len(found.unannotated)} pictures without annotations dropped{unannotated}",
      f"{len(found.missing)} annotations without their picture dropped{missing}",
      f"{len(found.ignored_files)} files ignored (not {found.format} annotations){ignored}",
  ]
  parts += [f"{count} {what}" for what, count in sorted(found.tallies.items()) if count]
  return lines + ["; ".join(parts) + "."]


# The build ----------------------------------------------------------------------------


@dataclasses.dataclass
class FolderBuild:
  builder: tfds.core.DatasetBuilder  # reads the written dataset
  summary: list[str]  # what the build printed


def _written_here(version: Path) -> bool:
  """Whether a dataset version folder was written by this importer (its metadata says
  so), and so may be replaced by a rebuild."""
  try:
    return METADATA_KEY in json.loads((version / "metadata.json").read_text())
  except (OSError, ValueError):
    return False


def _versions(dataset: Path) -> list[Path]:
  """The version folders of `data_dir/name` (TFDS's unfinished ones left out)."""
  if not dataset.is_dir():
    return []
  return [v for v in dataset.iterdir() if v.is_dir() and not v.name.startswith((".", "incomplete"))]


def _check_replaceable(dataset: Path) -> None:
  """Refuses to replace a dataset someone else wrote under the same name."""
  if dataset.exists() and not dataset.is_dir():
    raise CrowdDataError(f"{dataset} is a file, not a dataset folder; choose another --name.")
  foreign = [v.name for v in _versions(dataset) if not _written_here(v)]
  if foreign:
    raise CrowdDataError(
        f"{dataset} holds a dataset the folder importer did not write (versions {foreign}); "
        "choose another --name, or remove it."
    )


def build_folder(
    manual_dir: str,
    name: str,
    *,
    data_dir: str | None = None,
    file_format: str | None = None,
    **options,
) -> FolderBuild:
  """Imports `manual_dir` as the dataset `name` in `data_dir` (default TFDS's,
  ~/tensorflow_datasets), replacing a dataset of that name this importer wrote before.
  `options` are `plan_folder`'s (format, labels, splits_file, val_fraction,
  test_fraction). The dataset is written beside the old one and moved into place once
  complete."""
  check_name(name)
  plan = plan_folder(manual_dir, name, **options)
  data_dir = Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
  dataset = data_dir / name
  _check_replaceable(dataset)
  staging = data_dir / f".{name}.building-{uuid.uuid4().hex[:8]}"
  namespace = {"name": name, "__module__": __name__, "__doc__": FolderBuilder.__doc__}
  builder_class = type("FolderDataset", (FolderBuilder,), namespace, skip_registration=True)
  try:
    builder = builder_class(plan=plan, data_dir=str(staging), file_format=file_format)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    dataset.mkdir(parents=True, exist_ok=True)
    (staging / "replaced").mkdir()
    for version in _versions(dataset):
      os.replace(version, staging / "replaced" / version.name)
    os.replace(staging / name / str(VERSION), dataset / str(VERSION))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  lines = summary_lines(plan)
  for line in lines:
    logging.info("%s", line)
  return FolderBuild(tfds.builder_from_directory(str(dataset / str(VERSION))), lines)
