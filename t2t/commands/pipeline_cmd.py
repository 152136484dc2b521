"""`t2t pipeline [--config R]`: the whole recipe end to end, resumable (see t2t/pipeline.py)."""

from __future__ import annotations

import sys

from t2t.commands import add_config_args


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="base → per stage: targets, train → eval → report, resumable")
    add_config_args(p)
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--until", default=None, help="stop after this step: base, STAGE:targets, STAGE:train (e.g. stage1:train), eval")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.pipeline import StepFailed, run_pipeline

    try:
        report = run_pipeline(args.config, args.overrides, args.ray_address, args.until)
    except StepFailed as e:
        then = ("once that is fixed, the same command goes on from this step" if e.needs_a_fix
                else "rerun the same command to resume")
        print(f"t2t pipeline: {e}\nfinished steps are kept; {then}", file=sys.stderr)
        return 1
    if args.until in (None, "report"):
        print(f"done: {report}")
    else:  # the report is written by the last step only
        print(f"done up to {args.until} in {report.parent}; rerun without --until to go on")
    return 0
