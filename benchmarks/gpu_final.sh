#!/usr/bin/env bash
# The last GPU call of a session: the GPU tests, the node's control loop on the GPU for 60 s
# (pi0 at published size, torch CUDA graph, 50 Hz), SmolVLA's table again (host preprocessing
# cost), and RTC's overhead on the graph path. Each stage tees to $OUT/final_*.txt.
#   device run (timeout_s 600): bash benchmarks/gpu_final.sh
STAGE_PREFIX=final
source "$(dirname "$0")/device_stages.sh"

run tests 110 $PY -m pytest -q -rs -p no:cacheprovider test/test_fast_path_kernels.py test/test_fast_path_lerobot.py \
  test/test_engine_torch_runtime.py -k "cuda or triton"
run loop 130 $PY benchmarks/gpu_loop.py --family pi0 --duration-s 60 --control-hz 50
if [ -f benchmarks/rtc_overhead.py ]; then
  run rtc 120 $PY benchmarks/rtc_overhead.py --family pi0 --iters 30 --warmup 3
fi
run smolvla 100 $PY -m reflex_ros.cli bench --family smolvla --size published --compare --tokens 48 --nfe 10 \
  --iters 20 --warmup 3 --no-sweep --no-fp16
cat "$OUT/final_summary.txt"
