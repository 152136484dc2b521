#!/usr/bin/env bash
# Train one stage of a recipe on this machine with the DeepSpeed launcher (one process per rank).
#
#   launchers/train_local.sh recipes/demo.yaml 1                         # ranks: the recipe's train.nproc
#   NPROC=8 launchers/train_local.sh recipes/mistral-7b.yaml 1 --set train.stage1.steps=100
#   launchers/train_local.sh RECIPE 2 --set model.path=runs/x/stage1/model --set model.tiny=null --set model.gguf=
#
# Rerunning resumes from the newest checkpoint (--resume auto; or --resume never|DIR). Without a GPU DeepSpeed runs
# on CPU with gloo (DS_ACCELERATOR=cpu is set for you). Stop with Ctrl-C or SIGTERM: the ranks
# finish their step and checkpoint first (the DeepSpeed launcher waits 30 s for them); a second
# Ctrl-C stops at once. `t2t pipeline` uses the same per-rank entry through torchrun
# (t2t.train.launch_local).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 RECIPE STAGE [--resume auto|never|DIR] [--set key=value ...]" >&2
    exit 2
fi
RECIPE=$1
STAGE=$2
shift 2
RESUME=auto
SETS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --set) SETS+=("--set=$2"); shift 2 ;;
        --set=*) SETS+=("$1"); shift ;;
        --resume) RESUME=$2; shift 2 ;;
        --resume=*) RESUME=${1#--resume=}; shift ;;
        *) echo "unexpected argument $1 (only --resume and --set KEY=VALUE may follow RECIPE STAGE)" >&2; exit 2 ;;
    esac
done

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
fi
export TOKENIZERS_PARALLELISM=false
NPROC=${NPROC:-$(t2t config --config "$RECIPE" "${SETS[@]}" | python -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["train"]["nproc"])')}
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

exec deepspeed --num_gpus "$NPROC" --master_port "$MASTER_PORT" --no_local_rank --module t2t.cli \
    train --config "$RECIPE" --stage "$STAGE" --resume "$RESUME" "${SETS[@]}"
