"""The training loop: sharded steps, multi-host lockstep, resuming, preemption, NaN guard."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cfrnet_jax import checkpoint_repair
from cfrnet_jax.training import trainer
from tests.conftest import built_once, require_torch, tiny_train_config

REPO = Path(__file__).resolve().parents[1]


def fixed_batch(batch_size=8, crop=128, max_points=128):
  """Crops of synthetic crowd images with their heads, as the pipeline ships them."""
  from cfrnet_jax.data.pipeline import TrainCrop
  from tfds_crowd.synthetic_crowd import render_crowd_image

  config = tiny_train_config(None)
  config.data.max_points = max_points
  transform = TrainCrop(config.data)
  crops = []
  for i in range(batch_size):
    data, points = render_crowd_image(np.random.default_rng([7, i]))
    crops.append(
        transform.random_map(
            {"image": data, "points": points, "filename": b"synthetic"}, np.random.default_rng(i)
        )
    )
  return {key: np.stack([c[key] for c in crops]) for key in crops[0]}


STEP_SCRIPT = textwrap.dedent("""
    import os, sys, numpy as np
    {setup}
    import jax
    sys.path.insert(0, {repo!r})
    from tests.conftest import tiny_train_config
    from tests.test_trainer import fixed_batch
    from cfrnet_jax.state import local_copy, model_graphdef
    from cfrnet_jax.training import sharding, train_step
    config = tiny_train_config(None)
    mesh = sharding.create_mesh()
    graphdef = model_graphdef(config.model)
    if {make_initial}:
      state, state_sharding = train_step.create_train_state(config, mesh)
      np.savez({initial!r}, *map(np.asarray, jax.tree.leaves(local_copy(state))))
    else:  # the one-device run's initial state, laid out on this run's mesh
      abstract, state_sharding = train_step.abstract_train_state(config, mesh)
      saved = np.load({initial!r})
      state = jax.tree.unflatten(jax.tree.structure(abstract), [
          jax.make_array_from_callback(a.shape, a.sharding, lambda i, k=k: saved[f"arr_{{k}}"][i])
          for k, a in enumerate(jax.tree.leaves(abstract))])
    step = train_step.jit_train_step(config, graphdef, mesh, state_sharding)
    batch = fixed_batch()
    rows = len(batch["image"]) // jax.process_count()
    mine = {{k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows]
            for k, v in batch.items()}}
    step = step.lower(state, sharding.make_global_batch(mine, mesh)).compile()
    if jax.process_count() > 1:
      # Each process compiles in its own time (a loaded CI machine: a minute apart); meet
      # before the first collective, whose gloo connection waits only 30 s.
      from jax._src import distributed
      distributed.global_state.client.wait_at_barrier("compiled", 600_000)
    for _ in range({steps}):
      state, metrics = step(state, sharding.make_global_batch(mine, mesh))
    leaves = jax.tree_util.tree_leaves_with_path(local_copy(
        {{"params": state.params, "batch_stats": state.batch_stats,
          "mu": state.opt_state[0].mu}}))
    np.savez({out!r}, **{{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}},
             devices=np.int32(jax.device_count()), loss=np.asarray(metrics["loss"]))
