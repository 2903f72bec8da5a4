"""A trained counter as one file that runs without this code: ONNX or StableHLO.

    python -m cfrnet_jax.export --workdir runs/shha --format onnx --out shha.onnx
    python -m cfrnet_jax.export --workdir runs/shha --format stablehlo --out shha.stablehlo

The exported function is the inference model of `evaluation.make_count_fn` for pictures
that fill their whole input:

    pictures (batch, H, W, 3) RGB, uint8 (or float32 in 0..255 with --input_dtype float32)
      -> density (batch, ceil(H/4), ceil(W/4)) float32, people per 4x4-pixel cell
         count   (batch,) float32, the sum of each density map.

Parameters, BatchNorm running statistics (evaluation mode) and the config's input
normalisation are constants of the graph; it runs in float32 with the plain XLA
attention (`model.attention = "xla"`), whatever the run trained with. The model pads
each side to a multiple of `pad_multiple` (128 for the paper's windows) inside the graph
and crops every output back, so any H and W work. What the graph does not do is what
`CrowdCounter` does around the model: shrinking a picture to `data.max_side`, cutting
large ones into tiles, head points and regions. The sidecar file records `max_side`.

Shapes each format accepts:
* StableHLO (`jax.export`): batch, height and width symbolic by default; `--height` and
  `--width` fix them. Lowered for this machine's platform (`--platforms` adds others,
  e.g. cuda). Load with `jax.export.deserialize` (or `load_exported`).
* ONNX (`jax2onnx`, opset 21): batch symbolic; height and width fixed at export
  (`--height`, `--width`, default 768 x 1024), because jax2onnx cannot convert padding
  whose amount depends on a symbolic size. One file, unless the weights pass 1.5 GB
  (protobuf's limit is 2 GB): then they go to `FILE.data` beside it (external data).

Verification: at the end of every export the file is loaded back (onnxruntime for ONNX,
`jax.export.deserialize` for StableHLO) and run on a test picture; its density map must
agree with the JAX model's to `VERIFY_TOLERANCE` of the output scale (the largest density
value), and its counts to as much per cell, else `ExportVerificationError` says by how
much and nothing is written (an earlier export at FILE stays as it was). A
sidecar `FILE.json` records the signature, the checkpoint, the verification and the
sha256 of every file written; `load_exported` refuses a file whose bytes changed since.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as std_logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from cfrnet_jax import checkpointing
from cfrnet_jax.data.device_ops import normalize_images
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, pad_multiple
from cfrnet_jax.state import ModelVariables, model_graphdef

FORMATS = ("onnx", "stablehlo")
INPUT_DTYPES = ("uint8", "float32")
# Largest |exported - JAX| density difference allowed, as a fraction of the output scale.
VERIFY_TOLERANCE = 1e-4
# ONNX height x width when none is given: a common camera frame.
DEFAULT_ONNX_SIZE = (768, 1024)
# Test picture of a symbolic-size export (not a multiple of 128, so padding is exercised).
DEFAULT_VERIFY_SIZE = (300, 420)
ONNX_OPSET = 21
TINY = 1e-30  # the output scale of an all-zero density map, for relative figures
# The jax2onnx release this exporter is tested with.
JAX2ONNX_VERSION = "0.17.1"
# Weights above this go to FILE.data (a protobuf file cannot exceed 2 GB).
ONNX_SINGLE_FILE_BYTES = 1_500_000_000


class ExportVerificationError(RuntimeError):
  """The exported model's output differs from the JAX model's beyond the tolerance."""


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


@dataclasses.dataclass(frozen=True)
class ExportReport:
  path: Path
  files: tuple[Path, ...]  # every file written (the model, its external data, the sidecar)
  signature: Signature
  step: int
  max_abs_diff: float  # largest |exported - JAX| density value on the test picture
  scale: float  # largest |JAX density| on it
  seconds: float


def inference_function(config: ml_collections.ConfigDict, variables: ModelVariables):
  """pictures (b, H, W, 3) -> (density (b, ceil(H/4), ceil(W/4)), count (b,)), the
  variables closed over as constants, in evaluation mode, float32, XLA attention."""
  model_config = export_model_config(config.model)
  graphdef = model_graphdef(model_config)
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def infer(pictures):
    model = nnx.merge(graphdef, variables.params, variables.batch_stats)
    model.eval()
    density = model(normalize_images(pictures, None, mean, std))["density"][..., 0]
    density = density.astype(jnp.float32)
    return density, jnp.sum(density, axis=(1, 2))

  return infer


def export_model_config(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The trained model's config as exported: float32 and plain XLA attention (cuDNN's
  or a TPU kernel would tie the file to one platform); the weights are unchanged."""
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  model_config.dtype = "float32"
  model_config.attention = "xla"
  model_config.remat = "none"
  return model_config


