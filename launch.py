"""Train or evaluate CFRNet, or count people in your own pictures with a trained run.

    python launch.py --config configs/default.py --workdir runs/quickstart
    python launch.py --config configs/shha.py --workdir runs/shha --config.batch_size=8
    python launch.py --config configs/shha.py --workdir runs/shha --mode evaluate
    python launch.py --mode predict --workdir runs/shha --images "photos/*.jpg" --out results
    python launch.py --mode predict --workdir runs/shha --video clip.mp4 --every_seconds 1 \
        --regions regions.json --out results
    python launch.py --mode serve --workdir runs/shha --port 8000
    python launch.py --mode serve --workdir runs/shha --annotate my_pictures/ --token auto

The same command runs on one CPU, one GPU, a multi-GPU host or several hosts: it uses
every device it sees, along the mesh's `data` axis. On several hosts, set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run under SLURM or on
a TPU pod slice, where JAX finds them itself) and start it on every host.
"""

import contextlib
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file in configs/.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs, evaluation results.", required=True
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "evaluate", "predict", "serve"],
    "train (resumes from the workdir's checkpoint if there is one), "
    "evaluate (the best checkpoint on the evaluation split), "
    "predict (the best checkpoint on --images and --video) or "
    "serve (a web page that counts the pictures dropped on it, or with --annotate helps "
    "annotate a folder).",
)
_SPLIT = flags.DEFINE_string(
    "split",
    None,
    "evaluate: the split (default: the config's "
    "evaluation split, e.g. test; nwpu_crowd's test writes a "
    "submission file).",
)


_IMAGES = flags.DEFINE_multi_string(
    "images",
    None,
    "predict: image files, directories (searched recursively) or glob patterns; repeatable.",
)
_VIDEO = flags.DEFINE_multi_string(
    "video", None, "predict: a video file (needs the `video` extra: PyAV); repeatable."
)
_EVERY_FRAMES = flags.DEFINE_integer(
    "every_frames", None, "predict --video: count frames 0, N, 2N, ... (default: every frame)."
)
_EVERY_SECONDS = flags.DEFINE_float(
    "every_seconds", None, "predict --video: count one frame every T seconds instead."
)
_VIDEO_OVERLAY = flags.DEFINE_bool(
    "video_overlay", False, "predict --video: also write a video of the sampled frames' overlays."
)
_REGIONS = flags.DEFINE_string(
    "regions",
    None,
    "predict: a JSON file of named polygons in picture pixels "
    '({"regions": [{"name": "gate", "polygon": [[x, y], ...]}]}), each counted separately.',
)
_OUT = flags.DEFINE_string("out", None, "predict: output directory (default: WORKDIR/predictions).")
_SAVE_DENSITY = flags.DEFINE_bool(
    "save_density", False, "predict: also write each raw density map as a .npy file."
)
_STEP = flags.DEFINE_integer(
    "step",
    None,
    "predict, serve: the checkpoint step (default: the best by evaluation MAE, else the latest).",
)
_HOST = flags.DEFINE_string(
    "host", "127.0.0.1", "serve: address to listen on (0.0.0.0: every network interface)."
)
_PORT = flags.DEFINE_integer("port", 8000, "serve: port (0: any free one; the log says which).")
_ANNOTATE = flags.DEFINE_string(
    "annotate",
    None,
    "serve: a folder of pictures to annotate with the model's head points as proposals; "
    "each picture's points are saved beside it as LabelMe JSON (docs/annotate.md).",
)
_LABEL = flags.DEFINE_string("label", "head", "serve --annotate: the label of the saved points.")
_TOKEN = flags.DEFINE_string(
    "token",
    None,
    "serve: a token every request must carry (auto: a random one, printed); needed when "
    "--host is not a loopback address.",
)
_MAX_UPLOAD_MB = flags.DEFINE_float(
    "max_upload_mb",
    None,
    "serve: largest picture file taken, in MB "
    "(default: cfrnet_jax/inference/serve.py's DEFAULT_MAX_UPLOAD_MB).",
)
_QUEUE_SIZE = flags.DEFINE_integer(
    "queue_size",
    None,
    "serve: pictures that may wait for the model while one is counted; one more is "
    "answered 503 with Retry-After (default: serve.py's DEFAULT_QUEUE_SIZE).",
)
_MAX_CONNECTIONS = flags.DEFINE_integer(
    "max_connections",
    None,
    "serve: connections open at once; one more is answered 503 "
    "(default: inference/http_limits.py's Limits).",
)
_READ_DEADLINE_S = flags.DEFINE_float(
    "read_deadline_s",
    None,
    "serve: seconds a request's line and headers may take to arrive (its body: this plus "
    "its size at 100 kB/s); a slower client is answered 408 (default: http_limits.Limits).",
)


