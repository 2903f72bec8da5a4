"""The export command: a training run's checkpoint -> a verified ONNX or StableHLO file.

    python -m cfrnet_jax.export --workdir runs/shha --format onnx --out shha.onnx
    python -m cfrnet_jax.export --workdir runs/shha --format stablehlo --out shha.stablehlo

`exporter.export` does the work. `--verify_picture PATH` verifies on that picture instead
of the test pattern, loaded as predict mode loads it with the run's config
(`verification.verification_picture`). Errors a user can fix (a missing or damaged run, a picture
that cannot be read, a failed verification) end the command with status 1 and one line.
"""

from __future__ import annotations

from absl import app, flags, logging

from cfrnet_jax import checkpoint_repair
from cfrnet_jax.export.exporter import export
from cfrnet_jax.export.runtime import FORMATS, INPUT_DTYPES
from cfrnet_jax.export.verification import ExportVerificationError

flags.DEFINE_string("workdir", None, "Training workdir whose checkpoint to export.", required=True)
flags.DEFINE_string("out", None, "The exported file.", required=True)
flags.DEFINE_enum("format", "onnx", list(FORMATS), "onnx (onnxruntime) or stablehlo (jax.export).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the best, else the latest).")
flags.DEFINE_integer("height", None, "Fixed picture height (default: symbolic; ONNX 768).")
flags.DEFINE_integer("width", None, "Fixed picture width (default: symbolic; ONNX 1024).")
flags.DEFINE_enum("input_dtype", "uint8", list(INPUT_DTYPES), "Pictures' dtype (0..255).")
flags.DEFINE_list("platforms", [], "stablehlo: platforms besides this one, e.g. cuda,tpu.")
flags.DEFINE_string(
    "verify_picture",
    None,
    "A picture to verify on, loaded as predict mode loads it (default: a test pattern).",
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    export(
        FLAGS.workdir,
        FLAGS.out,
        format=FLAGS.format,
        step=FLAGS.step,
        height=FLAGS.height,
        width=FLAGS.width,
        input_dtype=FLAGS.input_dtype,
        platforms=FLAGS.platforms,
        verify_picture=FLAGS.verify_picture,
    )
  except (
      ExportVerificationError,
      checkpoint_repair.DamagedCheckpointError,
      OSError,
      ValueError,
  ) as error:
    logging.error("%s", error)
    raise SystemExit(1) from None


if __name__ == "__main__":
  app.run(main)
