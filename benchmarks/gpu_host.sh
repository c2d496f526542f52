#!/usr/bin/env bash
# Issue 10, round 3 on the lent GPU: images resized on the device (engine/device_frames.py).
# The GPU tests of the fast path and the device images, the host-path split (host vs device
# images, model-size and 640x480 frames), then the --compare tables of SmolVLA and pi0 with
# the new default. Each stage tees to $OUT/host_*.txt. "full": the complete --compare tables (NFE
# sweep, fp16 row) of all three families instead of SmolVLA's and pi0's short ones.
#   device run (timeout_s 600): bash benchmarks/gpu_host.sh [full]
STAGE_PREFIX=host
source "$(dirname "$0")/device_stages.sh"

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/host_gpu.txt"
run tests 120 $PY -m pytest -q -rs -p no:cacheprovider test/test_device_images.py test/test_fast_path_kernels.py \
  test/test_fast_path_lerobot.py test/test_engine_torch_runtime.py -k "cuda or triton"
run split 100 $PY benchmarks/gpu_host_path.py --families smolvla pi0 --iters 30 --warmup 5
if [ "${1:-}" = "full" ]; then
  for fam in smolvla pi0 pi05; do
    run $fam 120 $PY -m reflex_ros.cli bench --family $fam --size published --compare --tokens 48 --nfe 10 \
      --iters 20 --warmup 3
  done
else
  run smolvla 100 $PY -m reflex_ros.cli bench --family smolvla --size published --compare --tokens 48 --nfe 10 \
    --iters 20 --warmup 3 --no-sweep --no-fp16
  run pi0 130 $PY -m reflex_ros.cli bench --family pi0 --size published --compare --tokens 48 --nfe 10 \
    --iters 20 --warmup 3 --no-sweep --no-fp16
fi
cat "$OUT/host_summary.txt"