def sample_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
  """(height, width, 3) uint8: smooth shapes plus noise, deterministic for a seed, so the
  verification covers the model's whole input range and no two cells look alike."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
  picture = np.zeros((height, width, 3), np.float32)
  for channel in range(3):
    fy, fx, phase = rng.uniform(0.01, 0.2, 2).tolist() + [rng.uniform(0, 6.3)]
    picture[..., channel] = 127.5 * (1 + np.sin(fy * rows + phase) * np.cos(fx * cols))
  picture += rng.normal(0, 20, picture.shape)
  return np.clip(picture, 0, 255).astype(np.uint8)


def export(
    workdir: str | Path,
    out: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI flag's name
    step: int | None = None,
    height: int | None = None,
    width: int | None = None,
    input_dtype: str = "uint8",
    platforms: Sequence[str] = (),
    verify_picture: np.ndarray | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> ExportReport:
  """Exports `workdir`'s checkpoint at `step` (default: the best, else the latest, as
  predict mode picks) to `out` and verifies the file (module docstring)."""
  if config is None:
    config = checkpointing.load_run_config(workdir)
  else:
    checkpointing.check_counting_config(workdir, config)
  step, variables = checkpointing.restore_variables(workdir, config.model, step)
  logging.info("Restored step %d of %s.", step, workdir)
  return export_variables(
      config,
      variables,
      out,
      format=format,
      step=step,
      height=height,
      width=width,
      input_dtype=input_dtype,
      platforms=platforms,
      verify_picture=verify_picture,
  )


def export_variables(
    config: ml_collections.ConfigDict,
    variables: ModelVariables,
    out: str | Path,
    format: str = "onnx",  # noqa: A002
    step: int = -1,
    height: int | None = None,
    width: int | None = None,
    input_dtype: str = "uint8",
    platforms: Sequence[str] = (),
    verify_picture: np.ndarray | None = None,
) -> ExportReport:
  """`export` for variables in memory (`step` only goes into the sidecar)."""
  signature = _signature(format, input_dtype, height, width)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  infer = inference_function(config, variables)
  logging.info(
      "Exporting %s to %s: input %s %s ...", format, out, signature.input_shape(), input_dtype
  )
  # Written and verified under their final names in a staging folder beside `out`, then
  # moved into place: a failed export leaves an earlier one at `out` as it was.
  staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export-tmp", dir=out.parent))
  try:
    staged = staging / out.name
    if format == "onnx":
      files = _export_onnx(infer, signature, staged)
    else:
      files = _export_stablehlo(infer, signature, staged, platforms)
    picture = _verify_picture(signature, verify_picture)
    max_abs_diff, scale = _verify(infer, staged, signature, picture)
    files.append(
        _write_sidecar(staged, files, signature, config, step, picture, max_abs_diff, scale)
    )
    for old in (out, out.with_name(out.name + ".data"), sidecar_path(out)):
      old.unlink(missing_ok=True)
    final = [out.with_name(path.name) for path in files]
    for path, target in zip(files, final):
      os.replace(path, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  report = ExportReport(
      out, tuple(final), signature, step, max_abs_diff, scale, time.perf_counter() - start
  )
  logging.info(
      "Exported %s (%.1f MB) in %.0f s; verified on a %dx%d picture: max |difference| %.2e "
      "(%.1e of the output scale %.3g).",
      out,
      sum(path.stat().st_size for path in final[:-1]) / 1e6,
      report.seconds,
      *picture.shape[:2],
      max_abs_diff,
      max_abs_diff / max(scale, TINY),
      scale,
  )
  return report


def _write_sidecar(
    path: Path, files, signature: Signature, config, step, picture, max_abs_diff, scale
) -> Path:
  sidecar = sidecar_path(path)
  sidecar.write_text(
      json.dumps(
          {
              "format": signature.format,
              "input": {
                  "name": "pictures",
                  "shape": signature.input_shape(),
                  "dtype": signature.input_dtype,
              },
              "outputs": {
                  "density": ["batch", "ceil(height/4)", "ceil(width/4)"],
                  "count": ["batch"],
              },
              "density_stride": DENSITY_STRIDE,
              "pad_multiple": pad_multiple(config.model),
              "max_side": int(config.data.max_side or 0),
              "step": step,
              "verification": {
                  "picture_size": list(picture.shape[:2]),
                  "max_abs_diff": max_abs_diff,
                  "scale": scale,
                  "tolerance": VERIFY_TOLERANCE,
              },
              "files": {file.name: _sha256(file) for file in files},
          },
          indent=2,
      )
  )
  return sidecar


def _signature(format: str, input_dtype: str, height, width) -> Signature:  # noqa: A002
  if format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
  if input_dtype not in INPUT_DTYPES:
    raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}.")
  if (height is None) != (width is None):
    raise ValueError("Give both height and width (a fixed size) or neither.")
  for name, size in (("height", height), ("width", width)):
    if size is not None and size < 1:
      raise ValueError(f"{name} must be at least 1, got {size}.")
  if format == "onnx" and height is None:
    height, width = DEFAULT_ONNX_SIZE
  return Signature(format, input_dtype, None, height, width)


def _export_onnx(infer, signature: Signature, out: Path) -> list[Path]:
  try:
    from jax2onnx import to_onnx
  except ImportError as error:
    raise ImportError(
        f"ONNX export needs jax2onnx ({error}): pip install -e '.[export]' && "
        f"pip install --no-deps jax2onnx=={JAX2ONNX_VERSION} (docs/export.md says why --no-deps)."
    ) from error
  import onnx

  # jax2onnx logs a traceback for each of its example plugins whose library (equinox,
  # dm_pix) is absent, and onnx_ir a warning for each untyped constant it skips.
  for name in ("jax2onnx", "jax2onnx.plugins.plugin_system", "onnx_ir"):
    std_logging.getLogger(name).setLevel(std_logging.ERROR)
  model = to_onnx(
      infer,
      inputs=[
          jax.ShapeDtypeStruct(
              ("batch", signature.height, signature.width, 3), jnp.dtype(signature.input_dtype)
          )
      ],
      input_names=["pictures"],
      output_names=["density", "count"],
      model_name="cfrnet",
      opset=ONNX_OPSET,
  )
  # jax2onnx annotates some intermediate values with channel-first shapes that the NHWC
  # graph does not have; onnxruntime warns about each and infers the shapes itself.
  del model.graph.value_info[:]
  data = out.with_name(out.name + ".data")
  data.unlink(missing_ok=True)
  weights = sum(len(tensor.raw_data) for tensor in model.graph.initializer)
  onnx.save_model(
      model,
      str(out),
      save_as_external_data=weights > ONNX_SINGLE_FILE_BYTES,
      all_tensors_to_one_file=True,
      location=data.name,
  )
  return [out] + ([data] if data.exists() else [])


def _export_stablehlo(infer, signature: Signature, out: Path, platforms) -> list[Path]:
  here = jax.default_backend()
  platforms = tuple(dict.fromkeys((here, *platforms)))
  if signature.height is None:
    shape = jax.export.symbolic_shape("batch, height, width, 3")
  else:
    shape = (*jax.export.symbolic_shape("batch"), signature.height, signature.width, 3)
  exported = jax.export.export(jax.jit(infer), platforms=platforms)(
      jax.ShapeDtypeStruct(shape, jnp.dtype(signature.input_dtype))
  )
  out.write_bytes(exported.serialize())
  return [out]


def _verify_picture(signature: Signature, picture: np.ndarray | None) -> np.ndarray:
  """The test picture at the exported size (resized when a fixed size differs)."""
  size = (
      (signature.height, signature.width) if signature.height is not None else DEFAULT_VERIFY_SIZE
  )
  if picture is None:
    return sample_picture(*size)
  picture = np.asarray(picture, np.uint8)
  if signature.height is not None and picture.shape[:2] != size:
    from PIL import Image

    picture = np.asarray(Image.fromarray(picture).resize(size[::-1], Image.BILINEAR))
  return picture


def _verify(infer, out: Path, signature: Signature, picture: np.ndarray) -> tuple[float, float]:
  """(max |exported - JAX| density, scale); raises ExportVerificationError beyond the
  tolerance."""
  batch = picture[None].astype(signature.input_dtype)
  expected, expected_count = jax.device_get(jax.jit(infer)(batch))
  exported = ExportedModel(out, signature=signature, check_files=False)
  density, count = exported(batch)
  if density.shape != expected.shape or count.shape != expected_count.shape:
    raise ExportVerificationError(
        f"The exported {out} returned density {density.shape} and count {count.shape}; "
        f"the JAX model returns {expected.shape} and {expected_count.shape}."
    )
  scale = float(np.max(np.abs(expected)))
  max_abs_diff = float(np.max(np.abs(density.astype(np.float64) - expected)))
  where = f"on a {picture.shape[0]}x{picture.shape[1]} test picture"
  if not np.isfinite(max_abs_diff) or max_abs_diff > VERIFY_TOLERANCE * max(scale, TINY):
    raise ExportVerificationError(
        f"The exported {out.name} does not reproduce the JAX model {where}: its density "
        f"differs by up to {max_abs_diff:.3g}, {max_abs_diff / max(scale, TINY):.3g} of the "
        f"output scale {scale:.3g} (allowed: {VERIFY_TOLERANCE:g}). Nothing was written."
    )
  # The count: each cell may differ by the tolerance, so the sum by that much per cell.
  count_diff = float(np.max(np.abs(count.astype(np.float64) - expected_count)))
  allowed = VERIFY_TOLERANCE * max(float(np.abs(expected).sum()), TINY)
  if not np.isfinite(count_diff) or count_diff > allowed:
    raise ExportVerificationError(
        f"The exported {out.name} returns a count {count_diff:.3g} away from the JAX model's "
        f"{where} (allowed: {allowed:.3g}). Nothing was written."
    )
  return max_abs_diff, scale


def sidecar_path(path: str | Path) -> Path:
  path = Path(path)
  return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
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
  and each input against the signature (ValueError naming what differs)."""

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
      if _sha256(path) != digest:
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
  return ExportedModel(path)


