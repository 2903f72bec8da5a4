#!/usr/bin/env bash
# Every accelerator figure of the project in one call, within 9 minutes on one H100 or H200.
#
#   bash benchmarks/device_check.sh OUT_DIR UCF_CC_50_DIR          # on a GPU host
#   bash benchmarks/device_check.sh --smoke OUT_DIR UCF_CC_50_DIR  # the same steps, small, on CPU
#
# UCF_CC_50_DIR is the folder of the official UCF_CC_50 files (copy ../shared/data/ucf_cc_50
# next to the repository on a host without it). Each section runs under its own time
# limit, cut to what is left of the whole budget, prints its rows as they are measured and
# writes them to OUT_DIR (at most 8 files: env.txt, tests.log, step_memory.log, speed.log,
# speed.json, input_pipeline.log, train.log, summary.md), so a run cut short still returns
# the rows done. A section that fails or is cut is recorded in summary.md, the next one
# runs, and the script exits non-zero at the end.
#
# Sections: (a) the PyTorch-twin test and the paper model's jitted training step on the
# device; the step's memory (XLA) for float32 and bfloat16, with and without remat, at
# batch 32; (b) benchmarks/speed.py: JAX against PyTorch, training and inference; (c) the
# input pipeline's crops/s on real UCF_CC_50 with the host's cores; (d) a short training run
# of the paper model on UCF_CC_50 fold 1 in bfloat16: loss curve and images/s; (e) predict
# mode's pictures/s on a folder of mixed sizes, one at a time and batched.
#
# Packages: a host with JAX, Flax, optax, Orbax and PyTorch but no package index gets the
# rest from ./.whl, made beforehand on a machine with pip access by
#   python benchmarks/device_wheels.py --present benchmarks/gpu_host_packages.txt --out .whl
set -uo pipefail

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=1
  shift
