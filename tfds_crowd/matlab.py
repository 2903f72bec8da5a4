"""Reading the MATLAB `.mat` annotations of ShanghaiTech and UCF_CC_50 (scipy).

scipy's MAT v5 reader is not hardened against damaged files (its docstring says so):
a single flipped bit in a data element's type code makes it index a 20-slot C table with
that code and crash the whole process with a segmentation fault (seen with scipy
1.17.1; scipy PR #25349, not merged), cells nested deeply enough overflow the C stack,
and a size field can make it allocate an array far larger than the file. So before
scipy sees a v5 file, `check_v5` walks the variables that will be read, element by
element in the order scipy reads them, and refuses one that is not well formed with a
`CrowdDataError` naming the file. Well-formed files pass unchanged (the real UCF_CC_50
and ShanghaiTech files are tested). v4 files are read by scipy's pure-Python reader and
v7.3 (HDF5) files, which scipy cannot read, are refused with a clear message.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Iterable

import numpy as np
import scipy.io

from tfds_crowd.crowd_builder import CrowdDataError

# Data element type codes (miINT8 ...) scipy maps to a NumPy dtype; any other code read
# where it expects numbers or characters indexes a NULL or out-of-range slot.
_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
_INT8, _INT32, _UINT32, _MATRIX, _COMPRESSED, _UTF8 = 1, 5, 6, 14, 15, 16
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE, _FUNCTION, _OPAQUE = 1, 2, 3, 4, 5, 16, 17
_NUMERIC_CLASSES = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS
# Far beyond any annotation (the densest NWPU image has 20,033 heads), far below harm.
MAX_ELEMENTS = 1 << 25
MAX_DECOMPRESSED_BYTES = 256 << 20
MAX_DEPTH = 32
_HEADER_PREFIX = 1 << 16  # enough decompressed bytes to read any variable's header


class _Malformed(Exception):
  """A structural fault found by the walk; `check_v5` adds the file's name."""


