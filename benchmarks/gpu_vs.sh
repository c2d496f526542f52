#!/usr/bin/env bash
# Issue 10, round 3 on the lent GPU, after the device-images change: the node's control loop on
# the GPU (pi0, 60 s at 50 Hz), LeRobot 0.6.1 side by side (pi0, pi0.5 eager; SmolVLA eager and
# compiled), each stage teeing to $OUT/vs_*.txt. Optional first argument: "compile-pi0" runs
# only LeRobot pi0 compiled (about 7 min).
#   device run (carry [".whl"], timeout_s 600): bash benchmarks/gpu_vs.sh [compile-pi0]
#   .whl: benchmarks/fetch_lerobot_wheels.sh, run once on the dev box (no network on the GPU).
STAGE_PREFIX=vs
STAGE_BUDGET_S=570
source "$(dirname "$0")/device_stages.sh"

# LeRobot's pinned transformers/tokenizers go to /tmp/site, used by the vs_lerobot stages only
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
VS="env PYTHONPATH=/tmp/site:$ROOT $PY benchmarks/vs_lerobot.py --iters 20 --warmup 3"
if [ "${1:-}" = "compile-pi0" ]; then
  run compile_pi0 560 $VS --family pi0 --compile
else
  run loop 130 $PY benchmarks/gpu_loop.py --family pi0 --duration-s 60 --control-hz 50
  run eager 120 $VS --family pi0 --family pi05
  run compile_smolvla 320 $VS --family smolvla --compile
fi
cat "$OUT/vs_summary.txt"
