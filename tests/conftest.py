"""Shared test fixtures: the tiny model of `configs/tiny.py`, datasets and runs built once.

Compiled programs are shared too: JAX's persistent compilation cache, in
`.pytest_cache/jax_compilation_cache` unless JAX_COMPILATION_CACHE_DIR names another
folder, is used by this process and by the subprocesses it starts (`launch.py`,
multi-device scripts), so a program compiled by one test is read, not compiled again, by
the next test or test run that needs it. Tests that count compilations turn it off
(`without_compilation_cache`).
"""

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import scipy.io
from absl import flags
from filelock import FileLock

from configs import tiny

# Before JAX is imported (subprocesses inherit the environment).
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax_compilation_cache")
)
# Programs that compile in under a second (eager ops) are not worth a file each.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The test session is the application: grain's worker processes read absl flags.
flags.FLAGS.mark_as_parsed()


def modules_imported_by(imports: str) -> set[str]:
  """The modules a fresh Python process has loaded after running `imports`."""
  script = f"import sys\n{imports}\nprint(' '.join(sorted(sys.modules)))"
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
  )
  return set(result.stdout.split())


@contextlib.contextmanager
def without_compilation_cache():
  import jax

  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", True)


# Every ablation of the paper's Tables 1-3, as overrides of the full model.
ABLATIONS = {
    "full": {},
    "fusion_add": {"fusion": "add"},
    "fusion_concat": {"fusion": "concat"},
    "no_gam": {"use_gam": False},
    "no_dhp": {"use_dhp": False},
    "no_gam_no_dhp": {"use_gam": False, "use_dhp": False},
    "no_hierarchical": {"hierarchical": False},
    "no_axial": {"axial": False},
    "no_decoders": {"hierarchical": False, "axial": False},
}


@contextlib.contextmanager
def serving(flags: list[str], ready: str):
  """`launch.py --mode=serve --port=0 FLAGS` in a subprocess until the block ends; yields
  the match of the regular expression `ready` (first group: the URL) in its log."""
  process = subprocess.Popen(
      [sys.executable, "launch.py", "--mode=serve", "--port=0", *flags],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  lines = []
  try:
    for line in process.stdout:
      lines.append(line)
      found = re.search(ready, line)
      if found:
        break
    else:
      pytest.fail(
          f"launch.py --mode serve {' '.join(flags)} did not start:\n" + "".join(lines[-30:])
      )
    threading.Thread(target=lambda: [lines.append(x) for x in process.stdout], daemon=True).start()
    yield found
  finally:
    process.terminate()
    process.wait(timeout=30)


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  """`configs/tiny.py`'s model (the paper's structure, narrow) with `overrides`."""
  config = tiny.get_config().model
  config.update(overrides)
  return config


@pytest.fixture
def tiny_config():
  return tiny_model_config()


def tiny_train_config(
    data_dir: str | None, variant: str = "", **overrides
) -> ml_collections.ConfigDict:
  """`configs/tiny.py` (`:plain` with `variant="plain"`) reading datasets from
  `data_dir`, with `overrides`."""
  config = tiny.get_config(variant)
  config.data.data_dir = data_dir
  config.update(overrides)
  return config


def built_once(tmp_path_factory, name: str, build) -> Path:
  """The folder `name`, filled by `build(folder)` in exactly one process of the test
  session: with pytest-xdist's worker processes, the first to get here builds it while
  the others wait, then all share it."""
  root = _session_folder(tmp_path_factory)
  folder, done = root / name, root / f"{name}.done"
  with FileLock(str(root / f"{name}.lock")):
    if not done.exists():
      folder.mkdir(exist_ok=True)
      build(folder)
      done.touch()
  return folder


@pytest.fixture
def collectives_alone(tmp_path_factory):
  """Holds this session's lock for the tests whose XLA collectives run on the CPU: 8
  virtual devices in one process, or two processes joined by gloo. Run side by side on 2
  cores, the 8 devices' threads can miss XLA's 40 s rendezvous deadline (the process then
  aborts), so these tests take turns. They are all slow and start first, so a worker may
  wait here at the start of a whole run."""
  with FileLock(str(_session_folder(tmp_path_factory) / "collectives.lock")):
    yield


def _session_folder(tmp_path_factory) -> Path:
  """This test session's temporary folder, shared by its pytest-xdist workers."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """synthetic_crowd, built once per test session."""
  from tfds_crowd.build import build

  return str(built_once(tmp_path_factory, "tfds", lambda d: build("synthetic_crowd", str(d))))


def _trained_once(tmp_path_factory, data_dir: str, name: str, variant: str = "") -> Path:
  """A finished run of `configs/tiny.py` (`variant`) trained in exactly one process: 2
  steps, evaluated on 4 test images at step 2 and ranked by it (`best_on_test`, as the
  checkpoint tests need a metrics file); `train_and_evaluate`'s result beside it."""
  from cfrnet_jax.training import trainer

  config = tiny_train_config(
      data_dir, variant, num_train_steps=2, eval_every_steps=2, log_every_steps=1,
      best_on_test=True,
  )  # fmt: skip

  def train(folder: Path):
    metrics = trainer.train_and_evaluate(config, folder)
    (folder.parent / f"{name}_metrics.json").write_text(json.dumps(metrics))

  return built_once(tmp_path_factory, name, train)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, synthetic_data_dir):
  """A finished tiny run, shared by the tests that restore or predict from a workdir;
  they must not change it (tests that write into a workdir copy it first)."""
  return _trained_once(tmp_path_factory, synthetic_data_dir, "trained_run")


