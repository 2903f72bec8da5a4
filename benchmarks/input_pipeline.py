"""Training crops per second of the input pipeline, and what the training step consumes.

    python benchmarks/input_pipeline.py [--batches 10] [--workers 0 1 2] [--model paper]
    python benchmarks/input_pipeline.py --workers 0 --batches 2 --step_runs 1 --model smoke

1. Builds UCF_CC_50 from ../shared/data/ucf_cc_50 (real images, 4 to 4,633 heads) into a
   temporary data dir and times the training loader (decode, crop, flip, grayscale,
   padded points) at batch 32 with 0, 1 and 2 grain worker processes.
2. Times, on this machine's default JAX device, what the pipeline leaves to the jitted
   step (`train_step.step_inputs`, the step's own code): normalisation and the
   density/foreground targets of the four heads for those crops, i.e. what rendering
   targets on the host would cost instead.
3. Times the product's training step (`train_step.jit_train_step`: targets, forward, the
   config's loss, backward, Adam) on 4 of those crops: the training step's consumption
   here. `--model smoke`: a small model, to check the script quickly on a CPU.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.batches import MODELS, compiled_train_step, model_config  # noqa: E402
from cfrnet_jax.data import pipeline  # noqa: E402
from cfrnet_jax.models.cfrnet import HEAD_STRIDES  # noqa: E402
from cfrnet_jax.training import step_cost, train_step  # noqa: E402
from configs import ucf_cc_50  # noqa: E402
from tfds_crowd.build import build  # noqa: E402

STEP_BATCH = 4  # crops per timed training step: the paper's batch.


def median_seconds(function, runs: int) -> float:
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(function())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_train_step(config, host_batch: dict, runs: int) -> tuple[float, step_cost.StepCost]:
  """Median seconds of the product's training step on `host_batch` (after one warm-up
  step), and XLA's cost of the compiled step."""
  step, compiled = compiled_train_step(config, host_batch)
  jax.block_until_ready(step())
  return median_seconds(step, runs), step_cost.step_cost(compiled)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ucf_cc_50")
  )
  parser.add_argument("--batches", type=int, default=10, help="timed batches")
  parser.add_argument(
      "--workers", type=int, nargs="+", default=[0, 1, 2], help="-1: data.num_workers' automatic"
  )
  parser.add_argument("--step_runs", type=int, default=3)
  parser.add_argument("--model", choices=MODELS, default="paper", help="part 3's model")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument(
      "--loader_only", action="store_true", help="only part 1 (crops/s of the loader)"
  )
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags; none are used

  config = ucf_cc_50.get_config()
  config.batch_size = args.batch_size
  print(
      f"# input_pipeline  {datetime.date.today()}  {platform.machine()}  "
      f"{os.cpu_count()} cpus  jax {jax.__version__} on {jax.devices()[0].platform}"
  )
  with tempfile.TemporaryDirectory() as data_dir:
    build("ucf_cc_50", data_dir, args.shared)
    config.data.data_dir = data_dir
    source = pipeline.open_split(config.data, "fold1+fold2+fold3+fold4+fold5")
    print(f"| workers | crops/s (batch {config.batch_size}) | batches timed |")
    print("|---|---|---|")
    for requested in args.workers:
      config.data.num_workers = requested
      config.data.num_workers = workers = pipeline.worker_count(config.data)
      iterator = iter(pipeline.create_train_loader(config, source))
      batch = next(iterator)  # start-up (worker processes) is not timed
      start = time.perf_counter()
      for _ in range(args.batches):
        batch = next(iterator)
      rate = args.batches * config.batch_size / (time.perf_counter() - start)
      print(f"| {workers} | {rate:.1f} | {args.batches} |", flush=True)
  if args.loader_only:
    return

  heads = batch["valid"].sum(1)
  preprocess = jax.jit(functools.partial(train_step.step_inputs, config))
  on_device = jax.device_put(batch)
  jax.block_until_ready(preprocess(on_device))
  seconds = median_seconds(lambda: preprocess(on_device), 5)
  platform_name = jax.devices()[0].platform
  strides = ", ".join(str(s) for s in sorted(set(HEAD_STRIDES.values())))
  print(
      f"\nnormalise + targets (strides {strides}) for {config.batch_size} crops, "
      f"{int(heads.min())}-{int(heads.max())} heads each (max_points "
      f"{batch['valid'].shape[1]}), jitted on {platform_name}: {seconds * 1e3:.1f} ms = "
      f"{config.batch_size / seconds:.0f} crops/s"
  )

  config.model = model_config(args.model).model
  small = {key: value[:STEP_BATCH] for key, value in batch.items()}
  seconds, cost = time_train_step(config, small, args.step_runs)
  print(
      f"{args.model} model training step (train_step.jit_train_step, loss "
      f"{config.loss.level_balance!r}), batch {STEP_BATCH} at {config.data.crop_size}x"
      f"{config.data.crop_size} on {platform_name}: {seconds:.2f} s = "
      f"{STEP_BATCH / seconds:.1f} crops/s (median of {args.step_runs}; XLA plans "
      f"{cost.memory_bytes / 1e9:.2f} GB)"
  )


if __name__ == "__main__":
  main()