def main(argv):
  del argv
  from cfrnet_jax.inference.user_images import load_image

  try:
    picture = None
    if FLAGS.verify_picture:
      picture = load_image(FLAGS.verify_picture, np.zeros(3, np.uint8), 250.0)
    export(
        FLAGS.workdir,
        FLAGS.out,
        format=FLAGS.format,
        step=FLAGS.step,
        height=FLAGS.height,
        width=FLAGS.width,
        input_dtype=FLAGS.input_dtype,
        platforms=FLAGS.platforms,
        verify_picture=picture,
    )
  except (
      ExportVerificationError,
      checkpointing.DamagedCheckpointError,
      OSError,
      ValueError,
  ) as error:
    logging.error("%s", error)
    raise SystemExit(1) from None


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string(
      "workdir", None, "Training workdir whose checkpoint to export.", required=True
  )
  flags.DEFINE_string("out", None, "The exported file.", required=True)
  flags.DEFINE_enum(
      "format", "onnx", list(FORMATS), "onnx (onnxruntime) or stablehlo (jax.export)."
  )
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the best, else the latest).")
  flags.DEFINE_integer("height", None, "Fixed picture height (default: symbolic; ONNX 768).")
  flags.DEFINE_integer("width", None, "Fixed picture width (default: symbolic; ONNX 1024).")
  flags.DEFINE_enum("input_dtype", "uint8", list(INPUT_DTYPES), "Pictures' dtype (0..255).")
  flags.DEFINE_list("platforms", [], "stablehlo: platforms besides this one, e.g. cuda,tpu.")
  flags.DEFINE_string("verify_picture", None, "A picture to verify on (default: a test pattern).")
  FLAGS = flags.FLAGS
  app.run(main)
