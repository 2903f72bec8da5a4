"""Model FLOPs from the jaxpr (`training/flops.py`) against closed forms, and the same
figure for a training step whatever its remat and attention settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from benchmarks.model_cost import implemented_flops
from cfrnet_jax.models.backbone import VGG16_BLOCK_DEPTHS, VGG16BN
from cfrnet_jax.models.cfrm import CrossLevelRelocation
from cfrnet_jax.models.cfrnet import pad_multiple, padded_side
from cfrnet_jax.state import model_graphdef
from cfrnet_jax.training import device_peaks, flops, sharding, train_step
from tests.conftest import tiny_train_config

f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides=(1, 1), padding=((1, 1), (1, 1)), **kwargs):
  specs = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=specs, **kwargs)


def test_dot_general_is_2_batch_m_n_k():
  einsum = lambda a, b: jnp.einsum("bhmk,bhkn->bhmn", a, b)
  assert flops.model_flops(einsum, f32(2, 3, 5, 7), f32(2, 3, 7, 11)) == 2 * 6 * 5 * 11 * 7
  assert flops.model_flops(jnp.matmul, f32(64, 32), f32(32, 16)) == 2 * 64 * 16 * 32


def test_convolution_and_its_two_gradients_cost_its_forward():
  x, w = f32(2, 16, 12, 5), f32(3, 3, 5, 7)
  forward = 2 * 2 * 16 * 12 * 5 * 7 * 9  # padding taps included: 2*N*H*W*Cin*Cout*9
  assert flops.model_flops(_conv, x, w) == forward
  input_grad = jax.grad(lambda x, w: _conv(x, w).sum(), argnums=0)
  kernel_grad = jax.grad(lambda x, w: _conv(x, w).sum(), argnums=1)
  assert flops.model_flops(input_grad, x, w) == forward
  assert flops.model_flops(kernel_grad, x, w) == forward
  # Dilated kernel: spread taps, the same number of them.
  dilated = lambda x, w: _conv(x, w, padding=((2, 2), (2, 2)), rhs_dilation=(2, 2))
  assert flops.model_flops(dilated, x, w) == forward


def _lattice_taps(kernel, stride, dilation, padding, out):
  """Brute force: (output, tap) pairs whose position in the padded, dilated input is on
  the lattice of input elements (a multiple of `dilation` from the first one)."""
  return sum(
      all((o * stride + k - low) % dilation == 0 for o, k, (low, _) in zip(at, taps, padding))
      for at in np.ndindex(*out)
      for taps in np.ndindex(*kernel)
  )


def test_strided_convolution_input_gradient_skips_the_inserted_zeros():
  x, w = f32(2, 16, 12, 5), f32(3, 3, 5, 7)
  strided = lambda x, w: _conv(x, w, strides=(2, 2))
  forward = 2 * 2 * 8 * 6 * 5 * 7 * 9
  assert flops.model_flops(strided, x, w) == forward
  gradient = jax.make_jaxpr(jax.grad(lambda x, w: strided(x, w).sum()))(x, w)
  # The forward convolution is in the program too, its result unused (not counted).
  (eqn,) = [e for e in gradient.eqns if e.params.get("lhs_dilation") == (2, 2)]
  taps = _lattice_taps((3, 3), 1, 2, eqn.params["padding"], (16, 12))
  assert flops.count_jaxpr(gradient).total == 2 * 2 * 7 * 5 * taps
  # Every tap on an inserted zero counted would make it 4x the forward; it is the forward.
  assert flops.count_jaxpr(gradient).total == forward
  # Odd sides: the forward's last window per side reaches into the padding; the gradient
  # costs the forward's multiply-adds with input elements, 22 x 16 taps of 24 x 18.
  gradient = jax.grad(lambda x, w: strided(x, w).sum())
  assert flops.model_flops(strided, f32(2, 15, 11, 5), w) == forward
  assert flops.model_flops(gradient, f32(2, 15, 11, 5), w) == 2 * 2 * 5 * 7 * 22 * 16


def test_grouped_convolution_and_its_batch_grouped_kernel_gradient():
  x, w = f32(2, 10, 10, 6), f32(3, 3, 1, 6)  # depthwise: feature_group_count 6
  depthwise = lambda x, w: _conv(x, w, feature_group_count=6)
  forward = 2 * 2 * 10 * 10 * 6 * 9
  assert flops.model_flops(depthwise, x, w) == forward
  kernel_grad = jax.make_jaxpr(jax.grad(lambda x, w: depthwise(x, w).sum(), argnums=1))(x, w)
  assert [e for e in kernel_grad.eqns if e.params.get("batch_group_count") == 6]
  assert flops.count_jaxpr(kernel_grad).total == forward


def test_vgg16_bn_forward_equals_the_closed_form_at_256():
  widths = (64, 128, 256, 512, 512)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: VGG16BN(widths, rngs=nnx.Rngs(0))))
  counted = flops.model_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, f32(1, 256, 256, 3))
  expected, cin = 0, 3
  for block, (depth, width) in enumerate(zip(VGG16_BLOCK_DEPTHS, widths)):
    side = 256 >> block
    for _ in range(depth):
      expected += 2 * side * side * cin * width * 9
      cin = width
  # 40.1 GFLOP: VGG16's 15.35 G multiply-adds at 224x224, x 2 x (256/224)^2.
  assert counted == expected == pytest.approx(2 * 15.35e9 * (256 / 224) ** 2, rel=2e-3)


@pytest.mark.parametrize(
    "h, w, c, k, i", [(32, 32, 16, 8, 1), (32, 16, 32, 8, 2), (64, 64, 16, 16, 3)]
)
def test_cfrm_equals_the_matmul_formula_of_docs_performance(h, w, c, k, i):
  """(h/k)(w/k)(2(3k^2 + 2m)c^2 + 16k^2c^2 + 4k^2 m c), m = k^2 + k^2/4^i."""
  graphdef, state = nnx.split(CrossLevelRelocation(c, 2, k, 4, rngs=nnx.Rngs(0)))
  counted = flops.model_flops(
      lambda s, hi, lo: nnx.merge(graphdef, s)(hi, lo),
      state,
      f32(1, h, w, c),
      f32(1, h >> i, w >> i, c),
  )
  assert counted == implemented_flops(h, w, c, k, i)


def test_scan_counts_its_body_length_times_and_cond_its_costliest_branch():
  def scanned(a, b):
    return lax.scan(lambda carry, _: (carry @ b, None), a, length=5)[0]

  assert flops.model_flops(scanned, f32(8, 8), f32(8, 8)) == 5 * 2 * 8**3
  mapped = lambda xs, b: lax.map(lambda x: x @ b, xs)
  assert flops.model_flops(mapped, f32(3, 4, 8), f32(8, 6)) == 3 * 2 * 4 * 8 * 6

  def branches(p, a, b):
    return lax.cond(p, lambda a, b: (a @ b) @ b, lambda a, b: a + 1, a, b)

  assert flops.model_flops(branches, jnp.bool_(True), f32(8, 8), f32(8, 8)) == 2 * 2 * 8**3


def test_a_while_loop_that_multiplies_is_refused_and_one_that_does_not_is_free():
  def loop(a, b):
    return lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ b, c[1] + 1), (a, 0))[0]

  with pytest.raises(flops.FlopCountError, match="while loop.*trip count"):
    flops.model_flops(loop, f32(8, 8), f32(8, 8))
  assert flops.count_flops(loop, f32(8, 8), f32(8, 8)).uncounted
  counting = lambda a, b: lax.fori_loop(0, jnp.int32(a[0, 0]), lambda i, x: x + 1.0, a) @ b
  assert flops.model_flops(counting, f32(8, 8), f32(8, 8)) == 2 * 8**3


def test_results_nothing_uses_are_not_counted():
  def dead(a, b):
    _ = (a @ b) @ b
    return a @ b

  assert flops.model_flops(dead, f32(8, 8), f32(8, 8)) == 2 * 8**3


def _mlp_loss(x, weights, checkpoint=None):
  block = lambda x, w: jnp.tanh(x @ w) @ w
  if checkpoint is not None:
    block = checkpoint(block)
  for w in weights:
    x = block(x, w)
  return x.sum()


@pytest.mark.parametrize(
    "checkpoint",
    [
        jax.checkpoint,
        lambda f: jax.checkpoint(f, policy=jax.checkpoint_policies.dots_saveable),
        lambda f: jax.checkpoint(jax.checkpoint(f)),  # nested
    ],
)
def test_remat_recomputation_is_not_counted(checkpoint):
  x, weights = f32(16, 32), [f32(32, 32)] * 3
  plain = flops.model_flops(jax.value_and_grad(_mlp_loss, 1), x, weights)
  remat = jax.value_and_grad(lambda x, w: _mlp_loss(x, w, checkpoint), 1)
  jaxpr = str(jax.make_jaxpr(remat)(x, weights))
  assert "remat" in jaxpr or "checkpoint" in jaxpr  # the recomputation is in the program
  assert flops.model_flops(remat, x, weights) == plain
  forward = 3 * 2 * 2 * 16 * 32 * 32
  # Backward: the weight and input gradients of every product, but the first product's
  # input gradient (x is not differentiated).
  assert plain == 3 * forward - 2 * 16 * 32 * 32


@pytest.fixture
def cudnn_attention_traceable(monkeypatch):
  """jax.nn.dot_product_attention(implementation="cudnn") traceable on a CPU: its
  checks of the cuDNN version and of the GPU are skipped (nothing is lowered or run)."""
  fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  for name, value in (
      ("check_cudnn_version", lambda: 91000),
      ("check_is_flash_attention", lambda *args, **kwargs: None),
      ("check_compute_capability", lambda capability: True),
  ):
    if not hasattr(fused, name):
      pytest.skip(f"jax's cuDNN attention has no {name} to stand in for")
    monkeypatch.setattr(fused, name, value)


def test_fused_attention_costs_its_formula_and_what_xla_attention_does(cudnn_attention_traceable):
  shape = (2, 64, 4, 32), (2, 80, 4, 32), (1, 4, 64, 80)  # B T N D, B S N D, bias
  q, k, bias = (jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in shape)

  def attention(implementation):
    def attend(q, k, v, bias):
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation)
      return out.astype(jnp.float32).sum()

    return attend

  forward = 4 * 2 * 4 * 64 * 80 * 32  # 4*B*N*T*S*D
  cudnn = flops.count_flops(attention("cudnn"), q, k, k, bias)
  assert cudnn.by_kind[flops.ATTENTION] == cudnn.total == forward
  assert flops.model_flops(attention("xla"), q, k, k, bias) == forward
  train = lambda name: jax.value_and_grad(attention(name), (0, 1, 2))
  cudnn_train = flops.count_flops(train("cudnn"), q, k, k, bias)
  assert cudnn_train.by_kind[flops.ATTENTION] == 3 * forward  # backward: dQ, dK, dV, dP
  assert flops.model_flops(train("xla"), q, k, k, bias) == 3 * forward


def _tiny_config(**model):
  config = tiny_train_config(None)
  config.data.update(crop_size=64, max_points=64)
  config.model.update(dtype="bfloat16", **model)
  return config


def _abstract_batch(config, batch=2):
  size, points = config.data.crop_size, config.data.max_points
  return {
      "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
      "points": f32(batch, points, 2),
      "valid": jax.ShapeDtypeStruct((batch, points), jnp.bool_),
      "valid_size": jax.ShapeDtypeStruct((batch, 2), jnp.int32),
      "count": jax.ShapeDtypeStruct((batch,), jnp.int32),
  }


@pytest.fixture(scope="module")
def tiny_state():
  """The tiny model's abstract training state (remat and attention leave it alike)."""
  mesh = sharding.create_mesh(("data",))
  return mesh, *train_step.abstract_train_state(_tiny_config(), mesh)


