"""The folder importer: a folder of pictures and point annotations -> a TFDS dataset.

    python -m tfds_crowd.build folder --manual_dir ~/my_photos --name my_crowds

reads the folder in one of the formats of `tfds_crowd/annotation_formats.py` and writes
the dataset `my_crowds` in TFDS's layout (`DATA_DIR/my_crowds/1.0.0/`), with the
features of the other crowd builders, so training, evaluation and prediction read it
with `data.name = "my_crowds"` unchanged (`tfds.data_source` finds an unregistered name
on disk). The name is not registered: it must not be one of this project's datasets or
a TFDS dataset, and rebuilding replaces the dataset (the new one is written beside it and
moved into place only once complete).

Splits `train`, `val` and `test` come from a split file or from a hash of each picture's
path (a picture keeps its split as the folder grows); the assignment is recorded in the
dataset's metadata (`info.metadata["folder_import"]`). Validation follows the other
builders (`crowd_builder.py`); what this importer adds (label selection, duplicates,
pictures without annotations and annotations without pictures, EXIF orientation) is
logged per file and counted in the summary the build prints.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfds_crowd import orientation
from tfds_crowd.annotation_formats import AUTO, FORMATS, FolderAnnotations, read_folder
from tfds_crowd.crowd_builder import CrowdBuilder, SplitReport, common_features
from tfds_crowd.manual_source import CrowdDataError, ManualSource, MissingDataError
from tfds_crowd.point_annotations import STORED, PictureAnnotation

SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.2
VERSION = tfds.core.Version("1.0.0")
METADATA_KEY = "folder_import"  # marks datasets this importer wrote (and may replace)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


# Names and splits ---------------------------------------------------------------------


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


def hash_position(path: str) -> float:
  """A picture's place in [0, 1), from its relative path alone."""
  return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") / 2**64


def hashed_splits(pictures: list[str], val_fraction: float, test_fraction: float) -> dict:
  """{split: pictures}: `test` takes the pictures whose `hash_position` is below
  `test_fraction`, `val` the next `val_fraction`, `train` the rest; a fraction of 0 means
  no such split. A split left empty by chance takes the picture nearest its interval
  from the largest split, so each split asked for has a picture."""
  for label, fraction in (("--val_fraction", val_fraction), ("--test_fraction", test_fraction)):
    if not 0 <= fraction < 1:
      raise ValueError(f"{label} must be in [0, 1), got {fraction}.")
  if val_fraction + test_fraction >= 1:
    raise ValueError(
        f"--val_fraction + --test_fraction = {val_fraction + test_fraction:g} leaves no "
        "pictures for train."
    )
  bounds = {"test": (0.0, test_fraction), "val": (test_fraction, test_fraction + val_fraction)}
  bounds = {split: b for split, b in bounds.items() if b[1] > b[0]}
  bounds["train"] = (test_fraction + val_fraction, 1.0)
  if len(pictures) < len(bounds):
    raise CrowdDataError(
        f"{len(pictures)} annotated pictures cannot fill the {len(bounds)} splits "
        f"{sorted(bounds)}; add pictures, or set --val_fraction / --test_fraction to 0."
    )
  splits = {split: [] for split in bounds}
  for picture in pictures:
    position = hash_position(picture)
    splits[next(s for s, (lo, hi) in bounds.items() if lo <= position < hi)].append(picture)

  def distance(picture: str, lo: float, hi: float) -> float:
    position = hash_position(picture)
    return max(lo - position, position - hi, 0.0)

  for split, (lo, hi) in bounds.items():
    if not splits[split]:
      donor = max(splits, key=lambda s: len(splits[s]))
      moved = min(splits[donor], key=lambda picture: (distance(picture, lo, hi), picture))
      splits[donor].remove(moved)
      splits[split].append(moved)
  return {split: sorted(splits[split]) for split in SPLITS if split in splits}