""")


def step_script(
    out: Path, steps: int, initial: Path, setup: str = "", make_initial: bool = False
) -> str:
  """STEP_SCRIPT, writing the state after `steps` steps to `out`. With `make_initial` (the
  one-device reference) it initialises the state and writes it to `initial`; otherwise it
  lays that state out on its mesh rather than compile an initialisation of its own (a
  multi-device initialisation is the two-host trials' below)."""
  return STEP_SCRIPT.format(
      setup=setup,
      repo=str(REPO),
      steps=steps,
      out=str(out),
      initial=str(initial),
      make_initial=make_initial,
  )


def run_steps(
    out: Path, steps: int, initial: Path, setup: str = "", make_initial: bool = False
) -> dict:
  script = step_script(out, steps, initial, setup, make_initial)
  subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
  return dict(np.load(out))


def _zero_gradient(key: str) -> bool:
  """Parameters whose true gradient is exactly 0 in training mode, so what is computed
  for them is float noise: the backbone's conv biases (kept for the torchvision port)
  feed BatchNorm, which removes any per-channel constant; the key half of an attention
  block's `key_value` bias shifts all logits of a query equally, which softmax ignores."""
  return key.endswith("['conv']['bias']") or key.endswith("['key_value']['bias']")


def assert_same_step(a: dict, b: dict):
  """Two runs of the same steps on different device layouts agree to float tolerance.

  Reductions run in another order, so gradients differ in their last bits, amplified a
  little through the BatchNorms of a deep network: Adam's first moment (0.1 x the
  gradient) must agree per parameter to 1% in norm (seen: at most 0.2%). Adam turns every
  gradient entry into about +-learning rate, so an update's sign is only determined
  where the gradient is well above that noise: parameters are compared (to 1e-5) where
  it exceeds 1e-3 of the parameter's largest entry."""
  np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  keys = sorted(k for k in a if k not in ("devices", "loss"))
  assert keys == sorted(k for k in b if k not in ("devices", "loss"))
  for key in keys:
    if key.startswith("['batch_stats']"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    elif key.startswith("['mu']") and not _zero_gradient(key):
      error = np.linalg.norm(a[key] - b[key]) / np.linalg.norm(a[key])
      assert error < 1e-2, (key, error)
    elif key.startswith("['params']"):
      mu = np.abs(a["['mu']" + key[len("['params']") :]])
      clear = mu > 1e-3 * mu.max()
      if _zero_gradient(key):
        continue
      np.testing.assert_allclose(a[key][clear], b[key][clear], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.fixture(scope="session")
def one_device_step(tmp_path_factory) -> tuple[dict, Path]:
  """One step on one device: what the multi-device tests compare with (built once), and
  the file of the initial state they start from."""
  folder = built_once(
      tmp_path_factory,
      "one_device_step",
      lambda d: run_steps(d / "one.npz", 1, initial=d / "initial.npz", make_initial=True),
  )
  return dict(np.load(folder / "one.npz")), folder / "initial.npz"


@pytest.mark.slow
def test_step_on_8_devices_equals_1_device(tmp_path, one_device_step, collectives_alone):
  """Same global batch, one step: the sharded step computes what one device computes
  (float32 reductions in another order: tolerance 1e-5 relative)."""
  one, initial = one_device_step
  eight = run_steps(
      tmp_path / "eight.npz",
      1,
      initial,
      setup=('os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"'),
  )
  assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
  assert_same_step(one, eight)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_step_in_lockstep_and_match_one_process(
    tmp_path, one_device_step, collectives_alone
):
  port = _free_port()
  setup = textwrap.dedent("""
      import jax
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2,
                                 process_id=int(os.environ["PROCESS_ID"]))
  """).format(port=port)
  one, initial = one_device_step
  script = lambda i: step_script(tmp_path / f"host{i}.npz", 1, initial, setup)
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", script(i)], cwd=REPO, env={**os.environ, "PROCESS_ID": str(i)}
      )
      for i in range(2)
  ]
  assert [p.wait(timeout=300) for p in procs] == [0, 0]
  hosts = [dict(np.load(tmp_path / f"host{i}.npz")) for i in range(2)]
  assert int(hosts[0]["devices"]) == 2
  for key in hosts[0]:  # replicated state: bit-identical on both hosts
    np.testing.assert_array_equal(hosts[0][key], hosts[1][key], err_msg=key)
  assert_same_step(hosts[0], one)


def launch(workdir, data_dir, *flags, config="configs/tiny.py:plain"):
  """The loop's trials train the plain model (docs/testing.md)."""
  return [
      sys.executable,
      "launch.py",
      "--config",
      config,
      "--workdir",
      str(workdir),
      f"--config.data.data_dir={data_dir}",
      *flags,
  ]


def restore_params(workdir: Path, step: int) -> dict:
  """Plain Orbax, as docs/training.md shows: no cfrnet_jax code involved."""
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  flat = jax.tree_util.tree_leaves_with_path({"params": state["params"]})
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _wait_for(path: Path, proc: subprocess.Popen, timeout=240):
  deadline = time.time() + timeout
  while not path.exists():
    assert proc.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline, f"no {path} after {timeout} s"
    time.sleep(0.05)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_it_resumes_once_there_is_space(tmp_path, synthetic_data_dir):
  """A real full disk: the workdir on a tmpfs (in a private mount namespace). A first run
  saves step 2; a file then fills the disk but for half the size of that checkpoint, so the
  run resumed from step 2 cannot save step 4. It stops naming the step, the folder and the
  error; step 2 stays intact; once the file is gone the same command resumes."""
  disk, workdir = tmp_path / "disk", tmp_path / "disk" / "run"
  disk.mkdir()
  flags = (
      "--config.checkpoint_every_steps=2",
      "--config.eval_every_steps=1000",
      "--config.data.eval_split=test[:1]",
  )
  probe = " ".join(launch(workdir, synthetic_data_dir, "--config.num_train_steps=2", *flags))
  command = " ".join(launch(workdir, synthetic_data_dir, "--config.num_train_steps=6", *flags))
  script = f"""
      mount -t tmpfs -o size=64m tmpfs {disk} || exit 90
      {probe} > {tmp_path}/probe.log 2>&1 || exit 91
      step_2_kb=$(du -sk {workdir}/checkpoints/2 | cut -f1)
      fill_kb=$(( $(df -k --output=avail {disk} | tail -n 1) - step_2_kb / 2 ))
      [ "$fill_kb" -gt 0 ] || exit 92
      dd if=/dev/zero of={disk}/filler bs=1k count=$fill_kb 2> /dev/null || exit 93
      {command} > {tmp_path}/full.log 2>&1; echo $? > {tmp_path}/full.status
      cp -r {workdir}/checkpoints {tmp_path}/after_full
      rm {disk}/filler
      {command} > {tmp_path}/resumed.log 2>&1; echo $? > {tmp_path}/resumed.status
      cp -r {workdir}/checkpoints {tmp_path}/after_resume
  """
  subprocess.run(
      ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
      cwd=REPO,
      check=True,
      timeout=600,
  )
  full = (tmp_path / "full.log").read_text()
  assert (tmp_path / "full.status").read_text().strip() == "1", full[-3000:]
  assert "Could not write the checkpoint of step 4 in" in full, full[-3000:]
  message = full[full.index("Could not write the checkpoint of step 4 in") :]
  assert str(workdir / "checkpoints") in message.splitlines()[0]
  assert "No space left on device" in message.splitlines()[0]
  assert "The checkpoints of steps [2] are intact" in message
  kept = tmp_path / "after_full"
  assert sorted(p.name for p in kept.iterdir() if p.name.isdigit()) == ["2"]
  resumed = (tmp_path / "resumed.log").read_text()
  assert (tmp_path / "resumed.status").read_text().strip() == "0", resumed[-3000:]
  assert "Resumed from the checkpoint of step 2" in resumed
  # The checkpoint of step 2 left by the failed run restores; the resumed run got to 6.
  before = ocp.StandardCheckpointer().restore(kept / "2" / "state")
  after = ocp.StandardCheckpointer().restore(tmp_path / "after_resume" / "6" / "state")
  assert int(before["step"]) == 2 and int(after["step"]) == 6


def _start_long_run(workdir: Path, data_dir, env: dict | None = None) -> subprocess.Popen:
  """A run of 10,000 steps, saving every 5, for a test to stop; output in `.stdout`."""
  return subprocess.Popen(
      launch(
          workdir,
          data_dir,
          "--config.num_train_steps=10000",
          "--config.checkpoint_every_steps=5",
          "--config.eval_every_steps=100000",
      ),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env={**os.environ, **(env or {})},
  )


@pytest.mark.slow
def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tmp_path, synthetic_data_dir):
  workdir = tmp_path / "run"
  proc = _start_long_run(workdir, synthetic_data_dir)
  _wait_for(workdir / "checkpoints" / "5", proc)
  proc.send_signal(signal.SIGTERM)
  sent = time.monotonic()
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output
  assert time.monotonic() - sent < 20  # config.preemption_grace_s (20 s)
  # The platform line, and the compiled step's cost before the first step ran.
  assert "on cpu: process 0 of 1, 1 devices (1 x cpu)" in output
  cost_line = output.index("Compiled training step (4 x 128x128, float32, remat none)")
  assert "GB the device has" in output[cost_line:].splitlines()[0]
  assert "Preempted: saved step" in output[cost_line:]
  stopped_at = int(output.split("Preempted: saved step ")[1].split()[0])
  assert stopped_at >= 5
  params = restore_params(workdir, stopped_at)
  assert params and all(np.isfinite(v).all() for v in params.values())


