"""XLA's memory and FLOP figures of a compiled step and the model FLOPs of the traced
one, logged before it runs."""

import logging

import jax
import jax.numpy as jnp

from cfrnet_jax.training import device_peaks, flops, step_cost


def _traced_matmul(n=256):
  return jax.jit(lambda a, b: a @ b).trace(jnp.ones((n, n)), jnp.ones((n, n)))


def _compiled_matmul(n=256):
  return _traced_matmul(n).lower().compile()


def test_cost_holds_the_flops_and_the_argument_memory():
  cost = step_cost.step_cost(_compiled_matmul())
  assert cost.flops == 2 * 256**3
  assert cost.argument_bytes == 2 * 256 * 256 * 4
  assert cost.memory_bytes >= cost.argument_bytes + 256 * 256 * 4


def test_report_logs_the_figures_and_warns_when_the_step_will_not_fit(monkeypatch, caplog):
  with caplog.at_level(logging.INFO):
    step_cost.report(_compiled_matmul(), "test step")
  assert any(
      "Compiled test step: model FLOPs not counted; XLA cost analysis: 0.03 GFLOP per step"
      in r.getMessage()
      for r in caplog.records
  )
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  monkeypatch.setattr(step_cost, "device_memory_bytes", lambda device: 100_000)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    step_cost.report(_compiled_matmul(), "test step")
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "will probably run out of memory" in warnings[0]
  assert "--config.model.remat=backbone" in warnings[0] and "--config.batch_size" in warnings[0]


def test_outputs_written_into_donated_arguments_are_not_counted_twice():
  step = jax.jit(lambda state, x: (state + x, (state * x).sum()), donate_argnums=0)
  cost = step_cost.step_cost(step.lower(jnp.ones((512, 512)), jnp.ones((512, 512))).compile())
  state_bytes = 512 * 512 * 4
  assert cost.alias_bytes == state_bytes  # the new state reuses the donated one.
  assert cost.memory_bytes == (
      cost.argument_bytes + cost.output_bytes - state_bytes + cost.temp_bytes
  )
  assert cost.memory_bytes < cost.argument_bytes + cost.output_bytes + cost.temp_bytes


def test_report_leads_with_the_model_flops_and_keeps_xla_figure_beside_them(caplog):
  traced = _traced_matmul()
  with caplog.at_level(logging.INFO):
    step_cost.report(traced.lower().compile(), "test step", traced=traced, devices=2)
  (line,) = [r.getMessage() for r in caplog.records if "Compiled test step" in r.getMessage()]
  assert line.startswith(
      "Compiled test step: model FLOPs 0.03 GFLOP per step (0.02 GFLOP per device), the "
      "device's peak FLOP/s unknown (no MFU); XLA cost analysis: 0.03 GFLOP per step per device;"
  )


def test_model_flops_give_the_step_time_at_full_utilisation_on_a_known_device():
  count = flops.FlopCount({flops.MATMUL: 9.9e12})
  text = step_cost.describe_model_flops(count, device_peaks.peak_flops("NVIDIA H200", "bfloat16"))
  assert (
      text == "model FLOPs 9.90 TFLOP per step, 10.0 ms per step at 100% MFU (peak 989.4 TFLOP/s)"
  )
  assert step_cost.describe_model_flops(count, 1e12, devices=4).startswith(
      "model FLOPs 9.90 TFLOP per step (2.48 TFLOP per device), 2475.0 ms per step"
  )
  refused = flops.FlopCount({}, ("a while loop whose body multiplies",))
  assert "not counted (a while loop" in step_cost.describe_model_flops(refused, None)


def test_a_count_that_fails_loses_only_the_figure(monkeypatch, caplog):
  def broken(jaxpr):
    raise KeyError("no such primitive")

  monkeypatch.setattr(flops, "count_jaxpr", broken)
  traced = _traced_matmul()
  with caplog.at_level(logging.INFO):
    cost = step_cost.report(traced.lower().compile(), "test step", traced=traced)
  assert cost.flops == 2 * 256**3
  messages = [r.getMessage() for r in caplog.records]
  assert any("Model FLOPs not counted: KeyError" in m for m in messages)
  assert any("Compiled test step: model FLOPs not counted;" in m for m in messages)