def file_splits(path: str, found: FolderAnnotations) -> dict:
  """{split: pictures} from a JSON split file `{"train": [...], "val": [...], "test":
  [...]}` (paths relative to the folder). Every annotated picture must be listed once, and
  every listed picture must be an annotated picture of the folder."""
  try:
    record = json.loads(Path(path).read_text(encoding="utf-8-sig"))
  except (OSError, ValueError) as error:
    raise CrowdDataError(f"{path}: cannot read the split file ({error}).") from None
  if not isinstance(record, dict) or not record or set(record) - set(SPLITS):
    raise CrowdDataError(
        f"{path}: a split file is a JSON object with some of the keys {list(SPLITS)}, got "
        f"{sorted(record) if isinstance(record, dict) else type(record).__name__}."
    )
  annotated = {annotation.picture for annotation in found.annotations}
  splits, seen = {}, {}
  for split in SPLITS:
    listed = record.get(split)
    if split not in record:
      continue
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
      raise CrowdDataError(f"{path}: {split!r} must be a non-empty list of picture paths.")
    for picture in (posixpath.normpath(p.replace("\\", "/")) for p in listed):
      if picture not in annotated:
        why = "has no annotation" if picture in found.files.pictures else "is not in the folder"
        raise CrowdDataError(f"{path}: {split} lists {picture!r}, which {why}.")
      if picture in seen:
        raise CrowdDataError(f"{path}: {picture!r} is listed in {seen[picture]} and {split}.")
      seen[picture] = split
    splits[split] = sorted(p for p, s in seen.items() if s == split)
  unlisted = sorted(annotated - set(seen))
  if unlisted:
    raise CrowdDataError(
        f"{path}: {len(unlisted)} annotated pictures are in no split: {unlisted[:5]}; list "
        "them, or leave out --splits to split by hash."
    )
  return splits


# Building -----------------------------------------------------------------------------


def _tally(counter: collections.Counter) -> str:
  """'polygon 3, line 1': a counter for messages, most common first."""
  return ", ".join(f"{key} {count}" for key, count in counter.most_common())


def _some(names: list[str], limit: int = 3) -> str:
  """The first few names, for the printed summary (logs and metadata list them all)."""
  return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class FolderReport(SplitReport):
  """A split's tallies: the other builders' (points kept, dropped outside their picture
  or non-finite, moved onto the border, count fields that disagree) plus the folder
  importer's (label selection, duplicates, shapes that are not points, pictures stored
  upright)."""

  def __init__(self, dataset: str, split: str):
    super().__init__(dataset, split)
    self.duplicates = self.upright = 0
    self.unselected = collections.Counter()  # points dropped, by label
    self.ignored = collections.Counter()  # shapes that are not points, by kind

  def line(self) -> str:
    unselected = sum(self.unselected.values())
    by_label = f": {_tally(self.unselected)}" if unselected else ""
    kept = (
        f"{self.dataset}/{self.split}: {self.images} pictures, {self.points} points kept "
        f"({self.clipped} moved onto the border)"
    )
    dropped = (
        f"{self.dropped + self.duplicates + unselected} points dropped "
        f"({self.dropped - self.nonfinite} outside their picture, {self.nonfinite} with NaN "
        f"or infinite coordinates, {self.duplicates} duplicates, {unselected} with labels "
        f"not selected{by_label})"
    )
    parts = [kept, dropped]
    parts.append(f"{self.count_mismatches} pictures whose count field disagrees with their points")
    if self.ignored:
      ignored = sum(self.ignored.values())
      parts.append(f"ignored {ignored} shapes that are not points ({_tally(self.ignored)})")
    if self.upright:
      parts.append(f"{self.upright} pictures stored upright (EXIF orientation)")
    return "; ".join(parts) + "."

  def log_summary(self):
    logging.info("%s", self.line())


@dataclasses.dataclass
class FolderPlan:
  """What a folder build writes, decided before any file of the dataset is written, so
  that a bad folder fails before an existing dataset is touched."""

  name: str
  found: FolderAnnotations
  splits: dict[str, list[PictureAnnotation]]
  labels: frozenset[str] | None
  metadata: dict
  reports: dict[str, FolderReport] = dataclasses.field(default_factory=dict)


