"""How many of your own pictures does a counter need? Fine-tuning on street photos (CPU)

    python benchmarks/finetune_study.py --ucf_dir ../shared/data/ucf_cc_50 \\
        --photos ../shared/data/sht_sample --folder runs/finetune_study \\
        --source_steps 300 --steps 60 --sizes 1 2 3 4 --seeds 0 1 --finetune_lrs 1e-4 1e-3 \\
        --out benchmarks/results/cpu_2026-12-02/finetune_study.json

A source model, `configs/default.py`'s (the paper's structure with narrow channels,
random backbone weights, 128-pixel crops), is trained on all 50 real UCF_CC_50 images
for `--source_steps`. Then, for each size k of `--sizes`, k of the five street photos
(`--photos`, in ShanghaiTech's layout) are imported with the folder importer
(`tfds_crowd.build folder --format shanghaitech_mat --splits FILE`: train = k photos,
test = the others; k = 1 trains on photo 1, k = 2 on photos 2-3, ..., a rotation so that
the rounds test on different photos) and, for each seed:

  finetuned  `configs/folder.py` with `init_from` = the source run (its model), at each
             learning rate of `--finetune_lrs` (cosine decay), `--steps` steps;
  scratch    the same model, data and steps from random weights, with the recipe the
             model was made for (`configs/default.py`: 1e-3, cosine);

through the product's own path (`finetune.inherit_model`, `trainer.train_and_evaluate`).
Reported on the test photos: the fine-tuned run's MAE before any update (the source
model as it is: its step-0 evaluation), after fine-tuning, from scratch, and the
mean-count baseline (the train photos' mean count for every test photo), with the mean
test count and the training minutes (compilation and evaluation included). A counter
is called usable here when its MAE is at most a quarter of the mean test count.

Runs are kept in `--folder`; finished ones are read back (a run's recorded result), so
an interrupted study resumes. Prints a Markdown table and writes every figure to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import flags, logging  # noqa: E402

from cfrnet_jax import evaluation  # noqa: E402
from cfrnet_jax.training import finetune, trainer  # noqa: E402
from configs import default, folder  # noqa: E402
from tfds_crowd.build import build  # noqa: E402
from tfds_crowd.folder import build_folder  # noqa: E402

PHOTOS = tuple(f"images/IMG_{k}.jpg" for k in range(1, 6))


def source_config(data_dir: Path, steps: int):
  """`configs/default.py`'s model and recipe on all of UCF_CC_50."""
  config = default.get_config()
  config.data.name = "ucf_cc_50"
  config.data.train_split = "fold1+fold2+fold3+fold4+fold5"
  config.data.eval_split = "fold1"
  config.data.max_side = 1024  # configs/ucf_cc_50.py
  config.data.max_points = 0
  config.data.data_dir = str(data_dir)
  config.num_train_steps = steps
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.log_every_steps = 50
  return config


def round_photos(size: int) -> tuple[list[str], list[str]]:
  """(train, test) photos of the round of `size`: a rotation starting at photo `size`."""
  start = size - 1
  train = [PHOTOS[(start + i) % len(PHOTOS)] for i in range(size)]
  return train, [p for p in PHOTOS if p not in train]


def import_round(photos: Path, size: int, data_dir: Path) -> str:
  """The round's dataset, imported by the folder importer with a split file."""
  name = f"street_photos_k{size}"
  train, test = round_photos(size)
  splits = data_dir / f"{name}_splits.json"
  splits.parent.mkdir(parents=True, exist_ok=True)
  splits.write_text(json.dumps({"train": train, "test": test}))
  if not (data_dir / name).is_dir():
    build_folder(
        str(photos),
        name,
        data_dir=str(data_dir),
        format="shanghaitech_mat",
        splits_file=str(splits),
    )
  return name


def run_config(start: str, name: str, data_dir: Path, source: Path, seed: int, steps: int):
  """`start`: "scratch", or "finetuned" at `configs/folder.py`'s learning rate, or
  "finetuned_lr=R" at R."""
  config = folder.get_config()
  config.data.name = name
  config.data.data_dir = str(data_dir)
  config.data.validation = False  # too few photos for a validation split: the last
  config.data.eval_split = "test"  # checkpoint is the result
  config.data.test_split = ""
  config.data.crop_size = 128  # the source model's crops
  config.batch_size = 8
  config.seed = seed
  config.num_train_steps = steps
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.log_every_steps = 20
  if start.startswith("finetuned"):
    config.init_from = str(source)
    if "=" in start:
      config.learning_rate = float(start.split("=")[1])
    return finetune.inherit_model(config)
  recipe = default.get_config()
  config.model = recipe.model
  config.backbone_weights = recipe.backbone_weights
  config.learning_rate, config.lr_schedule = recipe.learning_rate, recipe.lr_schedule
  return config


