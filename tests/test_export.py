"""Export (`cfrnet_jax.export`): ONNX and StableHLO files that reproduce the JAX model."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfrnet_jax import export
from cfrnet_jax.data.geometry import mean_colour
from cfrnet_jax.export import verification
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.state import init_variables
from configs import base, tiny

REPO = Path(__file__).resolve().parents[1]
# ONNX export needs jax2onnx, installed apart (`pip install --no-deps jax2onnx==0.17.1`,
# docs/export.md): without it these tests skip, except in CI, which installs it.
if importlib.util.find_spec("jax2onnx") is None or importlib.util.find_spec("onnxruntime") is None:
  message = "ONNX export needs jax2onnx and onnxruntime (docs/export.md)."
  if os.environ.get("CI"):
    pytest.fail(message, pytrace=False)
  pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_counter():
  return CrowdCounter.from_config(tiny.get_config(), seed=3)


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory, tiny_counter):
  """{format: report} of the tiny model: ONNX at 96x160, StableHLO with symbolic sizes."""
  folder = tmp_path_factory.mktemp("exports")
  config, variables = tiny_counter.config, tiny_counter._variables
  return {
      "onnx": export.export_variables(
          config, variables, folder / "tiny.onnx", format="onnx", height=96, width=160
      ),
      "stablehlo": export.export_variables(
          config, variables, folder / "tiny.stablehlo", format="stablehlo"
      ),
  }


def assert_matches_counter(exported, counter, pictures):
  """The exported density maps and counts equal what `CrowdCounter` (the JAX model, with
  its own padding) gives for each picture, to 1e-4 of the map's largest value."""
  density, count = exported(np.stack(pictures))
  for index, picture in enumerate(pictures):
    expected = counter.predict(picture)
    np.testing.assert_array_equal(density[index].shape, expected.density.shape)
    scale = np.abs(expected.density).max()
    assert np.abs(density[index] - expected.density).max() <= 1e-4 * scale
    assert count[index] == pytest.approx(expected.count, rel=1e-4)


@pytest.mark.parametrize("format", export.FORMATS)
def test_export_is_verified_and_reproduces_the_counter(tiny_exports, tiny_counter, format):
  report = tiny_exports[format]
  assert report.max_abs_diff <= export.VERIFY_TOLERANCE * report.scale
  meta = json.loads(export.sidecar_path(report.path).read_text())
  assert meta["format"] == format and meta["input"]["dtype"] == "uint8"
  model = export.load_exported(report.path)
  # Two pictures in one batch: the batch size is symbolic in both formats.
  pictures = [export.sample_picture(96, 160, seed) for seed in (1, 2)]
  assert_matches_counter(model, tiny_counter, pictures)


def test_onnx_input_is_fixed_size_with_a_symbolic_batch(tiny_exports):
  import onnx

  graph = onnx.load(str(tiny_exports["onnx"].path)).graph
  dims = graph.input[0].type.tensor_type.shape.dim
  assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [96, 160, 3]
  assert [output.name for output in graph.output] == ["density", "count"]


def test_stablehlo_export_runs_at_two_picture_sizes(tiny_exports, tiny_counter):
  model = export.load_exported(tiny_exports["stablehlo"].path)
  assert model.signature.height is None and model.signature.width is None
  for size in ((70, 90), (200, 131)):
    assert_matches_counter(model, tiny_counter, [export.sample_picture(*size, seed=4)])


def test_wrong_inputs_get_clear_errors(tiny_exports):
  model = export.load_exported(tiny_exports["onnx"].path)
  with pytest.raises(ValueError, match="exported for pictures of height 96; got 100"):
    model(np.zeros((1, 100, 160, 3), np.uint8))
  with pytest.raises(ValueError, match=r"RGB pictures of shape \['batch', 96, 160, 3\]"):
    model(np.zeros((1, 96, 160, 4), np.uint8))
  with pytest.raises(ValueError, match="takes uint8 pictures; got float32"):
    model(np.zeros((1, 96, 160, 3), np.float32))
  density, count = model(np.zeros((96, 160, 3), np.uint8))  # one picture: batch of 1
  assert density.shape == (1, 24, 40) and count.shape == (1,)


