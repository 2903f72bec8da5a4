"""Writing a trained counter as one file that runs without this code: ONNX or StableHLO.

The exported function is the inference model of `evaluation.make_count_fn` for pictures
that fill their whole input:

    pictures (batch, H, W, 3) RGB, uint8 (or float32 in 0..255 with input_dtype float32)
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
* StableHLO (`jax.export`): batch, height and width symbolic by default; `height` and
  `width` fix them. Lowered for this machine's platform (`platforms` adds others, e.g.
  cuda). Load with `jax.export.deserialize` (or `runtime.load_exported`).
* ONNX (`jax2onnx`, opset 21): batch symbolic; height and width fixed at export
  (default 768 x 1024), because jax2onnx cannot convert padding whose amount depends on
  a symbolic size. One file, unless the weights pass 1.5 GB (protobuf's limit is 2 GB):
  then they go to `FILE.data` beside it (external data).

The files are written under their final names in a staging folder beside FILE,
checked there (`verification`: the file loaded back and run on a test picture against
the JAX model) and moved into place only then, so a failed export writes nothing and
leaves an earlier export at FILE as it was. A sidecar `FILE.json` records the signature,
the checkpoint, the verification (with the exported model's count on the test picture)
and the sha256 of every file written; `runtime.load_exported` refuses a file whose bytes
changed since.
"""

from __future__ import annotations

import dataclasses
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
from cfrnet_jax.export.runtime import FORMATS, INPUT_DTYPES, Signature, file_sha256, sidecar_path
from cfrnet_jax.export.verification import TINY, Verification, verification_picture, verify
from cfrnet_jax.inference.user_images import ImageSource
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE, pad_multiple
from cfrnet_jax.state import ModelVariables, model_graphdef

# ONNX height x width when none is given: a common camera frame.
DEFAULT_ONNX_SIZE = (768, 1024)
ONNX_OPSET = 21
# The jax2onnx release this exporter is tested with.
JAX2ONNX_VERSION = "0.17.1"
# Weights above this go to FILE.data (a protobuf file cannot exceed 2 GB).
ONNX_SINGLE_FILE_BYTES = 1_500_000_000


@dataclasses.dataclass(frozen=True)
class ExportReport:
  path: Path
  files: tuple[Path, ...]  # every file written (the model, its external data, the sidecar)
  signature: Signature
  step: int
  max_abs_diff: float  # largest |exported - JAX| density value on the test picture
  scale: float  # largest |JAX density| on it
  seconds: float
  count: float  # the exported model's count on the test picture
  picture_size: tuple[int, int]  # (height, width) of the test picture


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


def export(
    workdir: str | Path,
    out: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI flag's name
    step: int | None = None,
    height: int | None = None,
    width: int | None = None,
    input_dtype: str = "uint8",
    platforms: Sequence[str] = (),
    verify_picture: ImageSource | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> ExportReport:
  """Exports `workdir`'s checkpoint at `step` (default: the best, else the latest, as
  predict mode picks) to `out` and verifies the file (module docstring)."""
  config, step, variables = checkpointing.restore_model(workdir, step, config)
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
    verify_picture: ImageSource | None = None,
) -> ExportReport:
  """`export` for variables in memory (`step` only goes into the sidecar). The test
  picture is prepared first (`verification_picture`), so that a picture that cannot be
  read fails before the conversion."""
  signature = _signature(format, input_dtype, height, width)
  picture = verification_picture(config, signature, verify_picture)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  infer = inference_function(config, variables)
  logging.info(
      "Exporting %s to %s: input %s %s ...", format, out, signature.input_shape(), input_dtype
  )
  files, verification = _write_verified(infer, signature, out, platforms, picture, config, step)
  report = ExportReport(
      path=out,
      files=files,
      signature=signature,
      step=step,
      max_abs_diff=verification.max_abs_diff,
      scale=verification.scale,
      seconds=time.perf_counter() - start,
      count=verification.count,
      picture_size=verification.picture_size,
  )
  logging.info(
      "Exported %s (%.1f MB) in %.0f s; verified on a %dx%d picture: max |difference| %.2e "
      "(%.1e of the output scale %.3g), count %.4g.",
      out,
      sum(path.stat().st_size for path in files[:-1]) / 1e6,
      report.seconds,
      *verification.picture_size,
      verification.max_abs_diff,
      verification.max_abs_diff / max(verification.scale, TINY),
      verification.scale,
      verification.count,
  )
  return report


def _write_verified(
    infer, signature: Signature, out: Path, platforms, picture: np.ndarray, config, step: int
) -> tuple[tuple[Path, ...], Verification]:
  """(the files at `out`, the verification). They are written and verified under their
  final names in a staging folder beside `out`, then moved into place: a failed export
  leaves an earlier one at `out` as it was."""
  staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export-tmp", dir=out.parent))
  try:
    staged = staging / out.name
    if signature.format == "onnx":
      files = _export_onnx(infer, signature, staged)
    else:
      files = _export_stablehlo(infer, signature, staged, platforms)
    verification = verify(infer, staged, signature, picture)
    files.append(_write_sidecar(staged, files, signature, config, step, verification))
    for old in (out, out.with_name(out.name + ".data"), sidecar_path(out)):
      old.unlink(missing_ok=True)
    final = tuple(out.with_name(path.name) for path in files)
    for path, target in zip(files, final):
      os.replace(path, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final, verification


def _write_sidecar(
    path: Path, files, signature: Signature, config, step: int, verification: Verification
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
                  "picture_size": list(verification.picture_size),
                  "max_abs_diff": verification.max_abs_diff,
                  "scale": verification.scale,
                  "count": verification.count,
                  "tolerance": verification.tolerance,
              },
              "files": {file.name: file_sha256(file) for file in files},
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
