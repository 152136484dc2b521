"""`t2t sweep --backend slurm`: every missing step one sbatch job, chained by `--dependency=afterok`, then a job
that evaluates and writes the table once all have ended.

    training step    sbatch [--dependency=afterok:J] launchers/train.slurm RECIPE STAGE --set <the point's overrides>
    other steps      sbatch [--dependency=afterok:J] --wrap "python -m t2t.sweep.node SWEEP STEP"
    the table        sbatch --dependency=afterany:<every job> --wrap "python -m t2t.sweep.node SWEEP --finish"

J is the job of the step before it in the chain of the point that runs it; a step already done has no job
(unless a step before it runs again), and one whose job is still queued or running (`squeue`) is not submitted
twice. A failed job's dependents are cancelled by Slurm (`--kill-on-invalid-dep=yes`); the finish job names the
failed step of each point. Every node sees the repository and the sweep directory on a shared filesystem, as for
`launchers/train.slurm`.
Arguments in `--sbatch` (e.g. `--sbatch=--partition=gpu --sbatch=--nodes=4`) go to every submission and
override the scripts' `#SBATCH` defaults.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from t2t.data.files import write_json_atomic
from t2t.errors import UserError
from t2t.pipeline import step_parts
from t2t.sweep.store import output_dir

TRAIN_SLURM = Path(__file__).resolve().parents[2] / "launchers" / "train.slurm"

SLURM_COMMAND_TIMEOUT_S = 120
"""How long sbatch or squeue may take to answer: well under a second while the Slurm controller is up; when it is
busy or failing over they retry by themselves (MessageTimeout, 10 s by default, a few times), and 2 minutes is past
those retries and still short for a person waiting at the prompt. Without a bound a dead controller hangs the sweep."""


def _slurm(cmd: list[str], then: str) -> subprocess.CompletedProcess:
    """Run a Slurm client command; a UserError when it does not answer in SLURM_COMMAND_TIMEOUT_S (`then`: what
    that leaves unknown)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"{cmd[0]} did not answer within {SLURM_COMMAND_TIMEOUT_S} s (is the Slurm controller up? "
                        f"`scontrol ping`); {then}") from None


def sbatch(args: list[str]) -> str:
    """Submit; returns the job id (`--parsable` prints `ID` or `ID;CLUSTER`)."""
    done = _slurm(["sbatch", "--parsable", *args], "it may have submitted the job all the same: check `squeue --me` "
                  "before rerunning the sweep")
    if done.returncode != 0:
        raise UserError(f"sbatch {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def alive(job: str | None) -> bool:
    """True if Slurm still has the job queued or running."""
    if not job:
        return False
    done = _slurm(["squeue", "-h", "-o", "%i", "-j", job], f"whether job {job} is still queued is not known, and "
                  "submitting its step again could run it twice: rerun once Slurm answers")
    return done.returncode == 0 and job in done.stdout.split()


def submit(sweep, sbatch_args: list[str]) -> dict:
    if shutil.which("sbatch") is None:
        raise UserError("--backend slurm needs sbatch on PATH (run it on a Slurm login node)")
    sweep.announce()
    store = sweep.store
    for point in sweep.points.values():
        store.prelink(point)  # training jobs read their inputs through these links
    jobs: dict[str, str] = {}
    common = [f"--chdir={os.getcwd()}", "--kill-on-invalid-dep=yes", *sbatch_args]
    for node in sweep.nodes.values():  # in chain order: a step's predecessor is always submitted before it
        rep = store.rep(node)
        index = rep.chain.index(node)
        before = jobs.get(rep.chain[index - 1].key) if index else None
        # A step after one that runs now runs again after it, done or not: what it read is about to change.
        if before is None and store.settle(node):
            continue
        entry = store.entry(node)
        if alive(entry.get("job")):
            jobs[node.key] = entry["job"]
            print(f"sweep: {node.step} of {', '.join(node.points)}: job {entry['job']} still in Slurm", flush=True)
            continue
        if node.is_training:
            # train.slurm trains in the representative's run directory, as a node job does after `Store.prepare`:
            # not through the link to an earlier output in steps/, which stays until the new one replaces it.
            out = output_dir(rep.cfg, node.step)
            if out.is_symlink():
                out.unlink()
        log = sweep.log_file(node)
        log.parent.mkdir(parents=True, exist_ok=True)
        args = [f"--job-name=t2t-sweep-{node.step.replace(':', '-')}", f"--output={log}", *common]
        if before:
            args.append(f"--dependency=afterok:{before}")
        if node.is_training:
            sets = [arg for o in rep.overrides for arg in ("--set", o)]
            args += [str(TRAIN_SLURM), sweep.recipe, step_parts(node.step)[0], *sets]
        else:
            args += ["--wrap", shlex.join(sweep.node_command(node))]
        jobs[node.key] = sbatch(args)
        store.mark(node, status="submitted", job=jobs[node.key], log=str(log), error="")
        print(f"sweep: {node.step} of {', '.join(node.points)}: job {jobs[node.key]}"
              + (f" after {before}" if before else ""), flush=True)
    finish = ["--job-name=t2t-sweep-finish", f"--output={sweep.dir / 'logs' / 'finish.log'}", *common]
    if jobs:
        finish.append(f"--dependency=afterany:{':'.join(jobs.values())}")
    finish += ["--wrap", shlex.join(sweep.node_command_finish())]
    finish_job = sbatch(finish)
    result = dict(directory=str(sweep.dir), jobs=jobs, finish=finish_job)
    write_json_atomic(sweep.dir / "slurm.json", result)
    print(f"sweep: {len(jobs)} step job(s) and the table's job {finish_job} submitted; "
          f"{sweep.dir}/sweep.md appears when they have ended", flush=True)
    return result