@pytest.mark.slow
def test_sigterm_to_one_of_two_hosts_stops_both_after_the_same_step(
    tmp_path, synthetic_data_dir, collectives_alone
):
  """Two training processes under jax.distributed on 127.0.0.1; SIGTERM reaches process 0
  only. Both stop after the same step, saved by both, and exit with status 0 (a host
  left alone would wait in the next step's collectives until its grace time ran out)."""
  workdir, port = tmp_path / "run", _free_port()
  host = lambda i: {
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i),
  }
  procs = [_start_long_run(workdir, synthetic_data_dir, host(i)) for i in range(2)]
  try:
    _wait_for(workdir / "checkpoints" / "5", procs[0], timeout=400)
    procs[0].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert "SIGTERM reached another host: stopping with it." in outputs[1]
  stopped = [int(out.split("Preempted: saved step ")[1].split()[0]) for out in outputs]
  assert stopped[0] == stopped[1] >= 5, stopped
  # Written by both hosts and finished (a 2-process checkpoint restores only on 2 processes).
  assert stopped[0] in checkpoint_repair.finished_steps(workdir / "checkpoints")


@pytest.mark.slow  # compiles a training step of its own
def test_nonfinite_loss_stops_naming_the_step_and_saves_nothing(tmp_path, synthetic_data_dir):
  config = tiny_train_config(
      synthetic_data_dir,
      "plain",
      num_train_steps=6,
      log_every_steps=3,
      checkpoint_every_steps=3,
      eval_every_steps=1000,
  )
  config.model.density_scale = 1e30  # the squared error overflows to inf at step 0
  with pytest.raises(FloatingPointError, match="NaN or inf at step 0"):
    trainer.train_and_evaluate(config, str(tmp_path))
  checkpoints = tmp_path / "checkpoints"
  assert not checkpoints.exists() or not [p for p in checkpoints.iterdir() if p.name.isdigit()]


