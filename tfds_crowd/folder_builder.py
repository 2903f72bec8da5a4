"""The folder importer's TFDS builder: writes the examples of a `FolderPlan` (the
folder's annotations, read and split by `tfds_crowd/folder.py`) with the features of the
other crowd builders, plus per point `labels` and the annotation's own count field.

Per picture it keeps the points whose label --labels selects, drops exact duplicates, and
stores a picture whose EXIF orientation is not 1 upright with its points
(`tfds_crowd/orientation.py`), logging each; `FolderReport` tallies them per split for the
summary the build prints.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfds_crowd import orientation
from tfds_crowd.annotation_formats import FolderAnnotations
from tfds_crowd.crowd_builder import CrowdBuilder, SplitReport, common_features
from tfds_crowd.point_annotations import STORED, PictureAnnotation

VERSION = tfds.core.Version("1.0.0")
METADATA_KEY = "folder_import"  # marks datasets this importer wrote (and may replace)


def tally(counter: collections.Counter) -> str:
  """'polygon 3, line 1': a counter for messages, most common first."""
  return ", ".join(f"{key} {count}" for key, count in counter.most_common())


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
    by_label = f": {tally(self.unselected)}" if unselected else ""
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
      parts.append(f"ignored {ignored} shapes that are not points ({tally(self.ignored)})")
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
          tally(dropped),
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