fi
if [[ $# -ne 2 ]]; then
  echo "usage: $0 [--smoke] OUT_DIR UCF_CC_50_DIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "cannot write to $1" >&2; exit 2; }
UCF=$(cd "$2" 2>/dev/null && pwd) || { echo "no UCF_CC_50 folder at $2" >&2; exit 2; }
cd "$(dirname "$0")/.." || exit 2
START=$SECONDS
BUDGET=540  # seconds for everything: 9 minutes.
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU.
# Sections compile some programs alike (step_memory's and speed's training steps): share them.
export JAX_COMPILATION_CACHE_DIR="$SCRATCH/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
printf '| section | outcome |\n|---|---|\n' >"$OUT/summary.md"

if ! "$PYTHON" -c "import ml_collections, grain, tensorflow_datasets, tensorboardX" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SCRATCH/site" .whl/*.whl || exit 1
    export PYTHONPATH="$SCRATCH/site:$PYTHONPATH"
  else
    echo "| setup | failed: packages missing and no .whl folder (benchmarks/device_wheels.py) |" \
      | tee -a "$OUT/summary.md"
    exit 1
  fi
fi

FAILED=0
section() {  # section NAME LIMIT_S COMMAND...: runs COMMAND, output to OUT/NAME.log
  local name=$1 limit=$2  # (appended to OUT/$LOG_AS.log instead when LOG_AS is set)
  local log="$OUT/${LOG_AS:-$1}.log"
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    echo "| $name | skipped: the time budget is spent |" | tee -a "$OUT/summary.md"
    FAILED=$((FAILED + 1))
    return
  fi
  echo "### $name (limit ${limit} s)"
  local began=$SECONDS
  [[ -n ${LOG_AS:-} ]] || : >"$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local status=${PIPESTATUS[0]}
  local outcome="passed"
  ((status == 124 || status == 137)) && outcome="cut at its time limit"
  ((status != 0 && status != 124 && status != 137)) && outcome="failed (exit $status)"
  echo "| $name | $outcome in $((SECONDS - began)) s |" | tee -a "$OUT/summary.md"
  ((status == 0)) || FAILED=$((FAILED + 1))
}

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "CPU cores: $(nproc)"
  "$PYTHON" -c "import sys, jax, flax, optax, orbax.checkpoint as o, torch
print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'orbax', o.__version__, 'torch', torch.__version__)
print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

if ! "$PYTHON" -m tfds_crowd.build ucf_cc_50 --manual_dir "$UCF" --data_dir "$SCRATCH/tfds" \
  >"$SCRATCH/build.log" 2>&1; then
  cat "$SCRATCH/build.log"
  echo "| setup | failed: building UCF_CC_50 from $UCF |" | tee -a "$OUT/summary.md"
  exit 1
fi

# One path for both modes; --smoke changes only sizes, steps and which test files run.
if ((SMOKE)); then
  TESTS=(tests/test_accelerators.py)  # the section runs; CI has run the suite already
  MEMORY=(--model smoke --batch 2 --size 64 --dtypes bfloat16 --remat none --jobs 1)
  SPEED=(--smoke --rows train_4 --backends jax_bf16 torch_bf16 --repeats 1 --warmup 1)
  PIPELINE=(--batch_size 4 --batches 2)
  PREDICT=(--config configs/tiny.py --batch_sizes 4)
  PREDICT_LIMIT=300  # 25 pictures of 19 sizes compile one program per shape on a CPU
  TRAIN=(--config.num_train_steps=4 --config.log_every_steps=2 --config.batch_size=2
    --config.data.crop_size=32 --config.data.max_side=64 --config.model.fusion=add
    --config.model.hierarchical=False --config.model.axial=False --config.model.use_gam=False
    "--config.model.vgg_widths=(8,8,16,16,16)" --config.model.channels=16
    --config.model.head_channels=8 --config.model.head_hidden_channels=8)
  BUDGET=600
else
  TESTS=(-m "slow or not slow" tests/test_torch_twin.py)
  # float32 and bfloat16 without remat are in speed's rows; this adds what remat saves.
  MEMORY=(--batch 32 --size 256 --dtypes bfloat16 --remat none backbone --jobs 2)
  # Each row's backends compile at once in about 110 s (train) and 40 s (infer) on 16 cores.
  SPEED=(--rows train_32 infer_1024x768 --backends jax_fp32 jax_bf16 torch_eager torch_bf16
    --setup_limit_s 150)
  PIPELINE=(--batch_size 32 --batches 60)
  PREDICT=(--batch_sizes 8)
  PREDICT_LIMIT=90
  TRAIN=(--config.num_train_steps=200 --config.log_every_steps=25 --config.batch_size=32
    --config.model.dtype=bfloat16)
fi

# (a) Cross-framework and training-step tests on the device; float32 as float32 (no TF32),
# since they compare the frameworks to 1e-4.
section tests 100 env NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest \
  "$PYTHON" -m pytest -q -n 0 -p no:cacheprovider "${TESTS[@]}"
# The step's memory for float32 and bfloat16, with and without remat (compiled only).
section step_memory 70 "$PYTHON" benchmarks/step_memory.py "${MEMORY[@]}"
# (b) JAX against PyTorch.
section speed 190 "$PYTHON" benchmarks/speed.py --parallel_setup "${SPEED[@]}" \
  --out "$OUT/speed.json"
# (c) The input pipeline on real images: inline and with the automatic worker count.
section input_pipeline 30 "$PYTHON" benchmarks/input_pipeline.py --shared "$UCF" \
  --loader_only --workers 0 -1 "${PIPELINE[@]}"
# (d) A short real-data run: compiled step's memory, loss curve, images/s (from random
# backbone weights: the device machine cannot download ImageNet's).
section train 150 "$PYTHON" launch.py --config configs/ucf_cc_50.py --workdir "$SCRATCH/run" \
  --config.data.fold=1 --config.data.data_dir="$SCRATCH/tfds" \
  --config.checkpoint_every_steps=100000 --config.backbone_weights=none "${TRAIN[@]}"
# (e) Predict mode on a folder of mixed sizes: pictures/s one at a time and batched (the
# paper model, freshly initialised: the speed does not depend on the weights). Last, in
# what the budget leaves; its rows go into speed.log (OUT holds at most 8 files).
LOG_AS=speed section predict "$PREDICT_LIMIT" "$PYTHON" benchmarks/predict.py --images_only "${PREDICT[@]}"

echo "Total: $((SECONDS - START)) s, $FAILED section(s) not passed" | tee -a "$OUT/summary.md"
cat "$OUT/summary.md"
((FAILED == 0))
