"""XLA's memory and FLOP figures of a compiled step, logged before it runs."""

import logging

import jax
import jax.numpy as jnp

from cfrnet_jax.training import step_cost


def _compiled_matmul(n=256):
  return jax.jit(lambda a, b: a @ b).lower(jnp.ones((n, n)), jnp.ones((n, n))).compile()


def test_cost_holds_the_flops_and_the_argument_memory():
  cost = step_cost.step_cost(_compiled_matmul())
  assert cost.flops == 2 * 256**3
  assert cost.argument_bytes == 2 * 256 * 256 * 4
  assert cost.memory_bytes >= cost.argument_bytes + 256 * 256 * 4


def test_report_logs_the_figures_and_warns_when_the_step_will_not_fit(monkeypatch, caplog):
  with caplog.at_level(logging.INFO):
    step_cost.report(_compiled_matmul(), "test step")
  assert any("Compiled test step: 0.03 GFLOP" in r.getMessage() for r in caplog.records)
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
