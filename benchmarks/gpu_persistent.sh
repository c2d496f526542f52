#!/usr/bin/env bash
# Issue 10, plan step 1 (benchmarks/results/issue10_next.md), on the lent GPU: the persistent
# expert-MLP kernel (benchmarks/gpu_persistent_mlp.py) against today's three kernels, for pi0,
# pi0 with CFG rows and SmolVLA; then the kernel tables of today's chunk for the same session's
# baseline. The GPU test of the kernel (one launch = the phases apart, counters reset) runs
# first. Not yet run: written in a session that was lent no GPU. Each stage tees to
# $OUT/persist_*.txt. The tile sweep is the short one unless "full" is given.
#   device run (timeout_s 600): bash benchmarks/gpu_persistent.sh [full]
STAGE_PREFIX=persist
source "$(dirname "$0")/device_stages.sh"

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/persist_gpu.txt"
QUICK=$([ "${1:-}" = "full" ] || echo --quick)
run tests 90 $PY -m pytest -q -rs -p no:cacheprovider test/test_persistent_mlp_kernel.py
run mlp 400 $PY benchmarks/gpu_persistent_mlp.py $QUICK
run profile 140 $PY benchmarks/gpu_profile_family.py --families pi0
cat "$OUT/persist_summary.txt"
