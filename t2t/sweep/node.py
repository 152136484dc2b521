"""One job of a sweep: `python -m t2t.sweep.node SWEEP_DIR STEP_KEY [--ray-address A]`, or `SWEEP_DIR --finish`.

What Ray tasks and Slurm jobs run. A step job readies the step's representative point (the steps before it
done, moved into steps/ and linked; its pipeline.json saying so), runs the pipeline there up to the step, in
this process, as `t2t pipeline --until STEP` would, then moves the output into steps/ and records the step done
or failed in nodes/. `--finish` evaluates the finished points and writes the sweep's table (Slurm's last job; on
Ray the driver does it).
"""

from __future__ import annotations

import argparse
import sys
import time

from t2t.pipeline import run_and_tell
from t2t.process import run_verb


def run_node(sweep, key: str, ray_address: str | None) -> int:
    from t2t.sweep.runner import last_error

    node = sweep.nodes.get(key)
    if node is None:
        print(f"sweep step {key} is not a step of the sweep in {sweep.dir}", file=sys.stderr)
        return 2
    store, log = sweep.store, sweep.log_file(node)
    if store.settle(node):
        print(f"{node.step}: already done", flush=True)
        return 0
    store.prepare(node)
    point = store.rep(node)
    store.mark(node, status="running", point=point.name, log=str(log), started=time.time(), error="")
    # The sweep's driver had DeepSpeed parse every point's JSON before it started any step (Sweep.check_with_deepspeed)
    rc = run_verb("pipeline", lambda: run_and_tell(sweep.recipe, list(point.overrides), ray_address, node.step,
                                                   deepspeed_checked=True))
    sys.stdout.flush()
    sys.stderr.flush()
    seconds = round(time.time() - store.entry(node)["started"], 1)
    if rc != 0:
        store.mark(node, status="failed", seconds=seconds, error=last_error(log))
        return rc
    store.adopt(node)
    store.record_done(node, seconds=seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    from t2t.errors import UserError
    from t2t.sweep.runner import Sweep

    p = argparse.ArgumentParser(prog="python -m t2t.sweep.node", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir")
    p.add_argument("key", nargs="?", help="the step's key (its directory name under steps/)")
    p.add_argument("--finish", action="store_true", help="evaluate the finished points and write the table")
    p.add_argument("--ray-address", default=None)
    args = p.parse_args(argv)
    try:
        sweep = Sweep.load(args.sweep_dir)
        if args.finish:
            result = sweep.finish(args.ray_address)
            print(f"done: {sweep.dir}/sweep.md ({result['progress']['done']} of {result['progress']['points']} "
                  "points finished)")
            return 0 if result["progress"]["failed"] == 0 else 1
        return run_node(sweep, args.key, args.ray_address)
    except UserError as e:
        print(f"sweep step {args.key or '--finish'}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
