"""The user's manual download, as one flat view over folders and `.zip` archives.

None of the crowd datasets can be downloaded automatically (they sit behind forms and
drives), so every builder reads `manual_dir`. Users may leave the official archives
zipped or extract them; `ManualSource` lists the files of the folder *and* the members of
every `.zip` in it under one namespace of relative POSIX paths, so each builder matches
the official layout once, with regular expressions, whichever form the data is in.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path


class MissingDataError(FileNotFoundError):
  """The manual download is absent or incomplete; the message says what to fetch."""


class CrowdDataError(ValueError):
  """A file of the manual download cannot be used; the message names it."""


# What zipfile raises for damaged archives and members (a bad CRC, a truncated or
# corrupt deflate stream, mismatched headers, unsupported compression or encryption).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


class ManualSource:
  """Files under `root`, including the members of `root/**/*.zip`."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)
    self._files: dict[str, tuple[Path, str | None]] = {}
    self._archives: dict[Path, zipfile.ZipFile] = {}  # opened once, on first read.
    if not self.root.is_dir():
      return
    for path in sorted(self.root.rglob("*")):
      if not path.is_file():
        continue
      relative = path.relative_to(self.root).as_posix()
      self._files[relative] = (path, None)
      if path.suffix.lower() == ".zip":
        try:
          with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
        except _ZIP_ERRORS as error:
          raise CrowdDataError(
              f"{path}: not a readable zip archive ({error}); download it again, or "
              "extract it if another tool can."
          ) from error
        for member in members:
          if not member.endswith("/"):
            self._files.setdefault(member, (path, member))

  def __len__(self) -> int:
    return len(self._files)

  def match(self, pattern: str) -> Iterator[tuple[str, re.Match]]:
    """(path, match) for every file whose path `re.search`es `pattern`, sorted."""
    regex = re.compile(pattern)
    for name in self._files:
      found = regex.search(name)
      if found:
        yield name, found

  def read_bytes(self, name: str) -> bytes:
    """The file's bytes, or a `CrowdDataError` naming it (a member's CRC is checked)."""
    path, member = self._files[name]
    try:
      if member is None:
        return path.read_bytes()
      if path not in self._archives:
        self._archives[path] = zipfile.ZipFile(path)
      return self._archives[path].read(member)
    except _ZIP_ERRORS as error:
      raise CrowdDataError(f"{self.describe(name)}: cannot read it ({error}).") from error

  def describe(self, name: str) -> str:
    """Where a file is, for error messages: a path, or `archive.zip:member`."""
    path, member = self._files[name]
    return str(path) if member is None else f"{path}:{member}"
