"""Reading the MATLAB `.mat` annotations of ShanghaiTech and UCF_CC_50 (scipy)."""

from __future__ import annotations

import io

import numpy as np
import scipy.io

from tfds_crowd.crowd_builder import CrowdDataError


def load_mat(data: bytes, where: str) -> dict:
  try:
    return scipy.io.loadmat(io.BytesIO(data))
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
    value = unwrap(value) if depth else value
    try:
      value = value[name]
    except (KeyError, ValueError, IndexError, TypeError):
      raise CrowdDataError(
          f"{where}: no field {'.'.join(path[:depth + 1])!r} in the MATLAB file."
      ) from None
  return unwrap(value)
