"""Kill trials: SIGKILL a training run at random moments, resume it, compare bit for bit.

    python benchmarks/fault_trials.py --trials 20            # the figure in docs/reliability.md

Trains the tiny config (`--config`, default `configs/tiny.py`; synthetic_crowd) once
without interruption to `--steps`, then, per trial, starts the same run in a fresh
workdir, kills it with SIGKILL and reruns the same command, which resumes from the
newest checkpoint and finishes. The final checkpoint of every trial is compared with the
uninterrupted run's: every array of the state (parameters, BatchNorm statistics, Adam
moments, step counters) byte for byte, and the data position (grain's iterator state) as
text; and the rerun must resume from the newest step the killed run finished, with no
checkpoint it could not read (else a fallback could hide a save that was not atomic). A
trial that fails any of these is reported as lost, with what differed; the script exits
1 if any is lost.

Where the kill falls alternates:
  save    while an asynchronous checkpoint is being written (its temporary folder
          exists), at a randomly chosen save of the run;
  random  at a uniformly random moment of the training loop (from the end of the step's
          compilation to the end of the run; the uninterrupted run's loop time).
A kill that comes after the run ended is drawn again, up to 3 times, then reported.

Predict mode (`--mode predict`): SIGKILLs `launch.py --mode predict` over a folder of
real photos (../shared/data: sht_sample's five and UCF_CC_50's fifty; `--images` for
others) at moments drawn uniformly over the uninterrupted run's wall time (start to
exit, after a first run has filled the compilation cache), and reruns the same command
to the end. Each trial must end with every picture exactly once in counts.csv, each row
equal to the uninterrupted run's (the count as written, to the last digit), every row's
overlay and points file there, and a summary whose `already_done` is the rows the killed
run had finished. The model: `--workdir`, or `--config` trained for 2 steps into the
work folder.

    python benchmarks/fault_trials.py --mode predict --trials 10   # docs/reliability.md

Runs share one JAX compilation cache, so after the first run each start costs the
imports, the restore and a cache read. Results: a Markdown table on stdout and, with
`--out`, JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMPILED = "Compiled training step"
KILL_MODES = ("save", "random")


def run_command(
    config: str,
    workdir: Path,
    data_dir: Path,
    steps: int,
    every: int,
    workers: int,
    per_call: int = 1,
) -> list[str]:
  return [
      sys.executable,
      "launch.py",
      "--config",
      config,
      "--workdir",
      str(workdir),
      f"--config.data.data_dir={data_dir}",
      f"--config.num_train_steps={steps}",
      f"--config.checkpoint_every_steps={every}",
      f"--config.log_every_steps={every}",
      "--config.eval_every_steps=1000000",
      "--config.data.eval_split=test[:1]",
      f"--config.data.num_workers={workers}",
      f"--config.keep_checkpoints={steps}",  # every step saved stays, for the report
      f"--config.steps_per_jit={per_call}",
  ]


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
  return subprocess.Popen(
      command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
  )


def wait_for_line(log: Path, proc: subprocess.Popen, text: str, timeout: float) -> float:
  """Seconds until `text` appears in the run's log."""
  began = time.monotonic()
  while text not in log.read_text(errors="replace"):
    if proc.poll() is not None:
      raise RuntimeError(
          f"the run ended (status {proc.returncode}) before '{text}':\n"
          + log.read_text(errors="replace")[-3000:]
      )
    if time.monotonic() - began > timeout:
      proc.kill()
      raise RuntimeError(f"no '{text}' in {log} after {timeout:.0f} s")
    time.sleep(0.01)
  return time.monotonic() - began


def finish(command: list[str], env: dict, log: Path, timeout: float) -> None:
  proc = start(command, env, log)
  try:
    status = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise RuntimeError(f"{' '.join(command)} did not finish in {timeout:.0f} s ({log})") from None
  if status != 0:
    raise RuntimeError(
        f"the run failed (status {status}):\n" + log.read_text(errors="replace")[-3000:]
    )


def saves_in_progress(checkpoints: Path) -> list[str]:
  try:
    return [p.name for p in checkpoints.iterdir() if "orbax-checkpoint-tmp" in p.name]
  except FileNotFoundError:
    return []


def finished_steps(checkpoints: Path) -> list[int]:
  try:
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  except FileNotFoundError:
    return []