def test_float_input_export_for_two_platforms_takes_0_to_255_floats(tmp_path, tiny_counter):
  report = export.export_variables(
      tiny_counter.config,
      tiny_counter._variables,
      tmp_path / "float.stablehlo",
      format="stablehlo",
      height=64,
      width=64,
      input_dtype="float32",
      platforms=("cuda",),
  )
  import jax

  assert jax.export.deserialize(bytearray(report.path.read_bytes())).platforms == ("cpu", "cuda")
  picture = export.sample_picture(64, 64, seed=5)
  model = export.load_exported(report.path)
  density, _ = model(picture.astype(np.float64))
  expected = tiny_counter.predict(picture).density
  assert np.abs(density[0] - expected).max() <= 1e-4 * np.abs(expected).max()
  with pytest.raises(ValueError, match="exported for pictures of width 64; got 65"):
    model(np.zeros((2, 64, 65, 3), np.float32))
  with pytest.raises(ValueError, match="got an empty array"):
    model(np.zeros((0, 64, 64, 3), np.float32))


@pytest.mark.parametrize("format", export.FORMATS)
def test_a_changed_or_incomplete_export_is_refused(tmp_path, tiny_exports, format):
  source = tiny_exports[format].path
  path = tmp_path / source.name
  data = bytearray(source.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(export.ExportedFileError, match="sidecar|is missing"):
    export.load_exported(path)
  export.sidecar_path(path).write_text(export.sidecar_path(source).read_text())
  with pytest.raises(export.ExportedFileError, match="has changed since it was exported"):
    export.load_exported(path)
  export.sidecar_path(path).write_text("{not json")
  with pytest.raises(export.ExportedFileError, match="is damaged"):
    export.load_exported(path)
  # An intact pair under new names: the sidecar lists the old name, so it is refused.
  renamed = tmp_path / f"renamed.{format}"
  renamed.write_bytes(source.read_bytes())
  export.sidecar_path(renamed).write_text(export.sidecar_path(source).read_text())
  with pytest.raises(export.ExportedFileError, match=f"does not name renamed.{format}"):
    export.load_exported(renamed)


def test_an_export_that_does_not_reproduce_the_model_fails_and_writes_nothing(
    tmp_path, tiny_counter, tiny_exports, monkeypatch
):
  # An earlier good export at the same path stays as it was.
  source = tiny_exports["onnx"].path
  out = tmp_path / "strict.onnx"
  out.write_bytes(source.read_bytes())
  export.sidecar_path(out).write_text(export.sidecar_path(source).read_text())
  before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
  # onnxruntime's float32 arithmetic differs from XLA's by ~1e-7 of the scale: with no
  # tolerance at all the verification must fail, say by how much, and write nothing.
  monkeypatch.setattr(verification, "VERIFY_TOLERANCE", 0.0)
  with pytest.raises(export.ExportVerificationError, match=r"differs by up to \d"):
    export.export_variables(tiny_counter.config, tiny_counter._variables, out, height=64, width=64)
  assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def transparent_picture(path: Path, height: int, width: int) -> np.ndarray:
  """Writes an RGBA test pattern whose right third is transparent to `path`; returns it
  composited over black (what the export command verified on before it loaded pictures
  as predict mode does)."""
  picture = export.sample_picture(height, width, seed=6)
  alpha = np.full((height, width), 255, np.uint8)
  alpha[:, 2 * width // 3 :] = 0
  Image.fromarray(np.dstack([picture, alpha]), "RGBA").save(path)
  return np.where(alpha[..., None] > 0, picture, 0).astype(np.uint8)


def test_a_verification_picture_is_loaded_and_resized_as_predict_does(
    tmp_path, tiny_counter, tiny_exports
):
  """Transparency over the mean colour and the resize to `data.max_side`: the test
  picture is the one predict counts, and the exported model's count on it is
  `CrowdCounter`'s, which over black it is not."""
  config = tiny.get_config()
  config.data.max_side = 180
  counter = CrowdCounter(config, tiny_counter._variables)
  over_black = transparent_picture(tmp_path / "rgba.png", 150, 210)
  expected = counter.predict(tmp_path / "rgba.png")
  assert expected.image.shape[:2] == (129, 180)
  assert abs(counter.count(over_black) - expected.count) > 1e-3 * abs(expected.count)
  report = tiny_exports["stablehlo"]
  picture = export.verification_picture(config, report.signature, tmp_path / "rgba.png")
  np.testing.assert_array_equal(picture, expected.image)
  _, count = export.load_exported(report.path)(picture)
  assert count[0] == pytest.approx(expected.count, rel=1e-4)


def test_a_fixed_size_export_cuts_or_pads_its_picture_with_the_mean_colour(tiny_counter):
  config = tiny_counter.config
  picture = export.sample_picture(50, 90, seed=7)
  signature = export.Signature("onnx", "uint8", None, 64, 64)
  got = export.verification_picture(config, signature, picture)
  assert got.shape == (64, 64, 3)
  np.testing.assert_array_equal(got[:50], picture[:, :64])
  assert (got[50:] == mean_colour(config.data.mean)).all()
  default = export.verification_picture(config, signature)
  np.testing.assert_array_equal(default, export.sample_picture(64, 64))


def test_bad_export_arguments_are_refused(tmp_path, tiny_counter):
  args = (tiny_counter.config, tiny_counter._variables, tmp_path / "x")
  with pytest.raises(ValueError, match="format must be one of"):
    export.export_variables(*args, format="tflite")
  with pytest.raises(ValueError, match="both height and width"):
    export.export_variables(*args, height=64)


def test_export_command_on_a_trained_run(tmp_path, trained_workdir):
  """The command, verifying on a picture with transparency: loaded with the run's config
  as predict mode loads it, its count in the sidecar is predict's."""
  out = tmp_path / "run.stablehlo"
  picture = tmp_path / "rgba.png"
  transparent_picture(picture, 120, 200)
  result = subprocess.run(
      [sys.executable, "-m", "cfrnet_jax.export", f"--workdir={trained_workdir}",
       "--format=stablehlo", f"--out={out}", f"--verify_picture={picture}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  counter = CrowdCounter.from_checkpoint(trained_workdir)
  expected = counter.predict(picture)
  assert "verified on a {}x{} picture".format(*expected.image.shape[:2]) in result.stderr
  meta = json.loads(export.sidecar_path(out).read_text())
  assert meta["verification"]["count"] == pytest.approx(expected.count, rel=1e-4)
  assert_matches_counter(export.load_exported(out), counter, [export.sample_picture(120, 200)])
  missing = subprocess.run(
      [sys.executable, "-m", "cfrnet_jax.export", f"--workdir={tmp_path / 'none'}",
       f"--out={tmp_path / 'x.onnx'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert missing.returncode == 1 and "config.json does not exist" in missing.stderr


@pytest.mark.slow
@pytest.mark.parametrize("format", export.FORMATS)
def test_paper_size_model_exports(tmp_path, format):
  """The paper's model (VGG16-BN widths, 256 channels) at one small size."""
  config = base.get_config()
  variables = init_variables(config.model, 0)
  report = export.export_variables(
      config, variables, tmp_path / f"paper.{format}", format=format, height=128, width=128
  )
  assert report.max_abs_diff <= export.VERIFY_TOLERANCE * report.scale
  assert report.files[0].stat().st_size > 100e6  # the weights are in the file
