#!/usr/bin/env bash
# Train one stage of a recipe on this machine with the DeepSpeed launcher (one process per rank).
#
#   launchers/train_local.sh recipes/demo.yaml stage1                    # ranks: the recipe's train.nproc
#   NPROC=8 launchers/train_local.sh recipes/mistral-7b.yaml stage1 --set stages.stage1.steps=100
#   launchers/train_local.sh recipes/demo.yaml stage2                    # from stage1's export, on its own
#
# STAGE is a stage of the recipe's `stages` by name (a number N: its Nth stage). A stage trains the model it
# starts from: the recipe's backbone, or an earlier stage's export (<run_dir>/<start>/model), with no override.
# Rerunning resumes from the newest checkpoint (--resume auto; or --resume force|never|DIR). Without a GPU DeepSpeed runs
# on CPU with gloo (DS_ACCELERATOR=cpu is set for you). `t2t pipeline` uses the same per-rank entry
# through torchrun (t2t.train.launch_local).
#
# Stopping: Ctrl-C, SIGTERM or SIGHUP to this script is passed on once, as SIGTERM, to DeepSpeed's
# per-node launcher, which sends it to every rank: they finish their step, checkpoint and exit (the
# launcher waits 30 s for them, then kills them). This script waits for all of them, then exits
# 128+signal naming the checkpoint a rerun resumes from. A second Ctrl-C kills them at once. The
# launcher runs in a process group of its own, so a Ctrl-C in the terminal reaches it only this way.
# If this script or the `deepspeed` command dies instead (even by SIGKILL), the ranks notice within a
# second and stop the same way by themselves (t2t/train/signals.py).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 RECIPE STAGE_NAME [--resume auto|force|never|DIR] [--set key=value ...]" >&2
    exit 2
fi
RECIPE=$1
STAGE=$2
shift 2
RESUME=auto
OVERRIDES=()  # key=value items, given as --set KEY=VALUE or --set=KEY=VALUE
while [[ $# -gt 0 ]]; do
    case $1 in
        --set) OVERRIDES+=("$2"); shift 2 ;;
        --set=*) OVERRIDES+=("${1#--set=}"); shift ;;
        --resume) RESUME=$2; shift 2 ;;
        --resume=*) RESUME=${1#--resume=}; shift ;;
        *) echo "unexpected argument $1 (only --resume and --set KEY=VALUE may follow RECIPE STAGE)" >&2; exit 2 ;;
    esac
done

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
fi
export TOKENIZERS_PARALLELISM=false
SETS=()
for item in "${OVERRIDES[@]}"; do SETS+=("--set=$item"); done
# The recipe's ranks, the stage's name (STAGE may be a number) and its checkpoints directory: the last 3 lines.
CFG=$(python -c 'import sys
from t2t.commands import stage_name
from t2t.config import load_config
from t2t.errors import UserError
from t2t.run_paths import checkpoints_dir
from t2t.train.checkpoint import refuse_to_start_over
from t2t.train.ds_config import build_ds_config
from t2t.train.launch import local_ranks
try:
    cfg = load_config(sys.argv[1], sys.argv[4:])
    stage = stage_name(cfg, sys.argv[2])
    build_ds_config(cfg)  # the DeepSpeed JSON exists and is usable: fail here, not in every rank
    if sys.argv[3] == "never":  # before any rank starts and loads the model
        refuse_to_start_over(checkpoints_dir(cfg, stage))
except UserError as e:
    print(f"train_local.sh: error: {e}", file=sys.stderr)
    sys.exit(2)
print(local_ranks(cfg.train.nproc)); print(stage); print(checkpoints_dir(cfg, stage))' "$RECIPE" "$STAGE" "$RESUME" "${OVERRIDES[@]}" |
    tail -n 3)
NPROC=${NPROC:-${CFG%%$'\n'*}}
CFG=${CFG#*$'\n'}
STAGE=${CFG%%$'\n'*}
CKPT_DIR=${CFG#*$'\n'}
MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
# The ranks stop by themselves when this script exits, however it dies.
export T2T_LAUNCHER_PIDS=$$${T2T_LAUNCHER_PIDS:+,$T2T_LAUNCHER_PIDS}

resume_hint() {
    if [[ -f $CKPT_DIR/latest ]]; then
        echo "rerun the same command to resume from $(<"$CKPT_DIR/latest") in $CKPT_DIR"
    else
        echo "no checkpoint in $CKPT_DIR yet: a rerun starts the stage over"
    fi
}

# Whether any process of process group $1 is still running (zombies, which await their parent, do not count).
group_running() {
    python -c 'import os, sys, psutil
group = int(sys.argv[1])
def running(p):
    try:
        return os.getpgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):
        return False
sys.exit(0 if any(running(p) for p in psutil.process_iter()) else 1)' "$1"
}

STOPPED_BY=
stop() {  # $1: TERM, INT or HUP
    if [[ -z $STOPPED_BY ]]; then
        STOPPED_BY=$1
        echo "train_local.sh: SIG$1: the ranks finish their step and checkpoint, then stop" \
            "(Ctrl-C again stops them at once)" >&2
        # To DeepSpeed's per-node launcher (the child of `deepspeed`): it passes SIGTERM on to every rank and waits
        # for them, and `deepspeed` exits after it. `deepspeed` itself would just die (only while it has not
        # started that launcher yet is it the one to get the signal).
        python -c 'import signal, sys, psutil
p = psutil.Process(int(sys.argv[1]))
for q in p.children() or [p]:
    q.send_signal(signal.SIGTERM)' "$LAUNCHER" 2>/dev/null || kill -TERM "$LAUNCHER" 2>/dev/null || true
    elif [[ $1 == INT ]]; then
        echo "train_local.sh: second Ctrl-C: killing the ranks without a checkpoint" >&2
        kill -KILL -- "-$LAUNCHER" 2>/dev/null || true
    fi
}

set -m  # the launcher and the ranks in a process group of their own: a terminal's Ctrl-C reaches only this script
deepspeed --num_gpus "$NPROC" --master_port "$MASTER_PORT" --no_local_rank --module t2t.cli \
    train --config "$RECIPE" --stage "$STAGE" --resume "$RESUME" "${SETS[@]}" &
LAUNCHER=$!
set +m
trap 'stop TERM' TERM
trap 'stop INT' INT
trap 'stop HUP' HUP

rc=0
while :; do
    rc=0
    wait "$LAUNCHER" || rc=$?
    kill -0 "$LAUNCHER" 2>/dev/null || break  # else a trapped signal ended the wait, not the launcher
done
if [[ -z $STOPPED_BY && $rc == 0 ]]; then
    exit 0
fi
# `deepspeed` has exited; ranks may still be finishing their step and checkpoint (when it was killed itself).
for _ in $(seq 120); do
    group_running "$LAUNCHER" || break
    sleep 1
done
if group_running "$LAUNCHER"; then
    echo "train_local.sh: ranks still running after 120 s: killing them" >&2
    kill -KILL -- "-$LAUNCHER" 2>/dev/null || true
fi
if [[ -n $STOPPED_BY ]]; then
    echo "train_local.sh: $STAGE: stopped by SIG$STOPPED_BY; $(resume_hint)" >&2
    case $STOPPED_BY in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
fi
echo "train_local.sh: $STAGE: failed (the deepspeed launcher exited with code $rc); $(resume_hint)" >&2
exit "$rc"