def _predict(config):
  """Counts the user's images with the workdir's checkpoint. `--config` is optional here:
  without it the run's own `config.json` is used; a given one may change the prediction
  settings but not what changes the counts (`run_config.check_counting_config`)."""
  from cfrnet_jax.inference import video_io
  from cfrnet_jax.inference.counter import CrowdCounter
  from cfrnet_jax.inference.predict_mode import predict_files, predict_videos
  from cfrnet_jax.inference.predict_table import OutputMismatchError
  from cfrnet_jax.inference.regions import load_regions

  if not _IMAGES.value and not _VIDEO.value:
    raise app.UsageError(
        "--mode predict needs --images (files, directories or globs) or --video (files)."
    )
  # Bad regions, sampling flags or a missing `video` extra fail now, before a checkpoint
  # is restored and the pictures are counted.
  regions = load_regions(_REGIONS.value) if _REGIONS.value else None
  video_flags = (_EVERY_FRAMES.value, _EVERY_SECONDS.value, _VIDEO_OVERLAY.value)
  if _VIDEO.value:
    try:
      video_io.check_sampling(_EVERY_FRAMES.value, _EVERY_SECONDS.value)
    except ValueError as error:
      raise app.UsageError(f"--every_frames / --every_seconds: {error}") from error
    video_io.require_video_extra()
  elif any(flag not in (None, False) for flag in video_flags):
    raise app.UsageError("--every_frames, --every_seconds and --video_overlay need --video.")
  counter = CrowdCounter.from_checkpoint(_WORKDIR.value, _STEP.value, config)
  out = _OUT.value or os.path.join(_WORKDIR.value, "predictions")
  if _IMAGES.value:
    try:
      predict_files(counter, _IMAGES.value, out, save_density=_SAVE_DENSITY.value, regions=regions)
    except OutputMismatchError as error:
      raise app.UsageError(str(error)) from error
  if _VIDEO.value:
    predict_videos(
        counter,
        _VIDEO.value,
        out,
        every_frames=_EVERY_FRAMES.value,
        every_seconds=_EVERY_SECONDS.value,
        regions=regions,
        overlay_video=_VIDEO_OVERLAY.value,
    )


def _serve(config):
  """Serves the counting page with the workdir's checkpoint (`inference/serve.py`), or
  the annotation page of `--annotate` (`inference/annotate.py`). Without a token, only a
  loopback `--host` is served: anyone who reaches the port could count (and, annotating,
  write files); other addresses exit with status 2."""
  from cfrnet_jax.inference.counter import CrowdCounter
  from cfrnet_jax.inference.http_limits import Limits
  from cfrnet_jax.inference.serve import (
      DEFAULT_MAX_UPLOAD_MB,
      DEFAULT_QUEUE_SIZE,
      is_loopback,
      resolve_token,
      serve,
  )

  token = resolve_token(_TOKEN.value)
  if token is None and not is_loopback(_HOST.value):
    logging.error(
        "--host %s is reachable from other machines: serving it needs --token T (or --token "
        "auto), which every request must then carry.",
        _HOST.value,
    )
    sys.exit(2)
  if _LABEL.value != _LABEL.default and not _ANNOTATE.value:
    raise app.UsageError("--label needs --annotate.")
  if _ANNOTATE.value and not os.path.isdir(os.path.expanduser(_ANNOTATE.value)):
    raise app.UsageError(f"--annotate {_ANNOTATE.value}: no such folder.")
  queue_size = DEFAULT_QUEUE_SIZE if _QUEUE_SIZE.value is None else _QUEUE_SIZE.value
  if queue_size < 0:
    raise app.UsageError(f"--queue_size must be 0 or more, got {queue_size}.")
  bounds = {"max_connections": _MAX_CONNECTIONS.value, "header_deadline_s": _READ_DEADLINE_S.value}
  try:
    limits = Limits(**{key: value for key, value in bounds.items() if value is not None})
  except ValueError as error:
    raise app.UsageError(f"--max_connections, --read_deadline_s: {error}") from error
  counter = CrowdCounter.from_checkpoint(_WORKDIR.value, _STEP.value, config)
  max_upload_mb = DEFAULT_MAX_UPLOAD_MB if _MAX_UPLOAD_MB.value is None else _MAX_UPLOAD_MB.value
  annotation = None
  if _ANNOTATE.value:
    from cfrnet_jax.inference.annotate import AnnotationService

    try:
      annotation = AnnotationService(counter, _ANNOTATE.value, _LABEL.value)
    except ValueError as error:
      raise app.UsageError(str(error)) from error
    logging.info("Annotating %d pictures of %s.", len(annotation.pictures), annotation.root)
  try:
    serve(counter, _HOST.value, _PORT.value, max_upload_mb, token, annotation, queue_size, limits)
  except OSError as error:
    logging.error("%s", error)
    sys.exit(1)


