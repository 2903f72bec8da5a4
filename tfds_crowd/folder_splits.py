"""The folder importer's split assignment: which of `train`, `val` and `test` each
annotated picture goes to.

Without a split file, a hash of the picture's path relative to the folder places it
(`hash_position`), so a picture keeps its split as the folder grows and other pictures
are added; with one (`--splits`), the file lists the pictures of each split.
`tfds_crowd/folder.py` records the assignment in the dataset's metadata.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path

from tfds_crowd.annotation_formats import FolderAnnotations
from tfds_crowd.manual_source import CrowdDataError

SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.2


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