def kill_run(command, env, log, mode, rng, loop_s, saves, timeout) -> dict | None:
  """Starts the run and SIGKILLs it per `mode`; None if it ended before the kill."""
  proc = start(command, env, log)
  checkpoints = Path(command[command.index("--workdir") + 1]) / "checkpoints"
  wait_for_line(log, proc, COMPILED, timeout)
  began = time.monotonic()
  if mode == "random":
    delay = rng.uniform(0.0, loop_s)
    while time.monotonic() - began < delay and proc.poll() is None:
      time.sleep(0.002)
  else:  # the chosen save's temporary folder appears
    target, seen, previous = rng.randint(1, saves), 0, []
    while proc.poll() is None:
      current = saves_in_progress(checkpoints)
      seen += len(set(current) - set(previous))
      previous = current
      if current and seen >= target:
        break
      if time.monotonic() - began > timeout:
        break
      time.sleep(0.001)
  if proc.poll() is not None:
    return None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return {  # what the dead run left: finished steps, and saves it did not finish
      "killed_after_s": round(time.monotonic() - began, 3),
      "save_in_progress": saves_in_progress(checkpoints),
      "steps_saved_at_kill": finished_steps(checkpoints),
  }


def read_final(workdir: Path, step: int) -> tuple[dict, str]:
  import jax
  import orbax.checkpoint as ocp

  folder = workdir / "checkpoints" / str(step)
  state = ocp.StandardCheckpointer().restore(folder / "state")
  arrays = {
      jax.tree_util.keystr(path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(state)
  }
  position = "\n".join(p.read_text() for p in sorted((folder / "data_iter").glob("process_*.json")))
  return arrays, position


def differences(reference: tuple[dict, str], trial: tuple[dict, str]) -> list[str]:
  (ref_arrays, ref_position), (arrays, position) = reference, trial
  found = [f"missing {k}" for k in sorted(set(ref_arrays) - set(arrays))]
  found += [f"extra {k}" for k in sorted(set(arrays) - set(ref_arrays))]
  for key in sorted(set(ref_arrays) & set(arrays)):
    a, b = ref_arrays[key], arrays[key]
    if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
      found.append(key)
  if position != ref_position:
    found.append("data position (grain iterator state)")
  return found


SHARED_DATA = ROOT.parent / "shared" / "data"
PHOTOS = [str(SHARED_DATA / "sht_sample" / "images"), str(SHARED_DATA / "ucf_cc_50" / "*.jpg")]


def predict_command(workdir: Path, images: list[str], out: Path) -> list[str]:
  command = [sys.executable, "launch.py", "--mode", "predict", "--workdir", str(workdir)]
  for pattern in images:
    command += ["--images", pattern]
  return command + ["--out", str(out)]


def read_counts(out: Path) -> list[dict]:
  import csv

  with open(out / "counts.csv", newline="") as table:
    return list(csv.DictReader(table))


def complete_rows(out: Path) -> int:
  """Rows with their newline in a killed run's counts.csv (the header not counted)."""
  try:
    return max(0, (out / "counts.csv").read_bytes().count(b"\n") - 1)
  except FileNotFoundError:
    return 0


def predict_losses(reference: list[dict], out: Path, rows_at_kill: int) -> list[str]:
  rows = read_counts(out)
  files = [row["file"] for row in rows]
  lost = [f"{file} counted twice" for file in sorted({f for f in files if files.count(f) > 1})]
  expected = {row["file"]: row for row in reference}
  lost += [f"{file} missing" for file in sorted(set(expected) - set(files))]
  lost += [f"{file} not in the uninterrupted run" for file in sorted(set(files) - set(expected))]
  for row in rows:
    want = expected.get(row["file"])
    if want is not None and row != want:
      lost.append(f"{row['file']}: {row['count']} != {want['count']}")
    for side in (f"overlays/{row['name']}.png", f"points/{row['name']}.csv"):
      if not (out / side).is_file():
        lost.append(f"{side} missing")
  summary = json.loads((out / "summary.json").read_text())
  if summary["already_done"] != rows_at_kill:
    lost.append(f"the rerun found {summary['already_done']} done, the kill left {rows_at_kill}")
  if summary["counted"] + summary["already_done"] != len(reference):
    lost.append(f"counted {summary['counted']} + done {summary['already_done']} != all")
  return lost


def predict_trials(args, folder: Path, env: dict, rng: random.Random) -> list[dict]:
  """Kill trials of predict mode (see the module docstring)."""
  workdir = Path(args.workdir) if args.workdir else folder / "run"
  if not args.workdir and not (workdir / "config.json").exists():
    data_dir = Path(args.data_dir or folder / "tfds")
    train = [sys.executable, "launch.py", "--config", args.config, "--workdir"]
    train += [str(workdir), f"--config.data.data_dir={data_dir}", "--config.num_train_steps=2"]
    finish(train, env, folder / "train.log", args.timeout_s)
  images = args.images or PHOTOS
  # A first run fills the compilation cache, so that the timed run, whose wall time the
  # kill moments are drawn over, starts as the trials' runs do.
  warmup = folder / "warmup"
  shutil.rmtree(warmup, ignore_errors=True)
  finish(predict_command(workdir, images, warmup), env, folder / "warmup.log", args.timeout_s)
  shutil.rmtree(warmup, ignore_errors=True)
  straight = folder / "straight"
  shutil.rmtree(straight, ignore_errors=True)
  began = time.monotonic()
  finish(predict_command(workdir, images, straight), env, folder / "straight.log", args.timeout_s)
  run_s = time.monotonic() - began
  reference = read_counts(straight)
  print(
      f"Uninterrupted predict: {len(reference)} pictures in {run_s:.1f} s ({workdir}).\n\n"
      "| trial | killed after (s) | rows at kill | counted by the rerun | outcome |\n"
      "|---|---|---|---|---|",
      flush=True,
  )
  trials = []
  for trial in range(1, args.trials + 1):
    out = folder / f"trial_{trial}"
    row = {"trial": trial, "mode": "predict"}
    for _ in range(3):
      shutil.rmtree(out, ignore_errors=True)
      proc = start(predict_command(workdir, images, out), env, folder / f"trial_{trial}.log")
      delay, kill_began = rng.uniform(0.0, run_s), time.monotonic()
      while time.monotonic() - kill_began < delay and proc.poll() is None:
        time.sleep(0.002)
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        row.update(killed_after_s=round(time.monotonic() - kill_began, 3))
        break
      proc.wait()
    if "killed_after_s" not in row:
      row["outcome"] = "not killed: the run ended before each of 3 drawn moments"
    else:
      row["rows_at_kill"] = complete_rows(out)
      finish(predict_command(workdir, images, out), env, folder / f"trial_{trial}_rerun.log",
             args.timeout_s)  # fmt: skip
      row["counted_by_rerun"] = json.loads((out / "summary.json").read_text())["counted"]
      lost = predict_losses(reference, out, row["rows_at_kill"])
      row.update(
          differences=lost,
          outcome="identical" if not lost else f"LOST: {len(lost)}: {lost[:5]}",
      )
    trials.append(row)
    print(
        f"| {trial} | {row.get('killed_after_s', '-')} | {row.get('rows_at_kill', '-')} | "
        f"{row.get('counted_by_rerun', '-')} | {row['outcome']} |",
        flush=True,
    )
    shutil.rmtree(out, ignore_errors=True)
  return trials


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", choices=("train", "predict"), default="train")
  parser.add_argument("--workdir", help="predict: a trained run (default: tiny, trained here)")
  parser.add_argument(
      "--images", action="append", help="predict: files, folders or globs (default: PHOTOS)"
  )
  parser.add_argument(
      "--config",
      default="configs/tiny.py",
      help="the run's config (configs/tiny.py:plain: the same trials with a model that "
      "starts faster); predict mode trains it only without --workdir",
  )
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--steps", type=int, default=12, help="training steps of each run")
  parser.add_argument("--checkpoint_every", type=int, default=2)
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
  parser.add_argument(
      "--steps_per_jit", type=int, default=1, help="training steps per compiled call"
  )
  parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
  parser.add_argument("--folder", help="work folder (default: a temporary one, removed)")
  parser.add_argument("--data_dir", help="synthetic_crowd's TFDS folder (built if absent)")
  parser.add_argument("--timeout_s", type=float, default=600, help="per run")
  parser.add_argument("--out", help="also write the trials as JSON here")
  args = parser.parse_args(argv)
  if args.trials < 1 or (args.mode == "train" and args.steps < 2 * args.checkpoint_every):
    parser.error("need --trials >= 1 and --steps >= 2 x --checkpoint_every")

  folder = Path(args.folder or tempfile.mkdtemp(prefix="fault_trials_"))
  folder.mkdir(parents=True, exist_ok=True)
  data_dir = Path(args.data_dir or folder / "tfds")
  env = {
      **os.environ,
      "PYTHONUNBUFFERED": "1",
      "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR")
      or str(folder / "jax_cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }
  rng = random.Random(args.seed)
  if args.mode == "predict":
    began = time.monotonic()
    trials = predict_trials(args, folder, env, rng)
    identical = sum(t["outcome"] == "identical" for t in trials)
    print(
        f"\n{identical} of {len(trials)} trials: every picture once, every count the "
        f"uninterrupted run's; {time.monotonic() - began:.0f} s in all.",
        flush=True,
    )
    return _finish(args, folder, trials, identical)
  command = lambda workdir: run_command(
      args.config,
      workdir,
      data_dir,
      args.steps,
      args.checkpoint_every,
      args.workers,
      args.steps_per_jit,
  )
  saves = args.steps // args.checkpoint_every
  began = time.monotonic()

  print(
      f"Uninterrupted run: {args.config}, {args.steps} steps, a checkpoint every "
      f"{args.checkpoint_every}, {args.workers} grain workers ({folder}).",
      flush=True,
  )
  straight = folder / "straight"
  shutil.rmtree(straight, ignore_errors=True)
  proc = start(command(straight), env, folder / "straight.log")
  wait_for_line(folder / "straight.log", proc, COMPILED, args.timeout_s)
  loop_began = time.monotonic()
  if proc.wait(timeout=args.timeout_s) != 0:
    raise SystemExit((folder / "straight.log").read_text()[-3000:])
  loop_s = time.monotonic() - loop_began  # the loop, the final evaluation and the exit
  reference = read_final(straight, args.steps)
  print(f"  {loop_s:.1f} s from compiled to exit", flush=True)

  trials = []
  print(
      "| trial | kill | killed after (s) | save being written | steps saved | resumed from "
      "| outcome |\n|---|---|---|---|---|---|---|",
      flush=True,
  )
  for trial in range(1, args.trials + 1):
    mode = KILL_MODES[(trial - 1) % len(KILL_MODES)]
    workdir = folder / f"trial_{trial}"
    kill = None
    for _ in range(3):
      shutil.rmtree(workdir, ignore_errors=True)
      kill = kill_run(
          command(workdir),
          env,
          folder / f"trial_{trial}_killed.log",
          mode,
          rng,
          loop_s,
          saves,
          args.timeout_s,
      )
      if kill is not None:
        break
    row = {"trial": trial, "mode": mode}
    if kill is None:
      row["outcome"] = "not killed: the run ended before each of 3 drawn moments"
    else:
      resumed_log = folder / f"trial_{trial}_resumed.log"
      finish(command(workdir), env, resumed_log, args.timeout_s)
      text = resumed_log.read_text(errors="replace")
      # A run killed after its last save resumes as a finished run, from that step.
      match = re.search(r"(?:Resumed from the checkpoint of step|finished at step) (\d+)", text)
      lost = differences(reference, read_final(workdir, args.steps))
      resumed_from = int(match.group(1)) if match else 0
      newest = max(kill["steps_saved_at_kill"], default=0)
      if resumed_from != newest:  # a fallback would hide a save that was not atomic
        lost.append(f"resumed from step {resumed_from}, not the newest saved, {newest}")
      if "cannot be read" in text:
        lost.append("a checkpoint the killed run finished could not be read")
      row.update(
          killed_after_s=kill["killed_after_s"],
          save_in_progress=kill["save_in_progress"],
          steps_saved_at_kill=kill["steps_saved_at_kill"],
          resumed_from=resumed_from,
          differences=lost,
          outcome="bit-identical" if not lost else f"LOST: {len(lost)} differ: {lost[:5]}",
      )
    trials.append(row)
    print(
        f"| {trial} | {mode} | {row.get('killed_after_s', '-')} | "
        f"{', '.join(row.get('save_in_progress', [])) or '-'} | "
        f"{row.get('steps_saved_at_kill', '-')} | {row.get('resumed_from', '-')} | "
        f"{row['outcome']} |",
        flush=True,
    )
    shutil.rmtree(workdir, ignore_errors=True)

  identical = sum(t["outcome"] == "bit-identical" for t in trials)
  during_save = sum(bool(t.get("save_in_progress")) for t in trials)
  print(
      f"\n{identical} of {len(trials)} trials bit-identical to the uninterrupted run "
      f"({during_save} killed while a checkpoint was being written); "
      f"{time.monotonic() - began:.0f} s in all.",
      flush=True,
  )
  return _finish(args, folder, trials, identical)


def _finish(args, folder: Path, trials: list[dict], identical: int) -> int:
  """Writes `--out`, removes a temporary work folder; status 0 when every trial held."""
  if args.out:
    Path(args.out).write_text(json.dumps({"trials": trials, "identical": identical}, indent=1))
  if not args.folder:
    shutil.rmtree(folder, ignore_errors=True)
  return 0 if identical == len(trials) else 1


if __name__ == "__main__":
  sys.exit(main())