@pytest.fixture(scope="session")
def trained_plain_workdir(tmp_path_factory, synthetic_data_dir):
  """The same run of `configs/tiny.py:plain`: the source of the fine-tuning tests and the
  model of predict's command-line test and trials."""
  return _trained_once(tmp_path_factory, synthetic_data_dir, "trained_plain_run", "plain")


@pytest.fixture(scope="session")
def trained_run_metrics(trained_workdir) -> dict:
  """What `train_and_evaluate` returned for `trained_workdir`."""
  return json.loads((trained_workdir.parent / "trained_run_metrics.json").read_text())


def pytest_collection_modifyitems(items):
  """The slow tests first (a stable sort): a run of everything then ends with short
  tests that spread over the workers, not with one long trial on one worker."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
  """A folder of ../shared/data; CI must have it, a user's fresh clone may not."""
  path = SHARED_DATA / name
  if not path.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"{path} is missing: CI must run the real-data tests.")
    pytest.skip(f"{path} is absent (real data lives in ../shared/data beside the repo).")
  return path


def sht_sample_annotations(k: int) -> tuple[Path, np.ndarray]:
  """IMG_k of ../shared/data/sht_sample: the photo's path and its (N, 2) head points (x, y)."""
  from tfds_crowd.matlab import struct_field

  sample = shared_data("sht_sample")
  truth = sample / "ground-truth" / f"GT_IMG_{k}.mat"
  mat = scipy.io.loadmat(truth)
  points = struct_field(mat, ("image_info", "location"), str(truth))
  return sample / "images" / f"IMG_{k}.jpg", np.asarray(points, np.float64).reshape(-1, 2)


def require_torch() -> None:
  """PyTorch installed, checked without importing it: CI installs it
  (requirements-dev.txt) and must run the tests that need it; elsewhere they skip when it
  is absent."""
  if importlib.util.find_spec("torch") is None:
    if os.environ.get("CI"):
      pytest.fail("CI installs PyTorch (requirements-dev.txt), and it is missing.")
    pytest.skip("needs PyTorch (requirements-dev.txt)")


def import_torch():
  """PyTorch, for the tests that need it (`require_torch`; outside CI an install that
  fails to import skips too)."""
  require_torch()
  if os.environ.get("CI"):
    import torch

    return torch
  return pytest.importorskip("torch", reason="needs PyTorch (requirements-dev.txt)")
