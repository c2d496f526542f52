# Shared by the device-run scripts (benchmarks/gpu_*.sh), sourced, never run: the preamble
# (repo root, $OUT, $PY, unbuffered Python, the repo on PYTHONPATH) and `run`, which runs one
# stage under `timeout` within the call's time budget and tees it to $OUT.
#   STAGE_PREFIX    file prefix in $OUT: stage NAME goes to $OUT/<prefix>_NAME.txt, outcomes
#                   to $OUT/<prefix>_summary.txt (required for `run`)
#   STAGE_BUDGET_S  seconds after which no stage starts (default 560; a device call has 600)
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.device-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)
left() { echo $(( ${STAGE_BUDGET_S:-560} - ($(date +%s) - START) )); }

run() {  # run NAME LIMIT_S CMD...: skipped under 30 s left; the limit shrinks to what is left
  local name=$1 limit=$2; shift 2
  local l; l=$(left)
  [ "$l" -lt 30 ] && { echo "[$name] skipped: ${l}s left" | tee -a "$OUT/${STAGE_PREFIX}_summary.txt"; return 0; }
  [ "$limit" -gt "$l" ] && limit=$l
  echo "===== [$name] limit ${limit}s: $*" | tee -a "$OUT/${STAGE_PREFIX}_$name.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/${STAGE_PREFIX}_$name.txt"
  echo "[$name] rc=$? after $(( $(date +%s) - START ))s" | tee -a "$OUT/${STAGE_PREFIX}_summary.txt"
}
