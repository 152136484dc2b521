"""`t2t pipeline [--config R]`: the whole recipe end to end, resumable (see t2t/pipeline.py)."""

from __future__ import annotations

from t2t.commands import add_config_args


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="base → per stage: targets, train → eval → report, resumable")
    add_config_args(p)
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--until", default=None, help="stop after this step: base, STAGE:targets, STAGE:train (e.g. stage1:train), eval")
    p.add_argument("--verify", action="store_true",
                   help="decide what is up to date by reading every corpus, backbone and shard in full (by default "
                        "a file whose size and modification time are unchanged since it was last read counts as "
                        "unchanged)")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.pipeline import run_and_tell

    return run_and_tell(args.config, args.overrides, args.ray_address, args.until, args.verify)
