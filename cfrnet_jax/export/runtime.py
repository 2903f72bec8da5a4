"""Running an exported counter: `ExportedModel` loads an ONNX or StableHLO file back.

    model = load_exported("shha.onnx")       # or a .stablehlo file
    density, count = model(pictures)         # (b, H, W, 3) or one (H, W, 3) picture

What the file takes is read from its sidecar `FILE.json` (written by `exporter`), whose
sha256 of every file written is checked first, so that a file changed since export (a
flipped bit, a truncated copy) is refused by name rather than run. Each call checks its
input against the signature and says what the file takes when it differs. Needs
onnxruntime for ONNX and JAX for StableHLO, nothing else of this package's training or
inference code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import numpy as np

FORMATS = ("onnx", "stablehlo")
INPUT_DTYPES = ("uint8", "float32")


class ExportedFileError(ValueError):
  """An exported file that is missing, changed since export or not readable."""


@dataclasses.dataclass(frozen=True)
class Signature:
  """What an exported model accepts: None for a symbolic (any) size."""

  format: str
  input_dtype: str
  batch: int | None
  height: int | None
  width: int | None

  def input_shape(self) -> list:
    names = ("batch", "height", "width")
    sizes = (self.batch, self.height, self.width)
    return [name if size is None else size for name, size in zip(names, sizes)] + [3]


def sidecar_path(path: str | Path) -> Path:
  """`FILE.json` beside an exported `FILE`."""
  path = Path(path)
  return path.with_name(path.name + ".json")


def file_sha256(path: Path) -> str:
  """The hex sha256 of a file, read a megabyte at a time."""
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class ExportedModel:
  """An exported file, loaded and callable without the training code:

      model = ExportedModel("shha.onnx")       # or a .stablehlo file
      density, count = model(pictures)         # (b, H, W, 3) or one (H, W, 3) picture

  Checks the files against the sidecar's sha256 (a file changed since export is refused)
  and each input against the signature (ValueError naming what differs). The exporter
  passes the `signature` it staged and `check_files=False` to run a file before its
  sidecar exists."""

  def __init__(
      self, path: str | Path, signature: Signature | None = None, check_files: bool = True
  ):
    self.path = Path(path)
    if not self.path.is_file():
      raise ExportedFileError(f"{self.path} does not exist.")
    if signature is None or check_files:
      signature = self._read_sidecar()
    self.signature = signature
    if signature.format == "onnx":
      self._run = self._load_onnx()
    else:
      self._run = self._load_stablehlo()

  def _read_sidecar(self) -> Signature:
    sidecar = sidecar_path(self.path)
    try:
      meta = json.loads(sidecar.read_text())
      shape, files = meta["input"]["shape"], meta["files"]
      signature = Signature(
          meta["format"],
          meta["input"]["dtype"],
          *(size if isinstance(size, int) else None for size in shape[:3]),
      )
      if signature.format not in FORMATS or signature.input_dtype not in INPUT_DTYPES:
        raise ValueError(f"format {signature.format!r}, dtype {signature.input_dtype!r}")
      if not isinstance(files, dict) or self.path.name not in files:
        raise ValueError(f"its file list does not name {self.path.name}")
    except FileNotFoundError as error:
      raise ExportedFileError(
          f"{sidecar} is missing: it is written by cfrnet_jax.export beside {self.path.name} "
          f"and says what the file accepts."
      ) from error
    except (ValueError, KeyError, TypeError, IndexError) as error:
      raise ExportedFileError(
          f"{sidecar} is damaged or belongs to another file ({error})."
      ) from error
    for name, digest in files.items():
      path = self.path.with_name(name)
      if not path.is_file():
        raise ExportedFileError(f"{path} is missing (it belongs to the export {self.path}).")
      if file_sha256(path) != digest:
        raise ExportedFileError(
            f"{path} has changed since it was exported (its sha256 differs from the one "
            f"in {sidecar.name}); export it again."
        )
    return signature

  def _load_onnx(self):
    import onnxruntime

    try:
      session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
    except Exception as error:
      raise ExportedFileError(f"onnxruntime cannot load {self.path}: {error}") from error
    (given,) = session.get_inputs()
    onnx_type = given.type.removeprefix("tensor(").rstrip(")")  # "uint8", "float"
    self._check_model_input(given.shape, {"float": "float32"}.get(onnx_type, onnx_type))
    return lambda pictures: tuple(session.run(["density", "count"], {"pictures": pictures}))

  def _load_stablehlo(self):
    try:
      exported = jax.export.deserialize(bytearray(self.path.read_bytes()))
    except Exception as error:
      raise ExportedFileError(
          f"{self.path} is not a serialized jax.export module: {error}"
      ) from error
    (given,) = exported.in_avals
    self._check_model_input(given.shape, str(given.dtype))
    return lambda pictures: tuple(np.asarray(x) for x in jax.device_get(exported.call(pictures)))

  def _check_model_input(self, shape, dtype: str) -> None:
    """The file's own input agrees with the signature (a sidecar of another export)."""
    fixed = [size if isinstance(size, int) else None for size in shape]
    expected = [None, self.signature.height, self.signature.width, 3]
    if fixed != expected or dtype != self.signature.input_dtype:
      raise ExportedFileError(
          f"{self.path} takes {list(shape)} {dtype}, not what {sidecar_path(self.path).name} "
          f"says ({self.signature.input_shape()} {self.signature.input_dtype})."
      )

  def check_input(self, pictures: np.ndarray) -> np.ndarray:
    """(b, H, W, 3) pictures in the signature's dtype; ValueError naming what differs."""
    pictures = np.asarray(pictures)
    if pictures.ndim == 3:
      pictures = pictures[None]
    expected = self.signature.input_shape()
    if pictures.ndim != 4 or pictures.shape[-1] != 3:
      raise ValueError(
          f"{self.path.name} takes RGB pictures of shape {expected} (or one of "
          f"{expected[1:]}); got an array of shape {pictures.shape}."
      )
    if 0 in pictures.shape:
      raise ValueError(f"{self.path.name} got an empty array of shape {pictures.shape}.")
    for axis, size in zip(("height", "width"), (self.signature.height, self.signature.width)):
      given = pictures.shape[1 if axis == "height" else 2]
      if size is not None and given != size:
        raise ValueError(
            f"{self.path.name} was exported for pictures of {axis} {size}; got {given} "
            f"(shape {pictures.shape}). Resize the picture, or export with a symbolic size "
            f"(--format stablehlo) or this one (--height/--width)."
        )
    if self.signature.input_dtype == "uint8":
      if pictures.dtype != np.uint8:
        raise ValueError(
            f"{self.path.name} takes uint8 pictures; got {pictures.dtype} (export with "
            f"--input_dtype float32 for float pictures in 0..255)."
        )
    elif not np.issubdtype(pictures.dtype, np.number):
      raise ValueError(f"{self.path.name} takes numeric pictures; got {pictures.dtype}.")
    return np.ascontiguousarray(pictures, dtype=self.signature.input_dtype)

  def __call__(self, pictures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(density (b, ceil(H/4), ceil(W/4)), count (b,)) float32."""
    return self._run(self.check_input(pictures))


def load_exported(path: str | Path) -> ExportedModel:
  """The exported file at `path`, checked against its sidecar (`ExportedModel`)."""
  return ExportedModel(path)
