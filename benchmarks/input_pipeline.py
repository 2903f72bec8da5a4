"""Training crops per second of the input pipeline, and what the training step consumes.

    python benchmarks/input_pipeline.py [--batches 10] [--workers 0 1 2]

1. Builds UCF_CC_50 from ../shared/data/ucf_cc_50 (real images, 4 to 4,633 heads) into a
   temporary data dir and times the training loader (decode, crop, flip, grayscale,
   padded points) at batch 32 with 0, 1 and 2 grain worker processes.
2. Times, on this machine's CPU through JAX, what the pipeline leaves to the jitted step:
   normalisation and the density/foreground targets of the four heads for those crops,
   i.e. what rendering targets on the host would cost instead.
3. Times the paper-size model's forward+backward with targets at batch 4 on CPU, the
   training step's consumption here.
"""

from __future__ import annotations

import argparse
import datetime
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
from flax import nnx  # noqa: E402

import cfrnet_jax  # noqa: E402
from cfrnet_jax.data import pipeline  # noqa: E402
from cfrnet_jax.data.device_ops import normalize_images  # noqa: E402
from cfrnet_jax.data.targets import batch_density_targets  # noqa: E402
from cfrnet_jax.training.losses import cfrnet_loss  # noqa: E402
from configs import ucf_cc_50  # noqa: E402
from tfds_crowd.build import build  # noqa: E402

HEAD_STRIDE_SET = (4, 8, 16)


def median_seconds(function, runs: int) -> float:
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(function())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def device_preprocess(config):
  """What the jitted step does with a host batch before the model."""

  def preprocess(batch):
    images = normalize_images(
        batch["image"], batch["valid_size"], config.data.mean, config.data.std
    )
    targets = batch_density_targets(
        batch["points"],
        batch["valid"],
        batch["image"].shape[1:3],
        valid_size=batch["valid_size"],
        strides=HEAD_STRIDE_SET,
        sigma=config.targets.sigma,
        foreground_radius=config.targets.foreground_radius,
    )
    return images, targets

  return jax.jit(preprocess)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ucf_cc_50")
  )
  parser.add_argument("--batches", type=int, default=10, help="timed batches of 32")
  parser.add_argument(
      "--workers", type=int, nargs="+", default=[0, 1, 2], help="-1: data.num_workers' automatic"
  )
  parser.add_argument("--step_runs", type=int, default=3)
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
    for workers in [pipeline.worker_count(w) for w in args.workers]:
      config.data.num_workers = workers
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
  preprocess = device_preprocess(config)
  on_device = jax.device_put(batch)
  jax.block_until_ready(preprocess(on_device))
  seconds = median_seconds(lambda: preprocess(on_device), 5)
  print(
      f"\nnormalise + targets (strides 4, 8, 16) for 32 crops, {int(heads.min())}-"
      f"{int(heads.max())} heads each (max_points {batch['valid'].shape[1]}), jitted on "
      f"{jax.devices()[0].platform}: {seconds * 1e3:.1f} ms = "
      f"{32 / seconds:.0f} crops/s"
  )

  model = cfrnet_jax.build_model(config.model, 0)
  small = {key: value[:4] for key, value in on_device.items()}

  @nnx.jit
  def loss_and_grad(model, batch):
    images, targets = preprocess(batch)
    return nnx.value_and_grad(
        lambda m: cfrnet_loss(m(images), targets, config.loss.gamma, config.model.density_scale)[0]
    )(model)

  jax.block_until_ready(loss_and_grad(model, small))
  seconds = median_seconds(lambda: loss_and_grad(model, small), args.step_runs)
  print(
      f"paper model forward+backward with targets, batch 4 at 256x256 on "
      f"{jax.devices()[0].platform}: {seconds:.2f} s = {4 / seconds:.1f} crops/s "
      f"(median of {args.step_runs})"
  )


if __name__ == "__main__":
  main()