class FolderBuilder(CrowdBuilder, skip_registration=True):
  """Pictures and point annotations imported from a folder by `python -m
  tfds_crowd.build folder`. Features: those of every crowd builder, plus per point
  `labels` (b'' where the format has none), `annotated_count` (the annotation's own count
  field, -1 where it has none), and `duplicate_points` and `unselected_points`, the
  points dropped as exact duplicates and for labels not selected with --labels."""

  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "Imported from a folder."}

  def __init__(self, *, plan: FolderPlan, **kwargs):
    self.plan = plan
    super().__init__(**kwargs)

  def _extra_features(self):
    return {
        "labels": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "annotated_count": tfds.features.Scalar(dtype=np.int32),
        "duplicate_points": tfds.features.Scalar(dtype=np.int32),
        "unselected_points": tfds.features.Scalar(dtype=np.int32),
    }

  def _info(self) -> tfds.core.DatasetInfo:
    record = self.plan.metadata[METADATA_KEY]
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"{self.__doc__}\n\nSource: {record['source']} ({record['format']}); splits "
            f"{'from ' + record['splits_file'] if record['splits_file'] else 'by path hash'}."
        ),
        features=tfds.features.FeaturesDict({**common_features(), **self._extra_features()}),
        metadata=tfds.core.MetadataDict(self.plan.metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the plan has read the folder
    return {split: self._generate_examples(split) for split in self.plan.splits}

  def _generate_examples(self, split):
    report = self.plan.reports[split] = FolderReport(self.name, split)
    for annotation in self.plan.splits[split]:
      yield self._picture_example(report, annotation)
    report.log_summary()

  def _picture_example(self, report: FolderReport, annotation: PictureAnnotation):
    """One picture's (key, example): its points selected by label, without duplicates,
    in the frame of the stored picture (turned upright where EXIF says so)."""
    for note in annotation.notes:
      logging.warning("%s", note)
    data, where = self._picture_bytes(annotation)
    picture = orientation.geometry(data, where)
    frame = orientation.annotation_frame(
        annotation.frame, annotation.declared_size, picture, annotation.annotation
    )
    points, labels = self._selected(report, annotation)
    points, labels, duplicates = _without_duplicates(points, labels, annotation.annotation)
    report.duplicates += duplicates
    report.ignored.update(annotation.ignored)
    if picture.turned:
      data = orientation.upright_png(data, where)
      if frame == STORED:
        points = orientation.stored_to_display(points, picture)
      report.upright += 1
      logging.warning(
          "%s: EXIF orientation %d; stored upright as PNG, its points (annotated on the %s "
          "picture) with it.",
          where,
          picture.orientation,
          "stored" if frame == STORED else "displayed",
      )
    key, example = self._example(
        report,
        data,
        where,
        annotation.picture,
        points,
        annotation=annotation.annotation,
        per_head={"labels": np.array([label or "" for label in labels], dtype=object)},
    )
    count = annotation.annotated_count
    if count is not None and count != len(annotation.points):
      report.count_mismatches += 1
      logging.warning(
          "%s: the annotation's count field says %d but it lists %d objects.",
          annotation.annotation,
          count,
          len(annotation.points),
      )
    example["annotated_count"] = -1 if count is None else count
    example["duplicate_points"] = duplicates
    example["unselected_points"] = len(annotation.points) - len(labels) - duplicates
    return key, example

  def _picture_bytes(self, annotation: PictureAnnotation) -> tuple[bytes, str]:
    """The picture's encoded bytes (its file's, or the annotation's embedded copy) and
    how messages name it."""
    if annotation.embedded is not None:
      return annotation.embedded, f"{annotation.annotation} (its imageData)"
    files = self.plan.found.files
    return files.read(annotation.picture), files.describe(annotation.picture)

  def _selected(self, report: FolderReport, annotation: PictureAnnotation):
    """The annotation's points and labels whose label --labels selects (all without it)."""
    labels = annotation.labels or [None] * len(annotation.points)
    if self.plan.labels is None:
      return annotation.points, labels
    keep = np.array([label in self.plan.labels for label in labels], bool).reshape(-1)
    dropped = collections.Counter(label or "(no label)" for label, k in zip(labels, keep) if not k)
    if dropped:
      report.unselected.update(dropped)
      logging.warning(
          "%s: dropped %d points whose labels --labels does not select (%s).",
          annotation.annotation,
          sum(dropped.values()),
          _tally(dropped),
      )
    return annotation.points[keep], [label for label, k in zip(labels, keep) if k]


def _without_duplicates(points: np.ndarray, labels: list, where: str):
  """Points (and their labels) with exact repeats of an earlier point's coordinates
  removed, and how many were removed (logged with `where`)."""
  seen, keep = set(), np.ones(len(points), bool)
  for index, (x, y) in enumerate(points):
    if np.isfinite(x) and np.isfinite(y):
      keep[index] = (x, y) not in seen
      seen.add((x, y))
  duplicates = int((~keep).sum())
  if duplicates:
    logging.warning("%s: dropped %d points that repeat another point's.", where, duplicates)
  return points[keep], [label for label, k in zip(labels, keep) if k], duplicates


# The build ----------------------------------------------------------------------------


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
        f"are: {_tally(counts)}."
    )
  if absent:
    logging.warning("--labels: no point has the label %s (labels: %s).", absent, _tally(counts))
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
  namespace = {"name": name, "__module__": __name__}
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
