"""PreemptionGuard in this process; the subprocess trials are in test_trainer.py."""

import os
import signal
import time

import pytest

from cfrnet_jax.training.preemption import PreemptionGuard


def test_sigterm_becomes_a_request_and_the_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard(30.0, 0.5) as guard:
    assert not guard.requested and guard.remaining() == 30.0
    assert guard.stop_agreed() is False and guard.save_fits()
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not guard.requested and time.monotonic() < deadline:
      time.sleep(0.01)
    assert guard.requested and guard.stop_agreed()  # one process: its own SIGTERM
    assert 25.0 < guard.remaining() < 30.0
    assert guard.save_fits()  # more than half of the 30 s left
    guard._requested_at -= 20.0  # 20 s later: under half left
    assert not guard.save_fits()
  # Left in time: no exit, and SIGTERM is handled as before the run.
  assert signal.getsignal(signal.SIGTERM) is before
  assert signal.set_wakeup_fd(-1) == -1  # the wakeup socket was unregistered


def test_a_grace_time_of_zero_and_a_fraction_beyond_1_are_refused():
  with pytest.raises(ValueError, match="preemption_grace_s must be > 0"):
    PreemptionGuard(0, 0.5)
  with pytest.raises(ValueError, match=r"preemption_save_fraction must be in \[0, 1\]"):
    PreemptionGuard(20.0, 1.5)
