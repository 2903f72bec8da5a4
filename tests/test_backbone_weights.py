"""`config.backbone_weights` (`pretrained.resolve_backbone_weights`): ImageNet weights
fetched from a server on 127.0.0.1, checked, converted and cached; offline and corrupted
downloads refused."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cfrnet_jax.models import pretrained
from cfrnet_jax.state import init_variables
from tests.conftest import tiny_model_config

REPO = Path(__file__).resolve().parents[1]
WIDTHS = tuple(tiny_model_config().vgg_widths)


def vgg_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """VGG16-BN tensors in torchvision's names, at the tiny model's widths, plus a
  classifier tensor that the conversion skips."""
  rng = np.random.default_rng(seed)
  tensors = {
      name: rng.normal(size=shape).astype(np.float32)
      for name, shape in pretrained.expected_tensors(WIDTHS).items()
  }
  tensors["head.fc.weight"] = np.zeros((10, 16), np.float32)
  return tensors


class WeightServer:
  """Serves files on 127.0.0.1 with the headers the Hugging Face hub sends; counts
  requests. `files`: {url path: (body, sha256 to report)}."""

  def __init__(self, files: dict[str, tuple[bytes, str]]):
    self.files, self.requests = files, 0
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # noqa: N802
        server.requests += 1
        if self.path not in server.files:
          self.send_error(404)
          return
        body, digest = server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Linked-ETag", f'"{digest}"')
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def safetensors_bytes(tmp_path) -> bytes:
  save_file(vgg_tensors(), str(tmp_path / "model.safetensors"))
  return (tmp_path / "model.safetensors").read_bytes()


@pytest.fixture
def hub(safetensors_bytes, monkeypatch):
  """A hub on 127.0.0.1 holding timm's file (a good copy and a corrupted one), with
  `imagenet` pointed at it and PyTorch taken as absent."""
  digest = hashlib.sha256(safetensors_bytes).hexdigest()
  corrupted = bytearray(safetensors_bytes)
  corrupted[-100] ^= 0x40
  server = WeightServer(
      {
          "/timm/model.safetensors": (safetensors_bytes, digest),
          "/bad/model.safetensors": (bytes(corrupted), digest),
      }
  )
  monkeypatch.setattr(pretrained, "TIMM_URL", server.url + "/timm/model.safetensors")
  monkeypatch.setattr(pretrained, "_torch_available", lambda: False)
  yield server
  server.close()


def test_imagenet_is_downloaded_converted_and_cached_once(hub, tmp_path):
  cache = tmp_path / "cache"
  path = pretrained.resolve_backbone_weights("imagenet", WIDTHS, cache)
  assert path == cache / pretrained.IMAGENET_FILE and hub.requests == 1
  variables = init_variables(tiny_model_config(), 0)
  params, stats, loaded = pretrained.load_backbone(variables.params, variables.batch_stats, path)
  assert loaded == 78
  kernel = params["backbone"]["layers"][0]["conv"]["kernel"]
  expected = vgg_tensors()["features.0.weight"].transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(np.asarray(kernel), expected)
  assert pretrained.resolve_backbone_weights("ImageNet", WIDTHS, cache) == path
  assert hub.requests == 1  # the second run reads the cache


def test_a_corrupted_download_is_refused_and_not_kept(hub, tmp_path):
  cache = tmp_path / "cache"
  url = hub.url + "/bad/model.safetensors"
  with pytest.raises(pretrained.WeightsError, match="its X-Linked-ETag header says"):
    pretrained.resolve_backbone_weights(url, WIDTHS, cache)
  assert not any(path.is_file() for path in cache.rglob("*"))


def test_offline_imagenet_fails_at_once_naming_the_url_and_the_ways_out(tmp_path, monkeypatch):
  monkeypatch.setattr(pretrained, "TIMM_URL", "http://127.0.0.1:9/timm/model.safetensors")
  monkeypatch.setattr(pretrained, "_torch_available", lambda: False)
  start = time.perf_counter()
  with pytest.raises(pretrained.DownloadError) as error:
    pretrained.resolve_backbone_weights("imagenet", WIDTHS, tmp_path)
  assert time.perf_counter() - start < 10
  message = str(error.value)
  for part in (
      "Cannot download http://127.0.0.1:9/timm/model.safetensors",
      "--config.backbone_weights=/path/to/model.safetensors",
      "--config.backbone_weights=none",
  ):
    assert part in message


def test_torchvision_file_is_checked_by_the_hash_in_its_name(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  path = tmp_path / "weights.pth"
  torch.save({name: torch.from_numpy(value) for name, value in vgg_tensors().items()}, path)
  body = path.read_bytes()
  digest = hashlib.sha256(body).hexdigest()
  server = WeightServer(
      {f"/vgg16_bn-{digest[:8]}.pth": (body, ""), "/vgg16_bn-00000000.pth": (body, "")}
  )
  try:
    monkeypatch.setattr(pretrained, "TORCHVISION_URL", f"{server.url}/vgg16_bn-{digest[:8]}.pth")
    monkeypatch.setattr(pretrained, "_torch_available", lambda: True)
    cached = pretrained.resolve_backbone_weights("imagenet", WIDTHS, tmp_path / "cache")
    assert cached.exists()
    with pytest.raises(pretrained.WeightsError, match="the hash in its name says 00000000"):
      pretrained.resolve_backbone_weights(
          f"{server.url}/vgg16_bn-00000000.pth", WIDTHS, tmp_path / "other"
      )
  finally:
    server.close()


def test_paths_and_none(tmp_path, safetensors_bytes):
  assert pretrained.resolve_backbone_weights("none", WIDTHS, tmp_path) is None
  assert pretrained.resolve_backbone_weights("", WIDTHS, tmp_path) is None
  source = tmp_path / "timm.safetensors"
  source.write_bytes(safetensors_bytes)
  converted = pretrained.resolve_backbone_weights(str(source), WIDTHS, tmp_path / "cache")
  assert converted.suffix == ".msgpack" and converted.parent == tmp_path / "cache" / "converted"
  assert pretrained.resolve_backbone_weights(str(converted), WIDTHS, tmp_path) == converted
  with pytest.raises(pretrained.WeightsError, match="is not a file"):
    pretrained.resolve_backbone_weights(str(tmp_path / "missing.pth"), WIDTHS, tmp_path)
  wrong = tmp_path / "wrong.safetensors"
  save_file({"features.0.weight": np.zeros((1, 1, 3, 3), np.float32)}, str(wrong))
  with pytest.raises(pretrained.WeightsError, match="wrong.safetensors: Missing tensor"):
    pretrained.resolve_backbone_weights(str(wrong), WIDTHS, tmp_path / "cache")


def test_launch_without_weights_stops_before_compiling(tmp_path):
  """Offline, a run that asks for weights ends in seconds with the message, no
  traceback and no checkpoint."""
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, "launch.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
       "--config.backbone_weights=http://127.0.0.1:9/vgg16_bn-6c64b313.pth",
       f"--config.data.data_dir={tmp_path / 'tfds'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "CFRNET_JAX_CACHE": str(tmp_path / "cache")},
  )  # fmt: skip
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Cannot download http://127.0.0.1:9/vgg16_bn-6c64b313.pth" in result.stderr
  assert "--config.backbone_weights=none" in result.stderr
  assert "Traceback" not in result.stderr
  assert not list((tmp_path / "checkpoints").glob("[0-9]*"))
  print(f"stopped after {time.perf_counter() - start:.1f} s")
