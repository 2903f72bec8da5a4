"""Does the quick-start-sized CFRNet learn real crowds, and which choices help? (CPU)

    python benchmarks/real_data_study.py --ucf_dir ../shared/data/ucf_cc_50 \\
        --folder runs/study --steps 300 --seeds 0 1 \\
        --variants cfrm cfrm+area cfrm+zeros add+area concat+area \\
        --out benchmarks/results/cpu_2026-11-26/real_data_study.json

Trains `configs/default.py`'s model (the paper's structure, narrow channels, 128-pixel
crops, batch 8, cosine learning rate from 1e-3) on real UCF_CC_50, fold 1 (trained on the
other 40 images, tested on its 10), once per variant and seed, for a fixed number of
steps, through the product's own path (`trainer.train_and_evaluate`, random backbone
weights: the narrow backbone has no ImageNet weights). A variant is `+`-joined words:

  fusion:        cfrm (when not named), add, concat   (Table 1's question)
  loss balance:  sum (when not named: Eq. 11 as written; the configs' default is area), area
  density init:  lecun (when not named), zeros   (config.model.density_init)
  steps:         x2 (twice --steps, the "longer training" remedy)

Each run's last checkpoint is then analysed on the 10 test images, whole (as
evaluation sees them): the count MAE and MSE; the share of the predicted count that
lies outside the annotated foreground (cells farther than `--foreground_px` pixels, in
x or y, from every annotated head); and the same two with the segmentation gate
(`config.model.foreground_gate`) at each `--gates` threshold, computed from the same
forward pass (density x [foreground probability >= t], what the gated model returns).
The baseline predicts the 40 training images' mean count for every test image.

Runs are kept in `--folder/VARIANT/seed_S`; one whose `study.json` exists is not run
again, so an interrupted study resumes; `--report_only` tables the finished runs and
names the missing ones without training them. Prints a Markdown table (mean over seeds and
each seed's value) and writes every figure to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from scipy import ndimage  # noqa: E402

from cfrnet_jax import checkpointing, cross_validation, evaluation  # noqa: E402
from cfrnet_jax.data import pipeline  # noqa: E402
from cfrnet_jax.data.device_ops import normalize_images  # noqa: E402
from cfrnet_jax.data.geometry import ceil_div  # noqa: E402
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE  # noqa: E402
from cfrnet_jax.state import model_graphdef  # noqa: E402
from cfrnet_jax.training import trainer  # noqa: E402
from configs import default  # noqa: E402

FUSIONS = ("cfrm", "add", "concat")
BALANCES = ("sum", "area")
INITS = {"lecun": "lecun_normal", "zeros": "zeros"}
LONGER = "x2"


def variant_config(variant: str, seed: int, steps: int, data_dir: Path):
  """configs/default.py's model and recipe on UCF_CC_50 fold 1, with `variant`'s words."""
  words = variant.split("+")
  unknown = set(words) - set(FUSIONS) - set(BALANCES) - set(INITS) - {LONGER}
  if unknown:
    raise ValueError(
        f"Unknown word(s) {sorted(unknown)} in variant {variant!r}; words: "
        f"{FUSIONS + BALANCES + tuple(INITS) + (LONGER,)}."
    )
  pick = lambda options, fallback: next((w for w in words if w in options), fallback)
  steps = steps * 2 if LONGER in words else steps
  config = default.get_config()
  config.data.name = "ucf_cc_50"
  config.data.fold = 1
  config.data.max_side = 1024  # configs/ucf_cc_50.py
  config.data.max_points = 0  # from the data: UCF_CC_50 crops are dense
  config.data.data_dir = str(data_dir)
  config.seed = seed
  config.model.fusion = pick(FUSIONS, "cfrm")
  config.loss.level_balance = pick(BALANCES, "sum")
  config.model.density_init = INITS[pick(INITS, "lecun")]
  config.num_train_steps = steps
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.log_every_steps = 50
  ((_, run_config),) = cross_validation.fold_runs(config)
  return run_config


def make_analysis_fn(graphdef, data_config):
  """jit(variables, image, valid_size) -> (density, foreground probability) of the final
  head, (H/4, W/4) each, ungated (the model's `foreground_gate` is 0 here)."""

  @jax.jit
  def analyse(variables, image, valid_size):
    model = nnx.merge(graphdef, variables.params, variables.batch_stats)
    model.eval()
    outputs = model(normalize_images(image, valid_size, data_config.mean, data_config.std))
    head = outputs["heads"][model.final_head]
    foreground = jax.nn.softmax(head["seg_logits"].astype(jnp.float32), axis=-1)[..., 1]
    return head["density"][..., 0].astype(jnp.float32), foreground

  return analyse


def foreground_cells(points: np.ndarray, cells: tuple[int, int], radius_px: float) -> np.ndarray:
  """(h, w) bool: stride-4 cells within `radius_px` (in x and in y: a square) of a head;
  `points` (N, 2) (x, y) in the image's pixels."""
  mask = np.zeros(cells, bool)
  ij = np.floor(points[:, ::-1] / DENSITY_STRIDE).astype(int)
  inside = np.all((ij >= 0) & (ij < np.array(cells)), axis=1)
  mask[ij[inside, 0], ij[inside, 1]] = True
  reach = int(np.ceil(radius_px / DENSITY_STRIDE))
  return ndimage.maximum_filter(mask, size=2 * reach + 1)


def analyse_run(config, workdir: Path, gates: list[float], radius_px: float) -> dict:
  """Per test image: true count, predicted count and the count outside the foreground,
  ungated and at each gate."""
  _, variables = checkpointing.restore_variables(workdir, config.model)
  analyse = make_analysis_fn(model_graphdef(config.model), config.data)
  loader = pipeline.create_eval_loader(
      config, pipeline.open_split(config.data, config.data.eval_split)
  )
  images = []
  for batch in loader:
    density, foreground = map(np.asarray, analyse(variables, batch["image"], batch["valid_size"]))
    height, width = batch["valid_size"][0]
    cells = (ceil_div(height, DENSITY_STRIDE), ceil_div(width, DENSITY_STRIDE))
    density, foreground = density[0, : cells[0], : cells[1]], foreground[0, : cells[0], : cells[1]]
    inside = foreground_cells(batch["points"][0] * batch["scale"][0], cells, radius_px)
    row = {"filename": str(batch["filename"][0]), "true": int(batch["count"][0])}
    for gate in [0.0, *gates]:
      kept = np.where(foreground >= gate, density, 0.0)
      row[f"gate_{gate:g}"] = {
          "count": float(kept.sum()),
          "outside": float(kept[~inside].sum()),
      }
    row["foreground_area"] = float(inside.mean())
    images.append(row)
  return {"images": images}


def summarise(analysis: dict, gate: float) -> dict:
  key = f"gate_{gate:g}"
  true = np.array([row["true"] for row in analysis["images"]], float)
  predicted = np.array([row[key]["count"] for row in analysis["images"]])
  outside = np.array([row[key]["outside"] for row in analysis["images"]])
  metrics = evaluation.count_metrics(true, predicted)
  return {
      "mae": metrics["mae"],
      "mse": metrics["mse"],
      "outside_share": float(outside.sum() / max(predicted.sum(), 1e-9)),
      "predicted_total": float(predicted.sum()),
  }


def mean_count_baseline(config) -> dict:
  """MAE/MSE of predicting the training images' mean count for every test image."""
  read = lambda split: np.array(
      [int(element["count"]) for element in pipeline.open_split(config.data, split)], float
  )
  train, test = read(config.data.train_split), read(config.data.eval_split)
  metrics = evaluation.count_metrics(test, np.full_like(test, train.mean()))
  return {
      "train_mean_count": float(train.mean()),
      "test_counts": test.tolist(),
      "mae": metrics["mae"],
      "mse": metrics["mse"],
  }


def run_one(variant, seed, args) -> dict:
  workdir = args.folder / variant / f"seed_{seed}"
  done = workdir / "study.json"
  if done.exists():
    print(f"[{variant} seed {seed}] already run: {done}", flush=True)
    return json.loads(done.read_text())
  config = variant_config(variant, seed, args.steps, args.folder / "tfds")
  print(f"[{variant} seed {seed}] training {config.num_train_steps} steps in {workdir}", flush=True)
  start = time.perf_counter()
  metrics = trainer.train_and_evaluate(config, workdir)
  train_seconds = time.perf_counter() - start
  start = time.perf_counter()
  analysis = analyse_run(config, workdir, args.gates, args.foreground_px)
  result = {
      "variant": variant,
      "seed": seed,
      "steps": int(config.num_train_steps),
      "train_seconds": train_seconds,
      "analysis_seconds": time.perf_counter() - start,
      "evaluation": {k: metrics[k] for k in ("mae", "mse", "nae")},
      **analysis,
  }
  done.write_text(json.dumps(result, indent=1))
  gated = summarise(result, 0.0)
  print(
      f"[{variant} seed {seed}] MAE {gated['mae']:.1f} MSE {gated['mse']:.1f} outside "
      f"{100 * gated['outside_share']:.1f}%, {train_seconds / 60:.1f} min",
      flush=True,
  )
  return result


def table(results: list[dict], baseline: dict, gates: list[float]) -> str:
  show = lambda values, fmt: f"{fmt(statistics.mean(values))} ({', '.join(map(fmt, values))})"
  one = lambda v: f"{v:.1f}"
  pct = lambda v: f"{100 * v:.1f}%"
  lines = [
      "| variant | steps | MAE | MSE | outside foreground | "
      + " | ".join(f"MAE, gate {g:g} | outside, gate {g:g}" for g in gates)
      + " | training min |",
      "|---" * (6 + 2 * len(gates)) + "|",
  ]
  for variant in dict.fromkeys(r["variant"] for r in results):
    runs = [r for r in results if r["variant"] == variant]
    cells = [variant, str(runs[0]["steps"])]
    for gate in [0.0, *gates]:
      summaries = [summarise(r, gate) for r in runs]
      cells.append(show([s["mae"] for s in summaries], one))
      if gate == 0.0:
        cells.append(show([s["mse"] for s in summaries], one))
      cells.append(show([s["outside_share"] for s in summaries], pct))
    cells.append(show([r["train_seconds"] / 60 for r in runs], one))
    lines.append("| " + " | ".join(cells) + " |")
  lines.append(
      f"| mean-count baseline ({baseline['train_mean_count']:.0f}) | | "
      f"{baseline['mae']:.1f} | {baseline['mse']:.1f} |" + " |" * (2 + 2 * len(gates))
  )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ucf_dir", type=Path, default=Path("../shared/data/ucf_cc_50"))
  parser.add_argument("--folder", type=Path, default=Path("runs/study"))
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--variants", nargs="+", default=["cfrm", "add", "concat"])
  parser.add_argument("--gates", type=float, nargs="*", default=[0.5])
  parser.add_argument("--foreground_px", type=float, default=16.0)
  parser.add_argument("--out", type=Path, default=None)
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  logging.set_verbosity(logging.INFO)
  for variant in args.variants:
    variant_config(variant, 0, args.steps, args.folder)  # unknown words fail before training
  if not (args.folder / "tfds" / "ucf_cc_50").is_dir():
    command = [sys.executable, "-m", "tfds_crowd.build", "ucf_cc_50", "--manual_dir"]
    subprocess.run(
        [*command, str(args.ucf_dir), "--data_dir", str(args.folder / "tfds")], check=True
    )
  baseline = mean_count_baseline(variant_config("cfrm", 0, args.steps, args.folder / "tfds"))
  runs = [(v, s) for v in args.variants for s in args.seeds]
  if args.report_only:
    missing = [
        (v, s) for v, s in runs if not (args.folder / v / f"seed_{s}" / "study.json").exists()
    ]
    print(
        "Not run (left out of the table): "
        + (", ".join(f"{v} seed {s}" for v, s in missing) or "none")
    )
    runs = [run for run in runs if run not in missing]
  results = [run_one(v, s, args) for v, s in runs]
  report = table(results, baseline, args.gates)
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
                "foreground_px": args.foreground_px,
                "baseline": baseline,
                "table": report,
                "runs": results,
            },
            indent=1,
        )
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
