"""`t2t train --config R --stage NAME [--resume auto|force|never|DIR]`: one rank of a DeepSpeed ZeRO-3 run.

Start it under a launcher (one process per rank), or alone for world size 1:

    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config recipes/demo.yaml \
        --stage stage1
    deepspeed --num_gpus 8 --no_local_rank --module t2t.cli train --config recipes/mistral-7b.yaml --stage stage2

NAME is a stage of the recipe's `stages` (a number N: its Nth stage). The stage trains the model it starts
from (its `start`: the recipe's backbone, or an earlier stage's export `<run_dir>/<start>/model`) on
`<data.shards_dir>/<NAME>`; outputs go to `<run_dir>/<NAME>/` (checkpoints/, metrics.jsonl, model/).

Exit codes: 0 finished, or stopped by a signal after a checkpoint; 2 a user error (one line); 3 the loss
diverged; 4 another rank was lost (died or hung up): one line naming the checkpoint a rerun resumes from
(`t2t -v train` adds the traceback). A launched rank also stops as on SIGTERM when its launcher exits
(t2t/train/signals.py).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

from t2t.commands import add_config_args, add_stage_arg, load_recipe, stage_name


def register(sub) -> None:
    p = sub.add_parser("train", help="train one stage with DeepSpeed ZeRO-3 (one process per rank)")
    add_config_args(p, required=True)
    add_stage_arg(p)
    p.add_argument("--resume", default="auto", metavar="auto|force|never|DIR",
                   help="auto: newest checkpoint of the stage if any, refused when written under another recipe "
                        "(default); force: the newest even so; never: refuse existing ones; "
                        "DIR: a checkpoints directory or one stepNNNNNNNN checkpoint")
    p.set_defaults(run=run)


def run(args) -> int:
    rank = int(os.environ.get("RANK", "0"))
    if "RANK" in os.environ:  # started by a launcher: stop when it exits, report a lost peer before a late SIGTERM,
        from t2t.train.signals import install_rank_handlers, stop_when_launcher_exits

        install_rank_handlers()  # and keep a pre-timeout signal that comes while torch and the model still load
        stop_when_launcher_exits(rank)
    from t2t.train import TrainingDiverged, train
    from t2t.train.rank import PeerLost, leave

    cfg = load_recipe(args)
    stage = stage_name(cfg, args.stage)
    if rank != 0:  # one voice: the other ranks report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # torch.distributed and transformers deprecation notices, repeated per collective, drown the real output
    warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
    try:
        out = train(cfg, stage, args.resume)
    except TrainingDiverged as e:
        if rank == 0:
            print(f"t2t train: {e}", file=sys.stderr)
        return leave(3)
    except PeerLost as e:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"t2t train: rank {rank} {e}; {resume_hint(cfg, stage)}", file=sys.stderr)
        return leave(4)
    if rank == 0:
        print(f"{stage}: " + (f"exported {out}" if out else "stopped by signal after a checkpoint; "
                              "rerun the same command to resume"))
    return leave(0)


def resume_hint(cfg, stage: str) -> str:
    """Where a rerun of the stage resumes from."""
    from t2t.run_paths import checkpoints_dir
    from t2t.train import launch

    return launch.resume_hint(checkpoints_dir(cfg, stage))
