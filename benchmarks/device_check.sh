#!/usr/bin/env bash
# The accelerator's open questions, most useful first, within 6 minutes on one H100 or H200
# (a 15-minute device lease holds the machine's start and a rerun besides).
#
#   bash benchmarks/device_check.sh OUT_DIR UCF_CC_50_DIR          # on a GPU host
#   bash benchmarks/device_check.sh --smoke OUT_DIR UCF_CC_50_DIR  # the same steps, small, on CPU
#
# Each section runs under its own time limit, cut to what is left of the whole budget
# (360 s, counted from the end of setup: the packages' install and the first imports, whose
# time summary.md records; the first four sections' limits, 150 + 40 + 80 + 90 s, fill it),
# prints its rows as they are measured and writes them to OUT_DIR (at most 8 files:
# env.txt, summary.md, speed.log, speed.json, attention.log, step_memory.log, tests.log),
# so a run cut short still returns the rows done. A section that fails or is cut is
# recorded in summary.md, the next one runs, and the script exits non-zero at the end; the
# last two sections get only what the others leave, and their skipping is recorded without
# failing the run.
#
# Sections, in priority order: (1) speed: the bfloat16 training step's steps/s, images/s
# and MFU at batch 4 with K = 1, 8 and 32 steps per call and at batch 32, then at batch 32
# with cuDNN's attention and with the XLA flags of speed.py's FLAG_SETS (Triton for every
# GEMM; command buffers that take the convolutions and cuDNN's fusions too), all started
# at once, each timed, in that order, as soon as it is built; a run that fails fails the
# section; (2) attention: the twin test's measure for XLA's and cuDNN's attention in
# bfloat16 (benchmarks/attention_check.py); (3) torch_compile: JAX against the PyTorch twin
# eager and under torch.compile, bfloat16, batch 32; (4) step_memory: remat none against
# backbone at batch 128, bfloat16: XLA's memory plan, seconds per step and the allocator's
# peak; then, in what is left, (5) tests: the PyTorch-twin test on the device and (6)
# predict mode's pictures/s (--smoke: four pictures). --smoke doubles the limits (two CPU
# cores compile what a GPU host's 16 do) and uses torch.compile's aot_eager backend.
# The limits are estimates from the H200 run of the earlier, 9-minute version, whose
# figures are in docs/performance.md ("On one H200"); its sections with figures there were
# dropped to fit: float32 against PyTorch eager and inference (benchmarks/speed.py), the
# input pipeline on UCF_CC_50 (benchmarks/input_pipeline.py) and the short training run
# (launch.py). UCF_CC_50_DIR is still checked, for the callers' command line; no section
# reads it now.
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
[[ -d $2 ]] || { echo "no UCF_CC_50 folder at $2" >&2; exit 2; }
cd "$(dirname "$0")/.." || exit 2
SETUP_START=$SECONDS
BUDGET=360  # seconds for everything: 6 minutes.
LIMIT_SCALE=1
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU.
# Sections compile some programs alike (the batch-32 step in speed and torch_compile): share them.
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
  local name=$1 limit=$2  # (appended to OUT/$LOG_AS.log instead when LOG_AS is set;
  local log="$OUT/${LOG_AS:-$1}.log"  # with OPTIONAL set, skipping it fails nothing)
  shift 2
  limit=$((limit * LIMIT_SCALE))
  local left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    if [[ -n ${OPTIONAL:-} ]]; then
      echo "| $name | skipped: the time budget is spent (it runs in what is left) |" \
        | tee -a "$OUT/summary.md"
    else
      echo "| $name | skipped: the time budget is spent |" | tee -a "$OUT/summary.md"
      FAILED=$((FAILED + 1))
    fi
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
# The budget counts from here: the sections' time, not the packages' install and imports.
START=$SECONDS
echo "| setup | $((START - SETUP_START)) s (packages and imports; outside the budget) |" \
  | tee -a "$OUT/summary.md"

