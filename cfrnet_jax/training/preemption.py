"""SIGTERM, as a preempted VM receives it: stop within a bounded grace time.

A preempted cloud VM gets SIGTERM and, about 30 seconds later, SIGKILL. A Python signal
handler runs only between bytecodes of the main thread, so while the main thread sits in
a long native call - XLA compiling the paper model's step took over 4 minutes on a CPU -
the handler waits, and the run would be killed without saying why. So the signal is
also taken where it arrives: `signal.set_wakeup_fd` makes the interpreter's C-level
handler write the signal's number to a socket at once, and a watcher thread reading that
socket (threads run while native calls release the GIL) starts the grace clock.

`PreemptionGuard(grace_s)` is the training run's one preemption mechanism:
* `stop_agreed()`, asked by the training loop before its first step and after every
  call, is true once SIGTERM reached this process or, in a multi-host run, any other
  (one all-gather of a flag per call): every host stops after the same step, since a
  host that left would leave the others waiting in the next step's collectives;
* `save_fits()`: the loop saves the step it just finished only when at least
  `config.preemption_save_fraction` of the grace time is left;
* when the grace time is over and the run has not left the guard, the watcher logs why,
  terminates the process's children (the data workers) and ends the process with status
  143 (128 + SIGTERM). A checkpoint being written then is never half-visible: Orbax
  writes into a temporary folder and renames it when complete, so the previous
  checkpoints stay intact and the next run resumes from the newest complete one.
"""

from __future__ import annotations

import logging as std_logging
import multiprocessing
import os
import signal
import socket
import threading
import time

import numpy as np
from absl import logging

from cfrnet_jax import hosts

EXIT_STATUS = 128 + signal.SIGTERM  # how a process ended by SIGTERM reports itself


class Preempted(Exception):
  """SIGTERM stopped a training run before its last step; its checkpoints are intact
  and the same command resumes it. Ends a sequence of runs (UCF_CC_50's folds) too."""


class PreemptionGuard:
  """A context manager: SIGTERM handling for the duration of a training run."""

  def __init__(self, grace_s: float, save_fraction: float):
    if not grace_s > 0:
      raise ValueError(f"preemption_grace_s must be > 0, got {grace_s}.")
    if not 0 <= save_fraction <= 1:
      raise ValueError(f"preemption_save_fraction must be in [0, 1], got {save_fraction}.")
    self.grace_s = grace_s
    self.save_fraction = save_fraction
    self._requested = threading.Event()
    self._finished = threading.Event()
    self._requested_at = None

  @property
  def requested(self) -> bool:
    return self._requested.is_set()

  def remaining(self) -> float:
    """Seconds of grace left (the whole grace time before SIGTERM)."""
    if self._requested_at is None:
      return self.grace_s
    return self.grace_s - (time.monotonic() - self._requested_at)

  def stop_agreed(self) -> bool:
    """Whether the run stops now: SIGTERM reached this process or, in a multi-host run,
    any of them. Every process must call it at the same point of the run."""
    flags = hosts.flags_of_every_host(self.requested)
    if np.any(flags) and not self.requested:
      logging.warning("SIGTERM reached another host: stopping with it.")
      self._request()
    return bool(np.any(flags))

  def save_fits(self) -> bool:
    """Whether saving the step just finished fits: `save_fraction` of the grace time left."""
    return self.remaining() >= self.save_fraction * self.grace_s

  def log_stop(self, step: int, last_saved: int, ran: bool) -> None:
    """The run's last line before it stops after `step` (`ran`: steps ran in this run)."""
    if not ran:
      logging.warning("Preempted before step %d: nothing new to save; stopping.", step + 1)
    elif last_saved == step:
      logging.warning("Preempted: saved step %d and stopping.", step)
    else:
      logging.warning(
          "Preempted: step %d not saved (%.1f s of the grace time left, less than "
          "preemption_save_fraction of it); "
          "the next run resumes from step %d.",
          step,
          self.remaining(),
          last_saved,
      )

  def __enter__(self) -> PreemptionGuard:
    self._receive, send = socket.socketpair()
    send.setblocking(False)
    self._send = send
    # A Python-level handler makes the interpreter catch the signal in C and write it to
    # the wakeup socket; the handler itself covers the case of a main thread in Python.
    self._previous_handler = signal.signal(signal.SIGTERM, lambda *_: self._request())
    self._previous_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    self._watcher = threading.Thread(target=self._watch, name="sigterm-watcher", daemon=True)
    self._watcher.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._finished.set()
    signal.set_wakeup_fd(self._previous_fd)
    signal.signal(signal.SIGTERM, self._previous_handler)
    self._send.close()  # ends the watcher's read
    self._watcher.join(timeout=5)
    self._receive.close()

  def _request(self) -> None:
    if not self._requested.is_set():
      self._requested_at = time.monotonic()
      self._requested.set()

  def _watch(self) -> None:
    while not self._finished.is_set():
      try:
        data = self._receive.recv(64)
      except OSError:
        return
      if not data:  # the guard was left
        return
      if signal.SIGTERM in data:
        self._request()
        logging.warning(
            "SIGTERM: stopping within %.0f s (config.preemption_grace_s).", self.grace_s
        )
        if not self._finished.wait(self.remaining()):
          self._expire()

  def _expire(self) -> None:
    logging.error(
        "The run did not stop within the %.0f s grace time after SIGTERM (compiling, or a "
        "step or save longer than that): exiting now with status %d. Checkpoints written "
        "before are intact; the next run resumes from the newest.",
        self.grace_s,
        EXIT_STATUS,
    )
    for child in multiprocessing.active_children():
      child.terminate()
    std_logging.shutdown()  # flush the log before the hard exit
    os._exit(EXIT_STATUS)
