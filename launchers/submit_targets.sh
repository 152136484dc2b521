#!/usr/bin/env bash
# Submit `t2t targets` (target precomputation, t2t/jobs/targets.py) to a running Ray cluster as a Ray job.
#
#   export RAY_ADDRESS=http://HEAD_NODE:8265                 # the cluster's dashboard (job API)
#   launchers/submit_targets.sh recipes/mistral-7b.yaml stage1
#   launchers/submit_targets.sh recipes/mistral-7b.yaml stage2     # with M1: stage2 starts from stage1's export
#
# STAGE is a stage name of the recipe's `stages` list (a number N also means the Nth stage). A stage whose
# targets the model derives computes them with the model the stage starts from (stage2: `<run_dir>/stage1/model`).
# Arguments after the stage go to `t2t targets` (--corpus, --out, --overwrite, --set k=v). The job
# runs in this repository's directory with this shell's Python (T2T_PYTHON overrides it), so the
# repository, the environment and the recipe's paths must be on a filesystem the head node shares,
# as on a Slurm cluster; relative paths then mean what they mean in a local run. Inside the job,
# Ray sets RAY_ADDRESS, and `t2t targets` joins the cluster instead of starting a local Ray.
# Rerunning the same command resumes: finished shards are kept (the ledger in the shard directory).
# A head started without token authentication also needs RAY_AUTH_MODE=disabled here.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 RECIPE STAGE [t2t targets arguments ...]" >&2
    exit 2
fi
RECIPE=$1
STAGE=$2
shift 2

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${T2T_PYTHON:-$(command -v python3 || command -v python)}
ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}

# `ray job submit` quotes each word after `--`, so the command line goes to `bash -c` as one word,
# with every piece of it quoted for that shell.
printf -v ENTRYPOINT 'cd %q && %q -m t2t.cli targets --config %q --stage %q' "$REPO" "$PYTHON" "$RECIPE" "$STAGE"
for arg in "$@"; do
    printf -v ENTRYPOINT '%s %q' "$ENTRYPOINT" "$arg"
done

exec "${RAY:-ray}" job submit --address "$ADDRESS" -- bash -c "$ENTRYPOINT"
