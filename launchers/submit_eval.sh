#!/usr/bin/env bash
# Submit `t2t eval` (MTEB evaluation, t2t/eval/runner.py) to a running Ray cluster as a Ray job.
#
#   export RAY_ADDRESS=http://HEAD_NODE:8265                 # the cluster's dashboard (job API)
#   launchers/submit_eval.sh --model runs/mistral-7b/stage2/model --benchmark "MTEB(eng, v2)" \
#       --workers 8 --gpus-per-worker 1 --out runs/mistral-7b/eval
#   launchers/submit_eval.sh --config recipes/mistral-7b.yaml --model A B --names stage1 stage2
#
# All arguments go to `t2t eval`. The job runs in this repository's directory with this shell's
# Python (T2T_PYTHON overrides it), so the repository, the environment, the model directories and
# the output directory must be on a filesystem the head node shares, as on a Slurm cluster; the
# workers also need the model directories (and, for official mteb tasks, a dataset cache: set
# HF_DATASETS_CACHE, and HF_HUB_OFFLINE=1 where nodes cannot reach the hub; set here, they reach
# the job and its workers). Inside the job Ray sets RAY_ADDRESS, and `t2t eval` joins the cluster instead of
# starting a local Ray. Rerunning the same command runs only the (model, task) pairs not yet in
# <out>/results. A head started without token authentication also needs RAY_AUTH_MODE=disabled here.
# Several local Ray clusters on one machine confuse the job supervisor (it finds its cluster through
# $RAY_TMPDIR/ray/ray_current_cluster, default /tmp): start each with its own RAY_TMPDIR.
# tests/test_cluster.py submits it to a real two-node Ray cluster (tests/cluster/README.md).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 --model DIR [DIR ...] [t2t eval arguments ...]" >&2
    exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${T2T_PYTHON:-$(command -v python3 || command -v python)}
ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}

# `ray job submit` quotes each word after `--`, so the command line goes to `bash -c` as one word,
# with every piece of it quoted for that shell (benchmark names contain spaces and parentheses).
# The job does not inherit this shell's environment: carry the Hugging Face settings over explicitly.
ENV_PREFIX=""
for var in HF_HUB_OFFLINE HF_DATASETS_OFFLINE TRANSFORMERS_OFFLINE HF_HOME HF_DATASETS_CACHE; do
    if [[ -n "${!var:-}" ]]; then
        printf -v ENV_PREFIX '%sexport %s=%q && ' "$ENV_PREFIX" "$var" "${!var}"
    fi
done
printf -v ENTRYPOINT '%scd %q && %q -m t2t.cli eval' "$ENV_PREFIX" "$REPO" "$PYTHON"
for arg in "$@"; do
    printf -v ENTRYPOINT '%s %q' "$ENTRYPOINT" "$arg"
done

exec "${RAY:-ray}" job submit --address "$ADDRESS" -- bash -c "$ENTRYPOINT"
