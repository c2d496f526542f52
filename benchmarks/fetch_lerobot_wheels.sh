#!/usr/bin/env bash
# Download the wheels LeRobot 0.6.1 needs on the GPU machine into .whl/ (run here, on the dev box).
#
# The GPU image has torch 2.11 / transformers 5.17 / tokenizers 0.23 but no lerobot, and it
# cannot reach a registry, so benchmarks/vs_lerobot.py's dependencies travel as wheels in the
# device call's `carry` (.whl is git-ignored: /.whl/ in .git/info/exclude). Why these pins
# (../shared/notes/gpu-peers.md): transformers 5.17 breaks LeRobot's pi0 (create_causal_mask
# got cache_position) and LeRobot pins transformers < 5.6; transformers 5.5.4 refuses
# tokenizers >= 0.23; draccus and gymnasium (with their small deps) are imported when
# LeRobot's configs load. Everything else LeRobot imports is already in the image (torch,
# torchvision 0.26, huggingface_hub, safetensors, einops, pyyaml, cloudpickle, typing-inspect,
# mypy-extensions, ...).
#
# On the device: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
# then PYTHONPATH=/tmp/site:$PYTHONPATH so the pinned transformers/tokenizers win over the image's
# (benchmarks/gpu_issue10.sh does this).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
mkdir -p "$DEST"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }

PY=${PYTHON:-python3}
# target: the GPU image's CPython 3.12 on x86-64 (manylinux tags pip matches exactly)
TARGET=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST")

PINS=(
  lerobot==0.6.1
  transformers==5.5.4
  tokenizers==0.22.2
  draccus==0.11.6
  mergedeep==1.3.4
  pyyaml-include==1.4.1
  toml==0.10.2
  gymnasium==1.4.0
  farama-notifications==0.0.4
)
for pin in "${PINS[@]}"; do
  name=${pin%%==*}
  # skip what is already there (any version of that name: two versions break the install)
  norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
  if ls "$DEST" 2>/dev/null | tr 'A-Z-' 'a-z_' | grep -q "^${norm}-"; then
    continue
  fi
  "$PY" -m pip download -q "${TARGET[@]}" "$pin"
done

total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "wheels in $DEST: $(ls "$DEST"/*.whl | wc -l) files, $((total / 1024 / 1024)) MiB"
ls -1 "$DEST"
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "error: $DEST is over 60 MiB; the device call carries at most 64 MiB with the working tree" >&2
  exit 1
fi