@pytest.mark.slow
def test_sigterm_during_compilation_ends_the_run_within_the_grace_time(
    tmp_path, synthetic_data_dir
):
  """A Python handler cannot run while XLA compiles (a native call); the watcher thread
  still ends the run when the grace time is over: status 143, the reason in the log, no
  checkpoint. A cold compilation cache makes the compilation of the tiny model's step
  (tens of seconds on 2 cores) outlast the 1 s grace."""
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      launch(
          workdir,
          synthetic_data_dir,
          "--config.preemption_grace_s=1",
          config="configs/tiny.py",
      ),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cold_cache")},
  )
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if "Compiling the training step." in line:
      break
  proc.send_signal(signal.SIGTERM)
  sent = time.monotonic()
  output = "".join(lines) + proc.communicate(timeout=120)[0]
  assert time.monotonic() - sent < 1 + 5, output  # the grace time, and exiting
  assert proc.returncode == 143, output
  assert "did not stop within the 1 s grace time after SIGTERM" in output
  assert "Compiled training step" not in output  # it was still compiling
  assert not (workdir / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir()
  )


def test_a_run_compiles_its_evaluation_once_per_image_shape(
    tmp_path, synthetic_data_dir, monkeypatch
):
  """Three evaluations (steps 1, 2, 3) go through one jitted count function, compiled
  once for each padded shape of the split, not once per evaluation."""
  from cfrnet_jax import evaluation
  from cfrnet_jax.data import pipeline

  made = []
  make_count_fn = evaluation.make_count_fn

  def recording(*args, **kwargs):
    made.append(make_count_fn(*args, **kwargs))
    return made[-1]

  monkeypatch.setattr(evaluation, "make_count_fn", recording)
  config = tiny_train_config(
      synthetic_data_dir, "plain", num_train_steps=3, eval_every_steps=1, log_every_steps=1
  )
  trainer.train_and_evaluate(config, tmp_path)
  assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_1", "step_2", "step_3"]
  loader = pipeline.create_eval_loader(
      config, pipeline.open_split(config.data, config.data.eval_split)
  )
  shapes = {batch["image"].shape for batch in loader}
  assert len(made) == 1
  assert made[0]._cache_size() == len(shapes)


def test_the_metric_writer_writes_scalars_without_loading_pytorch(tmp_path):
  """tensorboardX imports PyTorch when it is installed (CI installs it) to accept torch
  tensors, which the trainer never logs; the writer is made with PyTorch hidden, and
  PyTorch imports as usual afterwards."""
  require_torch()  # without it there is nothing to hide; checked without importing it
  script = textwrap.dedent(f"""
      import sys
      from pathlib import Path
      from cfrnet_jax.training import trainer
      writer = trainer._metric_writer(Path({str(tmp_path)!r}))
      writer.add_scalar("train/loss", 1.5, 3)
      writer.close()
      print("torch loaded:", "torch" in sys.modules)
      import torch
      print("torch after:", torch.__version__)
      """)
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
  )
  assert "torch loaded: False" in result.stdout and "torch after:" in result.stdout
  from tensorboardX.proto.event_pb2 import Event

  [events] = (tmp_path / "tensorboard").iterdir()
  data, records = events.read_bytes(), []
  while data:  # TFRecord: 8-byte length, 4-byte CRC, the record, 4-byte CRC
    length = int.from_bytes(data[:8], "little")
    records.append(Event.FromString(data[12 : 12 + length]))
    data = data[16 + length :]
  [scalar] = [(e.step, v.tag, v.simple_value) for e in records for v in e.summary.value]
  assert scalar == (3, "train/loss", 1.5)
