"""`t2t sweep --config R --grid KEY=V1,V2 [--grid ...]`: a grid of pipelines, shared steps once, one table."""

from __future__ import annotations

import sys

from t2t.commands import add_config_args


def register(sub) -> None:
    p = sub.add_parser("sweep", help="the cartesian product of --grid values as pipelines sharing identical steps, "
                                     "scheduled on Ray or Slurm, evaluated into one table")
    add_config_args(p, required=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe key and its values (repeatable: the points are the cartesian product), "
                        "e.g. --grid stages.stage2.targets.tau=1e-4,1e-5")
    p.add_argument("--name", default=None,
                   help="the sweep's directory name next to the recipe's run_dir (default: <recipe name>-sweep)")
    p.add_argument("--backend", choices=("ray", "slurm"), default="ray",
                   help="ray (default): run here on Ray, a local one unless --ray-address; slurm: submit one sbatch "
                        "job per step with afterok dependencies and a last job that writes the table")
    p.add_argument("--ray-address", default=None,
                   help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray with this machine's CPUs)")
    p.add_argument("--sbatch", action="append", default=[], metavar="ARG",
                   help="with --backend slurm: an sbatch argument for every job (repeatable), e.g. "
                        "--sbatch=--partition=gpu --sbatch=--nodes=4")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a sweep directory made by another grid (finished steps the new grid shares are kept)")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.errors import UserError
    from t2t.sweep import run_sweep

    if args.sbatch and args.backend != "slurm":
        raise UserError("--sbatch goes with --backend slurm")
    result = run_sweep(args.config, args.overrides, args.grid, args.name, args.ray_address, args.overwrite,
                       args.backend, args.sbatch)
    if args.backend == "slurm":
        return 0
    failed = [n for n, r in result["rows"].items() if r["status"] == "failed"]
    print(f"done: {result['directory']}/sweep.md ({result['progress']['done']} of {result['progress']['points']} "
          "points finished)")
    if failed:
        print(f"t2t sweep: {len(failed)} point(s) failed: {', '.join(failed)}; finished steps are kept, rerun the "
              "same command to redo only what is missing or failed", file=sys.stderr)
        return 1
    return 0