def _initialize_distributed():
  """Joins the other hosts when the environment describes a multi-host job."""
  import jax

  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  else:
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") + 1
    if slurm_tasks > 1 or tpu_workers > 1:
      jax.distributed.initialize()


class _LogFilter:
  """What the command shows: INFO lines of this project only (libraries such as Orbax
  log every save at INFO); warnings and errors from everywhere, except Orbax's notice at
  every training save that it got no metrics (by design: only evaluations have an MAE
  to rank checkpoints by)."""

  def filter(self, record) -> bool:
    if record.levelno <= std_logging.INFO:
      return any(part in record.pathname for part in ("cfrnet_jax", "tfds_crowd", "launch.py"))
    return "did not provide metrics" not in record.getMessage()


def main(argv):
  del argv
  logging.get_absl_logger().addFilter(_LogFilter())
  if _MODE.value != "serve":  # predict: each process counts its share of the files
    _initialize_distributed()
  from cfrnet_jax import accelerators

  accelerators.report()
  if _MODE.value in ("predict", "serve"):
    with _checkpoint_errors_as_messages():
      return (_predict if _MODE.value == "predict" else _serve)(_CONFIG.value)
  import jax

  from cfrnet_jax import cross_validation, evaluation
  from cfrnet_jax.data import pipeline
  from cfrnet_jax.training import finetune, trainer
  from cfrnet_jax.training.preemption import Preempted
  from tfds_crowd.build import ensure_synthetic

  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/default.py")
  if jax.process_index() == 0:
    ensure_synthetic(config.data)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("datasets ready")
  with _checkpoint_errors_as_messages():
    if _MODE.value == "train":
      # Fine-tuning trains the source run's model: its fields, unless the command line
      # contradicts them (refused); a resumed one, those of its own config.json.
      config = finetune.inherit_model(
          config, config_flags.get_override_values(flags.FLAGS[_CONFIG.name]), _WORKDIR.value
      )
      try:
        cross_validation.run_folds(config, _WORKDIR.value, trainer.train_and_evaluate)
      except Preempted as stopped:  # the checkpoints are intact: exit as a finished run
        logging.warning("%s", stopped)
    else:
      cross_validation.run_folds(
          pipeline.with_folder_splits(config),  # a folder dataset without val: test
          _WORKDIR.value,
          lambda fold_config, workdir: (
              evaluation.evaluate_checkpoint(fold_config, workdir, _SPLIT.value)
          ),
          summary_name=f"folds_evaluation_{_SPLIT.value or 'eval_split'}.json",
      )


@contextlib.contextmanager
def _checkpoint_errors_as_messages():
  """A checkpoint that cannot be written or read, a config that does not match the
  run's own, or backbone weights that cannot be fetched or read, end the command with
  the message (which says what to do) and status 1, not a traceback."""
  from cfrnet_jax import checkpoint_repair, checkpointing, run_config
  from cfrnet_jax.models import pretrained

  try:
    yield
  except (
      checkpointing.CheckpointSaveError,
      run_config.ConfigMismatchError,
      checkpoint_repair.DamagedCheckpointError,
      pretrained.DownloadError,
      pretrained.WeightsError,
  ) as error:
    logging.error("%s", error)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
