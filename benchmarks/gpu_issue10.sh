#!/usr/bin/env bash
# Issue 10 on the GPU in ONE device call: GPU tests, the bench tables of pi0 / pi0.5 / SmolVLA at
# published size, and LeRobot 0.6.1 side by side. Every stage tees to $OUT as it runs, so a
# stage that fails or times out still leaves its output and the next stage runs.
#
#   device run (carry [".whl"], timeout_s 600):
#     bash benchmarks/gpu_issue10.sh            # full: up to 9 min (a stage that would not fit is skipped)
#     bash benchmarks/gpu_issue10.sh --quick    # 10 iterations, no fp16 row / NFE sweep: ~5-6 min
#   .whl: benchmarks/fetch_lerobot_wheels.sh, run once on the dev box (no network on the GPU).
#
# Files in $OUT (at most 8): 01_env_tests.txt, 02_bench_pi0.txt, 03_bench_pi05.txt,
# 04_bench_smolvla.txt, 05_vs_lerobot.txt, 06_summary.txt.
set +x
source "$(dirname "$0")/device_stages.sh"  # the preamble; this script's stages are its own `stage`

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
BUDGET_S=${BUDGET_S:-540}  # stop starting stages after this many seconds (the call's limit is 600)
START=$(date +%s)
if [ $QUICK = 1 ]; then
  ITERS=10; WARMUP=2; BENCH_EXTRA="--no-sweep --no-fp16"; VS_ITERS=10; VS_WARMUP=2
else
  ITERS=20; WARMUP=3; BENCH_EXTRA=""; VS_ITERS=20; VS_WARMUP=3
fi
SUMMARY="$OUT/06_summary.txt"
: > "$SUMMARY"

elapsed() { echo $(( $(date +%s) - START )); }

# stage NAME FILE LIMIT_S MIN_LEFT_S CMD...: runs CMD under `timeout`, appends to FILE, records the outcome
stage() {
  local name=$1 file=$2 limit=$3 need=$4; shift 4
  local left=$(( BUDGET_S - $(elapsed) ))
  if [ "$left" -lt "$need" ]; then
    echo "[$name] SKIPPED: ${left}s left of the ${BUDGET_S}s budget (needs ~${need}s)" | tee -a "$file" "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "===== [$name] $(date -u +%H:%M:%S) limit ${limit}s: $*" | tee -a "$file"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$file"
  local rc=$?
  local msg="[$name] rc=$rc in $(( $(date +%s) - t0 ))s"
  [ $rc = 124 ] && msg="$msg (TIMED OUT at ${limit}s)"
  echo "$msg" | tee -a "$file" >> "$SUMMARY"
  return 0
}

ENV_FILE="$OUT/01_env_tests.txt"
{
  echo "issue 10 GPU run, quick=$QUICK, $(date -u)"
  git -C "$ROOT" log --oneline -1 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(), 'sm', torch.cuda.get_device_capability())" 2>&1
} | tee "$ENV_FILE"

# LeRobot's wheels (for vs_lerobot only: the pinned transformers/tokenizers must not shadow the
# image's for our own stages)
SITE=/tmp/site
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  stage wheels "$ENV_FILE" 60 30 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$ROOT"/.whl/*.whl
else
  echo "[wheels] no .whl/ here (carry it: benchmarks/fetch_lerobot_wheels.sh); vs_lerobot will skip" | tee -a "$ENV_FILE" "$SUMMARY"
fi

# the GPU-only tests (the CPU ones ran in CI): Triton kernels vs their torch twins, the captured
# graphs vs LeRobot's recordings in fp32, fp8 on published SmolVLA, the compare table at tiny size
TEST_LIMIT=$([ $QUICK = 1 ] && echo 100 || echo 120)
stage gpu-tests "$ENV_FILE" "$TEST_LIMIT" 60 $PY -m pytest -q -rs -s -p no:cacheprovider \
  test/test_fast_path_kernels.py test/test_fast_path_lerobot.py test/test_engine_torch_runtime.py \
  -k "cuda or triton"

BENCH_LIMIT=$([ $QUICK = 1 ] && echo 90 || echo 130)
n=2
for fam in pi0 pi05 smolvla; do
  file="$OUT/0${n}_bench_${fam}.txt"
  : > "$file"
  stage "bench-$fam" "$file" "$BENCH_LIMIT" 45 $PY -m reflex_ros.cli bench --family "$fam" --size published \
    --compare --tokens 48 --nfe 10 --iters "$ITERS" --warmup "$WARMUP" $BENCH_EXTRA
  n=$((n + 1))
done

VS_FILE="$OUT/05_vs_lerobot.txt"
: > "$VS_FILE"
for fam in pi0 pi05 smolvla; do
  VS_LIMIT=$([ $fam = smolvla ] && echo 70 || echo 90)
  stage "vs-lerobot-$fam" "$VS_FILE" "$VS_LIMIT" 40 env PYTHONPATH="$SITE:$PYTHONPATH" $PY benchmarks/vs_lerobot.py \
    --family "$fam" --iters "$VS_ITERS" --warmup "$VS_WARMUP"
done

{
  echo "total $(elapsed)s (quick=$QUICK, iters=$ITERS)"
  echo "--- headline rows"
  grep -hE "^(eager fp32|eager bf16|cuda graph (bf16|fp8|fp16)( |$)|cuda graph bf16 cfg|floor)" "$OUT"/0[234]_bench_*.txt 2>/dev/null
  grep -hE "^note: (graph path|fp8)" "$OUT"/0[234]_bench_*.txt 2>/dev/null
  grep -hE "^(== |  (reflex_ros|LeRobot))" "$VS_FILE" 2>/dev/null
  grep -hE "passed|failed|error" "$ENV_FILE" | tail -3
} >> "$SUMMARY"
cat "$SUMMARY"
