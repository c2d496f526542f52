#!/usr/bin/env bash
# Issue 15 on the GPU: onnxruntime-gpu carried in parts, then ORT CUDA-EP (IO binding, CUDA
# graph) on fp32 / fp16 exports of the `small` preset and a LeRobot pi0.5 export, beside the
# torch CUDA-graph path, and the auto-calibrator's provider choice.
#
# The onnxruntime-gpu wheel (244 MiB) is more than one device call carries (64 MiB), so it
# travels in 38 MiB parts made here by `split` (benchmarks/ort_wheel_parts.sh), one part per
# call, each copied to /tmp/ortp on the machine; the machine keeps /tmp only while warm (30 s
# after a call), so the calls are made back to back:
#   device run  carry [".ortparts/pN"]   bash benchmarks/gpu_issue15.sh stash N        (N = 1..6)
#   device run  carry [".ortparts/p7"]   bash benchmarks/gpu_issue15.sh run 7          (joins, checks, runs)
#   device run  carry [".ortparts/p7"]   bash benchmarks/gpu_issue15.sh bench 7        (joins, checks; only the
#                                         `reflex-ros bench --engine onnx --provider CUDAExecutionProvider` table)
# Output: $OUT/15_ort_cuda.txt (and the log of every stage).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.device-out}
mkdir -p "$OUT" /tmp/ortp
PY=${PYTHON:-python3}
MODE=${1:?stash|run}
PART=${2:?part number}
WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
SHA=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7

cp "$ROOT"/.ortparts/p"$PART"/part* /tmp/ortp/
ls -la /tmp/ortp | tee -a "$OUT/15_carry.txt"
[ "$MODE" = stash ] && exit 0

if [ "$MODE" = bench ]; then
  {
    cat /tmp/ortp/part* > /tmp/$WHEEL
    echo "$SHA  /tmp/$WHEEL" | sha256sum -c - || { echo "wheel checksum FAILED: a part is missing"; exit 1; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ortsite /tmp/$WHEEL
    export PYTHONPATH=/tmp/ortsite:$ROOT
    timeout 150 $PY -m reflex_ros.cli export --model small --output /tmp/small32 --mode decomposed --fixtures 2 \
      --parity-provider cuda | tail -2
    for graph in "" "--cuda-graph"; do
      echo "== reflex-ros bench /tmp/small32 --engine onnx --provider CUDAExecutionProvider $graph"
      timeout 120 $PY -m reflex_ros.cli bench /tmp/small32 --engine onnx --provider CUDAExecutionProvider $graph \
        --iters 50 --warmup 5 2>&1 | grep -v "W:onnxruntime"
    done
    echo "== reflex-ros bench /tmp/small32 --engine torch --cuda-graph --dtype fp32 (the same export, same run)"
    timeout 120 $PY -m reflex_ros.cli bench /tmp/small32 --engine torch --cuda-graph --dtype fp32 --iters 50 --warmup 5
  } 2>&1 | tee "$OUT/15_bench.txt"
  exit 0
fi

LOG=$OUT/15_ort_cuda.txt
{
  cat /tmp/ortp/part* > /tmp/$WHEEL
  echo "$SHA  /tmp/$WHEEL" | sha256sum -c - || { echo "wheel checksum FAILED: a part is missing"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ortsite /tmp/$WHEEL
  export PYTHONPATH=/tmp/ortsite:$ROOT
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $PY -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)"
  export HF_HOME=$ROOT/test/data/lerobot/hf_cache HF_HUB_OFFLINE=1
  echo "== exports (parity on CUDA-EP against torch fp32)"
  timeout 150 $PY -m reflex_ros.cli export --model small --output /tmp/small32 --mode decomposed --fixtures 2 \
    --parity-provider cuda | tail -4
  timeout 150 $PY -m reflex_ros.cli export --model small --output /tmp/small16 --mode decomposed --fixtures 2 \
    --precision fp16 --parity-provider cuda | tail -4
  timeout 90 $PY -m reflex_ros.cli export test/data/lerobot/pi05/checkpoint --output /tmp/pi05 --mode decomposed \
    --fixtures 2 --strict --parity-provider cuda | tail -4
  echo "== the pi0.5 export on CUDA-EP against LeRobot's recorded actions"
  timeout 90 $PY - <<'EOF'
import glob, numpy as np
from pathlib import Path
from reflex_ros.engine.loader import load_engine
from reflex_ros.engine.predict import observation_from_npz
for graph in (False, True):
    eng = load_engine("/tmp/pi05", engine="onnx", provider="CUDAExecutionProvider", cuda_graph=graph)
    worst = 0.0
    for f in sorted(glob.glob("test/data/lerobot/pi05/fixtures/*.npz")):
        d = np.load(f)
        obs, noise, steps = observation_from_npz(d, eng.info)
        got = eng.infer(obs, nfe=steps, noise=noise).actions
        ref = d["out.actions"][0]
        worst = max(worst, float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())))
    print(f"pi05 tiny, CUDA-EP cuda_graph={graph}: worst |ours - LeRobot| / max(1, |LeRobot|) = {worst:.2e} "
          f"(4 fixtures; provider {eng.info.provider})")
    eng.close()
EOF
  echo "== timing"
  timeout 240 $PY benchmarks/ort_cuda.py /tmp/small32 /tmp/small16 /tmp/pi05 --iters 50 --warmup 5 --calibrate
} 2>&1 | tee "$LOG"