# (1)'s runs: the K rows first, then batch 32 with XLA's and cuDNN's attention and with
# each flag set (GPU flags: on a CPU those runs go without them and say so; XLA's parsing of
# their names is tests/test_device_check.py's).
RUNS=(train_4:jax_bf16 train_4_k8:jax_bf16 train_4_k32:jax_bf16
  train_32:jax_bf16,jax_bf16_cudnn,jax_bf16@triton_gemm_any,jax_bf16@command_buffer_conv)
# One path for both modes; --smoke changes sizes, repeats, limits, torch.compile's backend,
# the test files and predict's folder.
if ((SMOKE)); then
  # Built one after the other: the smoke sizes make train_32 train_4's program, and the
  # flag runs without their flags the baseline's, which JAX's cache then holds.
  SPEED=(--smoke --repeats 1 --warmup 1)
  # Each path once: K = 8 (K = 32 runs it with another number), K = 1 in train_32 (train_4's
  # program at these sizes), cuDNN's attention (skipped on a CPU) and one flag run.
  RUNS=(train_4_k8:jax_bf16 train_32:jax_bf16,jax_bf16_cudnn,jax_bf16@command_buffer_conv)
  # torch.compile's tracing and autograd without inductor's code generation, which takes
  # minutes of two cores for the smoke model's step.
  COMPILE=(--torch_compile_backend aot_eager)
  ATTENTION=(--model tiny --size 64 --batch 1)
  MEMORY=(--model smoke --batch 2 --size 64 --jobs 1 --time_steps 1)
  TESTS=(tests/test_accelerators.py)  # the section runs; the rest of the suite is CI's
  # Four pictures of three sizes (one compilation per padded shape and batch size on a CPU).
  PREDICT=(--config configs/tiny.py --photos 2 --scales 0.5 --synthetic 2 --batch_sizes 4)
  LIMIT_SCALE=2  # two CPU cores compile what 16 do on a GPU host
  BUDGET=600
else
  SPEED=(--parallel_setup --setup_limit_s 130)  # each run built and warmed up in 130 s
  COMPILE=()
  ATTENTION=()
  MEMORY=(--batch 128 --size 256 --jobs 2 --time_steps 5)
  TESTS=(-m "slow or not slow" tests/test_torch_twin.py)
  PREDICT=(--batch_sizes 8)
fi

# (1) Steps per call, batch size, attention kernel and XLA flags of the bfloat16 step.
section speed 150 "$PYTHON" benchmarks/speed.py "${SPEED[@]}" --runs "${RUNS[@]}" \
  --out "$OUT/speed.json"
# (2) The twin test's measure per attention kernel, in true float32 for the float32 row.
section attention 40 env NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest \
  "$PYTHON" benchmarks/attention_check.py "${ATTENTION[@]}"
# (3) torch.compile of the twin against JAX at equal precision (JAX's step is in the cache).
LOG_AS=speed section torch_compile 80 "$PYTHON" benchmarks/speed.py "${SPEED[@]}" \
  "${COMPILE[@]}" --runs train_32:jax_bf16,torch_bf16,torch_compile_bf16
# (4) What remat=backbone saves in memory and costs in time.
section step_memory 90 "$PYTHON" benchmarks/step_memory.py "${MEMORY[@]}" --dtypes bfloat16 \
  --remat none backbone
# (5) In what is left: the cross-framework tests on the device, in true float32 (no TF32),
# since they compare the frameworks to 1e-4; (6) predict mode on a folder of mixed sizes,
# pictures/s one at a time and batched (the paper model, freshly initialised: the speed does
# not depend on the weights), into speed.log.
OPTIONAL=1 section tests 100 env NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest \
  "$PYTHON" -m pytest -q -n 0 -p no:cacheprovider "${TESTS[@]}"
OPTIONAL=1 LOG_AS=speed section predict 90 "$PYTHON" benchmarks/predict.py --images_only \
  "${PREDICT[@]}"

echo "Total: $((SECONDS - START)) s after setup ($((SECONDS - SETUP_START)) s in all)," \
  "$FAILED section(s) not passed" | tee -a "$OUT/summary.md"
cat "$OUT/summary.md"
((FAILED == 0))
