#!/usr/bin/env bash
# t2t's GPU paths checked on one H100/H200 in one call (bench/gpu/check.py says what it runs and measures).
#
#   bash bench/gpu/check.sh --prepare    here, once: the pinned wheels the GPU machine lacks, into .whl/ (about 5 MB)
#   bash bench/gpu/check.sh              there, as one device call carrying .whl: about 5 min, at most 8
#   bash bench/gpu/check.sh --device cpu --smoke    anywhere: the same code paths on CPU, cut to a minute or two
#
# The GPU machine has torch, transformers and peft, but not deepspeed or webdataset (nor Ray and mteb, which the
# check does without). Results: gpu_check.json and the training logs, in $OUT on the device machine (the work files
# stay in /tmp there), else in runs/bench/gpu/.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=(deepspeed hjson pydantic pydantic_core annotated-types typing-inspection webdataset braceexpand)

if [ "${1:-}" = "--prepare" ]; then
  # The versions of this project's own environment; deepspeed publishes no wheel, so it is built (pure Python).
  pins=()
  for name in "${WHEELS[@]}"; do
    pins+=("$name==$(.venv/bin/python -m pip show "$name" | awk '/^Version:/{print $2}')")
  done
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl "${pins[0]}"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]:1}"
  ls -la .whl
  exit 0
fi

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && ! "$PY" -c "import deepspeed, webdataset" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/t2t-site .whl/*.whl
  export PYTHONPATH=/tmp/t2t-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  exec "$PY" bench/gpu/check.py --out /tmp/t2t-gpu-check --results "$OUT" "$@"
fi
exec "$PY" bench/gpu/check.py "$@"
