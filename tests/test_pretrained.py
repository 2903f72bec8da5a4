"""The VGG16-BN weight port, checked against an independent PyTorch VGG16-BN."""

import os
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfrnet_jax.models import pretrained
from cfrnet_jax.models.backbone import VGG16_WIDTHS, VGG16BN
from tests.conftest import import_torch

torch = import_torch()

# torchvision's configuration "D" with batch norm, written out here (no torchvision).
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class TorchVGG16BN(torch.nn.Module):
  """VGG16-BN as torchvision lays it out: `features` then a `classifier`."""

  def __init__(self):
    super().__init__()
    layers, channels = [], 3
    for value in VGG16_CFG:
      if value == "M":
        layers.append(torch.nn.MaxPool2d(2, 2))
      else:
        layers += [
            torch.nn.Conv2d(channels, value, 3, padding=1),
            torch.nn.BatchNorm2d(value),
            torch.nn.ReLU(inplace=True),
        ]
        channels = value
    self.features = torch.nn.Sequential(*layers)
    self.classifier = torch.nn.Sequential(torch.nn.Linear(512 * 7 * 7, 10))


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  model = TorchVGG16BN()
  with torch.no_grad():  # random BatchNorm statistics and affine parameters
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
  return model.eval()


@pytest.fixture(scope="module")
def weight_files(torch_model, tmp_path_factory):
  from safetensors.torch import save_file

  folder = tmp_path_factory.mktemp("weights")
  state_dict = torch_model.state_dict()
  torch.save(state_dict, folder / "vgg16_bn-6c64b313.pth")
  save_file(
      {k: v.contiguous() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")},
      str(folder / "model.safetensors"),
  )
  return folder


def _ours(flat):
  """Our backbone with the converted weights, in inference mode."""
  model = VGG16BN(VGG16_WIDTHS, rngs=nnx.Rngs(0))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params = {"backbone": nnx.to_pure_dict(params)}
  stats = {"backbone": nnx.to_pure_dict(stats)}
  path = "converted.msgpack"
  pretrained.save(flat, path)
  try:
    params, stats, loaded = pretrained.load_backbone(params, stats, path)
  finally:
    os.remove(path)
  assert loaded == 78
  model = nnx.merge(nnx.graphdef(model), params["backbone"], stats["backbone"])
  model.eval()
  return model


@pytest.mark.parametrize("filename", ["vgg16_bn-6c64b313.pth", "model.safetensors"])
def test_ported_taps_match_pytorch(torch_model, weight_files, filename):
  flat = pretrained.convert(pretrained.read_tensors(weight_files / filename))
  model = _ours(flat)
  image = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype(np.float32)
  taps = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(image))
  with torch.no_grad():
    x = torch.from_numpy(image.transpose(0, 3, 1, 2))
    expected = {}
    for index, layer in enumerate(torch_model.features):
      x = layer(x)
      # Block ends: the ReLU before pools 23 (block 3), 33 (block 4), 43 (block 5).
      if index in (22, 32, 42):
        expected[{22: "block3", 32: "block4", 42: "block5"}[index]] = x.numpy().transpose(
            0, 2, 3, 1
        )
  for name, reference in expected.items():
    ours = np.asarray(taps[name])
    assert ours.shape == reference.shape
    scale = np.abs(reference).max()
    assert scale > 0
    # float32 through up to 13 conv layers in two frameworks: 1e-4 of the scale.
    assert np.abs(ours - reference).max() < 1e-4 * scale, name


def test_port_fills_every_layer_and_touches_nothing_else(weight_files):
  from cfrnet_jax.models.cfrnet import build_model
  from configs.base import get_model_config

  flat = pretrained.convert(pretrained.read_tensors(weight_files / "model.safetensors"))
  assert len(flat) == 13 * 6
  model = nnx.eval_shape(lambda: build_model(get_model_config(), 0))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nnx.to_pure_dict(tree))
  params, stats = zeros(params), zeros(stats)
  pretrained.save(flat, "full.msgpack")
  try:
    new_params, new_stats, loaded = pretrained.load_backbone(params, stats, "full.msgpack")
  finally:
    os.remove("full.msgpack")
  assert loaded == 78
  for k in range(13):
    layer = new_params["backbone"]["layers"][k]
    assert float(jnp.abs(layer["conv"]["kernel"]).sum()) > 0
    assert float(jnp.abs(new_stats["backbone"]["layers"][k]["norm"]["var"]).sum()) > 0
  for name in new_params:
    if name != "backbone":  # everything outside the backbone is untouched
      for old, new in zip(jax.tree.leaves(params[name]), jax.tree.leaves(new_params[name])):
        assert old is new


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("features.7.weight"), r"Missing tensor\(s\) \['features\.7\.weight'\]"),
        (
            lambda t: t.update({"features.44.weight": np.zeros(3)}),
            r"Unexpected tensor\(s\) \['features\.44\.weight'\]",
        ),
        (
            lambda t: t.update({"features.8.running_var": np.zeros(7)}),
            r"Tensor features\.8\.running_var has shape \(7,\), expected \(128,\)",
        ),
    ],
)
def test_bad_checkpoints_are_refused_by_tensor_name(weight_files, change, message):
  tensors = pretrained.read_tensors(weight_files / "model.safetensors")
  change(tensors)
  with pytest.raises(pretrained.WeightsError, match=message):
    pretrained.convert(tensors)


def test_without_network_the_download_fails_at_once_naming_the_url(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(pretrained.urllib.request, "urlopen", offline)
  with pytest.raises(ConnectionError, match=r"(?s)vgg16_bn-6c64b313\.pth.*--source"):
    pretrained.main(
        [
            "--source",
            "torchvision",
            "--out",
            str(tmp_path / "w.msgpack"),
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )


def test_command_line_converts_a_local_file(weight_files, tmp_path, capsys):
  out = tmp_path / "vgg16_bn.msgpack"
  pretrained.main(["--source", str(weight_files / "model.safetensors"), "--out", str(out)])
  assert out.exists() and "13 conv + 13 BatchNorm" in capsys.readouterr().out
