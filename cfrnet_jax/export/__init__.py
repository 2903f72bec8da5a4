"""A trained counter as one file that runs without this code: ONNX or StableHLO.

    python -m cfrnet_jax.export --workdir runs/shha --format onnx --out shha.onnx
    python -m cfrnet_jax.export --workdir runs/shha --format stablehlo --out shha.stablehlo

    from cfrnet_jax.export import load_exported
    density, count = load_exported("shha.onnx")(pictures)

Split so that running an exported file needs none of the exporting code:
* `exporter`: the checkpoint's inference function converted and written with its
  sidecar (`export`, `export_variables`);
* `verification`: the written file checked against the JAX model on a test picture,
  a given picture prepared as predict mode prepares it (`verification_picture`);
* `runtime`: the file loaded back and checked (`ExportedModel`, `load_exported`);
* `__main__`: the command line.
docs/export.md describes the formats, their limits and the verification.
"""

from cfrnet_jax.export.exporter import (
    DEFAULT_ONNX_SIZE,
    ExportReport,
    export,
    export_model_config,
    export_variables,
    inference_function,
)
from cfrnet_jax.export.runtime import (
    FORMATS,
    INPUT_DTYPES,
    ExportedFileError,
    ExportedModel,
    Signature,
    load_exported,
    sidecar_path,
)
from cfrnet_jax.export.verification import (
    DEFAULT_VERIFY_SIZE,
    VERIFY_TOLERANCE,
    ExportVerificationError,
    Verification,
    sample_picture,
    verification_picture,
)

__all__ = [
    "DEFAULT_ONNX_SIZE",
    "DEFAULT_VERIFY_SIZE",
    "FORMATS",
    "INPUT_DTYPES",
    "VERIFY_TOLERANCE",
    "ExportReport",
    "ExportVerificationError",
    "ExportedFileError",
    "ExportedModel",
    "Signature",
    "Verification",
    "export",
    "export_model_config",
    "export_variables",
    "inference_function",
    "load_exported",
    "sample_picture",
    "sidecar_path",
    "verification_picture",
]
