"""`t2t train --config R --stage 1|2 [--resume auto|never|DIR]`: one rank of a DeepSpeed ZeRO-3 run.

Start it under a launcher (one process per rank), or alone for world size 1:

    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config recipes/demo.yaml --stage 1
    deepspeed --num_gpus 8 --no_local_rank --module t2t.cli train --config recipes/mistral-7b.yaml --stage 1

Outputs go to `<run_dir>/stage{N}/` (checkpoints/, metrics.jsonl, model/).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from t2t.commands import add_config_args, load_recipe


def register(sub) -> None:
    p = sub.add_parser("train", help="train one stage with DeepSpeed ZeRO-3 (one process per rank)")
    add_config_args(p, required=True)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: data-driven targets, 2: model-derived")
    p.add_argument("--resume", default="auto", metavar="auto|never|DIR",
                   help="auto: newest checkpoint of the stage if any (default); never: refuse existing ones; "
                        "DIR: a checkpoints directory or one stepNNNNNNNN checkpoint")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.train import TrainingDiverged, train

    cfg = load_recipe(args)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # one voice: the other ranks report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # torch.distributed and transformers deprecation notices, repeated per collective, drown the real output
    warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
    try:
        out = train(cfg, args.stage, args.resume)
    except TrainingDiverged as e:
        if rank == 0:
            print(f"t2t train: {e}", file=sys.stderr)
        return leave(3)
    if rank == 0:
        print(f"stage {args.stage}: " + (f"exported {out}" if out else "stopped by signal after a checkpoint; "
                                         "rerun the same command to resume"))
    return leave(0)


def leave(code: int) -> int:
    """Exit a launched rank without interpreter finalization, once its work is written and the process group
    is destroyed. Gloo's C++ worker threads can still hold work objects that ZeRO-3 kept referenced;
    finalizing them while the interpreter shuts down aborts the rank ("terminate called without an active
    exception", SIGABRT) after a successful run, and the launcher then reports the whole run as failed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
