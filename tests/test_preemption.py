"""PreemptionGuard in this process; the subprocess trials are in test_trainer.py."""

import os
import signal
import time

import pytest

from cfrnet_jax.training.preemption import PreemptionGuard


def test_sigterm_becomes_a_request_and_the_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard(30.0) as guard:
    assert not guard.requested and guard.remaining() == 30.0
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not guard.requested and time.monotonic() < deadline:
      time.sleep(0.01)
    assert guard.requested
    assert 25.0 < guard.remaining() < 30.0
  # Left in time: no exit, and SIGTERM is handled as before the run.
  assert signal.getsignal(signal.SIGTERM) is before
  assert signal.set_wakeup_fd(-1) == -1  # the wakeup socket was unregistered


def test_a_grace_time_of_zero_is_refused():
  with pytest.raises(ValueError, match="preemption_grace_s must be > 0"):
    PreemptionGuard(0)