def _train_step_flops(tiny_state, **model) -> float:
  """The training step's model FLOPs at 2 x 64x64 (traced only: nothing runs)."""
  mesh, abstract, state_sharding = tiny_state
  config = _tiny_config(**model)
  step = train_step.jit_train_step(config, model_graphdef(config.model), mesh, state_sharding)
  return flops.model_flops(step, abstract, _abstract_batch(config))


@pytest.fixture(scope="module")
def step_without_remat(tiny_state):
  return _train_step_flops(tiny_state, remat="none")


@pytest.mark.parametrize("remat", ["backbone", "all"])
def test_training_step_same_figure_whatever_remat(tiny_state, step_without_remat, remat):
  assert _train_step_flops(tiny_state, remat=remat) == step_without_remat


def test_training_step_same_figure_with_cudnn_attention(
    tiny_state, step_without_remat, cudnn_attention_traceable
):
  cudnn = _train_step_flops(tiny_state, remat="all", attention="cudnn")
  assert cudnn == step_without_remat


def test_training_step_is_3x_the_forward_less_the_image_gradient(tiny_state, step_without_remat):
  """Forward, then the input and the weight gradient of every convolution and matmul,
  each costing the forward's (tested above): 3x the forward, less the first
  convolution's input gradient (the images are not differentiated), plus the target
  rendering's matmuls inside the step (`train_step.step_inputs`). Exactly."""
  _, abstract, _ = tiny_state
  config = _tiny_config()
  graphdef = model_graphdef(config.model)

  def forward(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    model.train()
    return model(images)

  model = flops.model_flops(forward, abstract.params, abstract.batch_stats, f32(2, 64, 64, 3))
  padded = padded_side(64, pad_multiple(config.model))  # 128: the CFRM windows' multiple
  first_conv = 2 * 2 * padded * padded * 3 * config.model.vgg_widths[0] * 9
  inputs = lambda batch: train_step.step_inputs(config, batch)  # normalisation and targets
  targets = flops.model_flops(inputs, _abstract_batch(config))
  assert 0 < targets < 0.01 * model
  assert step_without_remat == 3 * model - first_conv + targets


def test_cpu_kernel_gradient_counts_what_xla_gradient_does(monkeypatch):
  """The CPU path's kernel gradient (models/conv.py: matmuls in a `lax.map`) costs what
  XLA's convolution gradient, which GPUs and TPUs run, does: figures traced on a CPU
  hold for them."""
  graphdef, params, rest = nnx.split(VGG16BN((8, 8, 16, 16, 16), rngs=nnx.Rngs(0)), nnx.Param, ...)

  def count():  # a new function each time: jax caches what it traced
    def step(params, rest, images):
      def loss(params):
        network = nnx.merge(graphdef, params, rest)
        network.eval()
        return sum(t.sum() for t in network(images).values())

      return jax.grad(loss)(params)

    return flops.count_flops(step, params, rest, f32(2, 64, 64, 3))

  cpu = count()
  assert cpu.by_kind[flops.MATMUL] > 0  # the CPU path's tap products
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  xla = count()
  assert xla.by_kind[flops.MATMUL] == 0
  assert cpu.total == xla.total


@pytest.mark.parametrize(
    "kind, bfloat16, float32",
    [
        ("NVIDIA H200", 989.4e12, 494.7e12),
        ("NVIDIA H100 80GB HBM3", 989.4e12, 494.7e12),
        ("NVIDIA H100 PCIe", 756.5e12, 378e12),
        ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
        ("NVIDIA L4", 121e12, 60e12),
        ("Tesla V100-SXM2-16GB", None, 15.7e12),
        ("TPU v4", 275e12, 275e12),
        ("TPU v5 lite", 197e12, 197e12),
        ("TPU v5", 459e12, 459e12),
        ("TPU v6 lite", 918e12, 918e12),
        ("NVIDIA L40S", None, None),
        ("cpu", None, None),
    ],
)
def test_peaks_by_device_kind(kind, bfloat16, float32):
  assert device_peaks.peak_flops(kind, "bfloat16") == bfloat16
  assert device_peaks.peak_flops(kind, "float32") == float32


def test_mfu_is_flops_over_time_over_peak():
  assert device_peaks.mfu(1e12, 0.01, 200e12) == pytest.approx(0.5)
  assert device_peaks.mfu(8e12, 0.01, 200e12, devices=8) == pytest.approx(0.5)
  assert math.isclose(device_peaks.mfu(2e12, 1.0, 1e12), 2.0)