class _Stream:
  """Sequential reads of MAT v5 elements, as scipy's `VarReader5` does them."""

  def __init__(self, data: bytes, pos: int, order: str):
    self.data, self.pos, self.order = data, pos, order

  def remaining(self) -> int:
    return len(self.data) - self.pos

  def take(self, size: int) -> bytes:
    if size > self.remaining():
      raise _Malformed(
          f"truncated: {size} bytes needed at offset {self.pos}, {max(self.remaining(), 0)} left"
      )
    chunk = self.data[self.pos : self.pos + size]
    self.pos += size
    return chunk

  def u32(self) -> tuple[int, int]:
    return struct.unpack(self.order + "II", self.take(8))

  def element(self, max_bytes: int | None = None) -> tuple[int, bytes]:
    """(type code, payload) of one data element, full or small (SDE) format."""
    tag = self.take(8)
    mdtype = struct.unpack(self.order + "I", tag[:4])[0]
    if mdtype >> 16:  # small data element: count and type in the first word
      count, mdtype = mdtype >> 16, mdtype & 0xFFFF
      if count > 4:
        raise _Malformed(f"small data element of {count} bytes at offset {self.pos - 8}")
      return mdtype, tag[4 : 4 + count]
    count = struct.unpack(self.order + "I", tag[4:])[0]
    if max_bytes is not None and count > max_bytes:
      raise _Malformed(f"element of {count} bytes at offset {self.pos - 8}, at most {max_bytes}")
    payload = self.take(count)
    self.pos += -count % 8  # padding to the next 8-byte boundary
    return mdtype, payload

  def int8_string(self) -> bytes:
    mdtype, payload = self.element()
    if mdtype == _UTF8 and any(b > 127 for b in payload):
      raise _Malformed("a name that is not ASCII")
    if mdtype not in (_INT8, _UTF8):
      raise _Malformed(f"a name of data type {mdtype}, not int8")
    return payload

  def int32s(self, max_bytes: int) -> tuple[int, ...]:
    mdtype, payload = self.element(max_bytes)
    if mdtype not in (_INT32, _UINT32):
      raise _Malformed(f"sizes of data type {mdtype}, not int32")
    return struct.unpack(f"{self.order}{len(payload) // 4}i", payload[: len(payload) // 4 * 4])

  def header(self) -> tuple[int, bool, tuple[int, ...], bytes]:
    """(class, is_complex, dims, name) of a matrix whose miMATRIX tag was just read."""
    self.take(8)  # the array-flags tag, which scipy skips unread
    flags, _ = self.u32()
    mclass = flags & 0xFF
    if mclass == _OPAQUE:  # no dimensions; `array` refuses it where it is read
      try:
        return mclass, False, (), self.int8_string()
      except _Malformed:  # (older scipy reads no name here)
        return mclass, False, (), b""
    dims = self.int32s(4 * 32)
    return mclass, bool(flags >> 11 & 1), dims, self.int8_string()

  def matrix(self, depth: int):
    """A nested matrix (a cell's or a struct field's value), like `read_mi_matrix`."""
    mdtype, size = self.u32()
    if mdtype != _MATRIX:
      raise _Malformed(f"data type {mdtype} where a matrix must be, at offset {self.pos - 8}")
    if size:  # a zero-byte matrix is MATLAB's [] and has nothing more to read
      self.array(*self.header()[:3], depth)

  def array(self, mclass: int, is_complex: bool, dims: tuple[int, ...], depth: int):
    """Checks the contents of a matrix, like scipy's `array_from_header`."""
    if depth > MAX_DEPTH:
      raise _Malformed(f"cells or structs nested more than {MAX_DEPTH} deep")
    if any(d < 0 for d in dims):
      raise _Malformed(f"negative dimensions {list(dims)}")
    size = math.prod(dims)
    if size > MAX_ELEMENTS:
      raise _Malformed(f"an array of {size} elements (dimensions {list(dims)})")
    if mclass in _NUMERIC_CLASSES:
      if is_complex:  # (loadmat's mat_dtype would drop the imaginary part)
        raise _Malformed("complex numbers (annotations are real)")
      mdtype, payload = self.element()
      if mdtype not in _ITEMSIZE:
        raise _Malformed(f"numbers of unknown data type {mdtype}")
      if len(payload) // _ITEMSIZE[mdtype] != size:
        raise _Malformed(
            f"an array of dimensions {list(dims)} holding "
            f"{len(payload) // _ITEMSIZE[mdtype]} values"
        )
    elif mclass == _CHAR:
      mdtype, payload = self.element()
      if payload and mdtype not in _ITEMSIZE:
        raise _Malformed(f"characters of unknown data type {mdtype}")
      if not payload and size > 1 << 20:
        raise _Malformed(f"an empty string of declared length {size}")
    elif mclass == _CELL:
      if 8 * size > self.remaining():
        raise _Malformed(f"a cell array of {size} elements in {self.remaining()} bytes")
      for _ in range(size):
        self.matrix(depth + 1)
    elif mclass in (_STRUCT, _OBJECT):
      if mclass == _OBJECT:
        self.int8_string()  # class name
      lengths = self.int32s(4)
      if len(lengths) != 1 or lengths[0] <= 0:
        raise _Malformed(f"struct field-name length {list(lengths)}")
      fields = len(self.int8_string()) // lengths[0]
      if 8 * size * fields > self.remaining():
        raise _Malformed(f"a struct array of {size} x {fields} fields in {self.remaining()} bytes")
      for _ in range(size * fields):
        self.matrix(depth + 1)
    elif mclass == _FUNCTION:
      self.matrix(depth + 1)
    elif mclass == _SPARSE:
      raise _Malformed("a sparse matrix (annotations are dense arrays)")
    elif mclass == _OPAQUE:
      raise _Malformed("an opaque (MATLAB object or function workspace) variable")
    else:
      raise _Malformed(f"unknown MATLAB class {mclass}")


def _inflate(payload: bytes, limit: int, complete: bool) -> bytes:
  inflater = zlib.decompressobj()
  try:
    data = inflater.decompress(payload, limit + 1)
  except zlib.error as error:
    raise _Malformed(f"corrupt compressed data ({error})") from None
  if complete and len(data) > limit:
    raise _Malformed(f"a variable that decompresses to more than {limit >> 20} MiB")
  return data


def mat_version(data: bytes) -> int | None:
  """The major version scipy reads `data` as (its `_get_matfile_version` test): 0 for
  v4, 1 for v5 (MATLAB 5 to 7.2), 2 for v7.3 (HDF5); None when it cannot tell."""
  if len(data) < 128:
    return 0 if len(data) >= 4 and 0 in data[:4] else None
  if 0 in data[:4]:
    return 0
  return data[124 + int(data[126] == ord("I"))]


def check_v5(data: bytes, where: str, variables: Iterable[str] | None = None) -> None:
  """Raises `CrowdDataError` unless the variables scipy will read from the v5 file
  `data` (all of them, or those named in `variables`) are well formed."""
  order = "<" if data[126:128] == b"IM" else ">"
  wanted = None if variables is None else set(variables)
  pos = 128
  try:
    while pos < len(data) and (wanted is None or wanted):
      stream = _Stream(data, pos, order)
      mdtype, size = stream.u32()
      if not size:
        raise _Malformed(f"an empty element at offset {pos}")
      following, payload = stream.pos + size, None
      if mdtype == _COMPRESSED:
        # A variable's header is at its start: inflate only that unless it is read.
        payload = data[stream.pos : following]
        stream = _Stream(_inflate(payload, _HEADER_PREFIX, complete=False), 0, order)
        mdtype, _ = stream.u32()
      if mdtype != _MATRIX:
        raise _Malformed(f"data type {mdtype} where a variable must be, at offset {pos}")
      mclass, is_complex, dims, name = stream.header()
      name = name.decode("latin1")
      if wanted is None or name in wanted:
        if payload is not None:
          stream = _Stream(_inflate(payload, MAX_DECOMPRESSED_BYTES, complete=True), 8, order)
          stream.header()
        stream.array(mclass, is_complex, dims, depth=0)
        if wanted is not None:
          wanted.discard(name)
      pos = following
  except _Malformed as error:
    raise CrowdDataError(f"{where}: damaged or unusable MATLAB file: {error}.") from None


def load_mat(data: bytes, where: str, variables: Iterable[str] | None = None) -> dict:
  """The variables of a `.mat` file (those named in `variables`, or all), or a
  `CrowdDataError` naming the file."""
  if not data:
    raise CrowdDataError(f"{where}: the MATLAB file is empty (0 bytes).")
  names = None if variables is None else list(variables)
  version = mat_version(data)
  if version == 1:
    check_v5(data, where, names)
  elif version == 2:
    raise CrowdDataError(
        f"{where}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB "
        "with save(..., '-v7')."
    )
  try:
    # mat_dtype: arrays get their MATLAB class's dtype (a double array MATLAB stored as
    # uint8 loads as float64, a logical one as bool, which `as_points` refuses).
    return scipy.io.loadmat(io.BytesIO(data), variable_names=names, mat_dtype=True)
  except Exception as error:  # scipy raises ValueError, TypeError, MatReadError, ...
    raise CrowdDataError(f"{where}: cannot read the MATLAB file ({error}).") from error


def unwrap(value: np.ndarray) -> np.ndarray:
  """Strips MATLAB's 1x1 cell and struct nesting (`image_info{1}.location` loads as
  object arrays of shape (1, 1) around the numeric array)."""
  while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
    value = value.reshape(-1)[0]
  return value


def struct_field(mat: dict, path: tuple[str, ...], where: str) -> np.ndarray:
  """`mat[path[0]]{1}.path[1]{1}...`, unwrapped; a clear error when absent."""
  value = mat
  for depth, name in enumerate(path):
    if depth:
      value = unwrap(value)
      is_container = isinstance(value, np.ndarray) and (value.dtype.names or value.dtype == object)
      if is_container and value.size != 1:
        raise CrowdDataError(
            f"{where}: {'.'.join(path[:depth])!r} in the MATLAB file is an array of "
            f"{value.size} structs or cells (shape {value.shape}), not one struct."
        )
    try:
      value = value[name]
    except (KeyError, ValueError, IndexError, TypeError):
      raise CrowdDataError(
          f"{where}: no field {'.'.join(path[:depth + 1])!r} in the MATLAB file."
      ) from None
  return unwrap(value)