def train(config, workdir: Path) -> tuple[dict, float]:
  """The run's result and its wall minutes (0 when it had finished before)."""
  start = time.perf_counter()
  result = trainer.train_and_evaluate(config, workdir)
  return result, (time.perf_counter() - start) / 60


def counts(workdir: Path, step: int) -> list[dict]:
  return evaluation.read_predictions(workdir / "eval" / f"step_{step}" / "predictions.csv")


def run_round(size: int, args, source: Path) -> dict:
  name = import_round(args.photos, size, args.folder / "tfds")
  train_photos, test_photos = round_photos(size)
  record = {"size": size, "train": train_photos, "test": test_photos, "runs": []}
  for seed in args.seeds:
    for start in [*(f"finetuned_lr={rate:g}" for rate in args.finetune_lrs), "scratch"]:
      workdir = args.folder / f"k{size}" / start.replace("=", "") / f"seed_{seed}"
      config = run_config(start, name, args.folder / "tfds", source, seed, args.steps)
      minutes_file = workdir / "study_minutes.json"
      result, minutes = train(config, workdir)
      if minutes_file.exists():
        minutes = json.loads(minutes_file.read_text())
      else:
        minutes_file.write_text(json.dumps(minutes))
      run = {"start": start, "seed": seed, "mae": result["mae"], "minutes": minutes}
      run["images"] = counts(workdir, args.steps)
      if start != "scratch":
        run["mae_before"] = evaluation.count_metrics(
            *zip(*[(r["true_count"], r["predicted_count"]) for r in counts(workdir, 0)])
        )["mae"]
      record["runs"].append(run)
  true = [row["true_count"] for row in record["runs"][0]["images"]]
  train_counts = [
      int(example["count"])
      for example in tfds.data_source(name, split="train", data_dir=str(args.folder / "tfds"))
  ]
  record["mean_test_count"] = statistics.mean(true)
  record["baseline_mae"] = evaluation.count_metrics(
      true, [statistics.mean(train_counts)] * len(true)
  )["mae"]
  return record


def table(rounds: list[dict]) -> str:
  """Markdown: one row per round and start, mean over the seeds then each seed's figure."""
  figure = lambda values, form: (
      f"{form.format(statistics.mean(values))} ({', '.join(form.format(v) for v in values)})"
  )
  lines = [
      "| train | test | mean test count | baseline MAE | start | MAE before | MAE | minutes |",
      "|---|---|---|---|---|---|---|---|",
  ]
  stem = lambda photos: ", ".join(Path(p).stem for p in photos)
  for r in rounds:
    for start in dict.fromkeys(run["start"] for run in r["runs"]):
      runs = [run for run in r["runs"] if run["start"] == start]
      before = (
          figure([run["mae_before"] for run in runs], "{:.1f}") if "mae_before" in runs[0] else ""
      )
      lines.append(
          f"| {stem(r['train'])} | {stem(r['test'])} | {r['mean_test_count']:.1f} | "
          f"{r['baseline_mae']:.1f} | {start} | {before} | "
          f"{figure([run['mae'] for run in runs], '{:.1f}')} | "
          f"{figure([run['minutes'] for run in runs], '{:.1f}')} |"
      )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ucf_dir", type=Path, default=Path("../shared/data/ucf_cc_50"))
  parser.add_argument("--photos", type=Path, default=Path("../shared/data/sht_sample"))
  parser.add_argument("--folder", type=Path, default=Path("runs/finetune_study"))
  parser.add_argument("--source_steps", type=int, default=300)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--finetune_lrs", type=float, nargs="+", default=[1e-4, 1e-3])
  parser.add_argument("--out", type=Path, default=None)
  args = parser.parse_args(argv)
  if not all(1 <= k < len(PHOTOS) for k in args.sizes):
    parser.error(f"--sizes: each between 1 and {len(PHOTOS) - 1} (the rest are tested).")
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  logging.set_verbosity(logging.INFO)
  data_dir = args.folder / "tfds"
  if not (data_dir / "ucf_cc_50").is_dir():
    build("ucf_cc_50", str(data_dir), str(args.ucf_dir))
  source = args.folder / "source"
  source_result, source_minutes = train(source_config(data_dir, args.source_steps), source)
  if (source / "study_minutes.json").exists():
    source_minutes = json.loads((source / "study_minutes.json").read_text())
  else:
    (source / "study_minutes.json").write_text(json.dumps(source_minutes))
  rounds = [run_round(size, args, source) for size in args.sizes]
  report = table(rounds)
  print(report)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": str(datetime.date.today()),
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                "jax": jax.__version__,
                "command": " ".join(sys.argv),
                "source": {"result": source_result, "minutes": source_minutes},
                "table": report,
                "rounds": rounds,
            },
            indent=1,
        )
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
