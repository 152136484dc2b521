"""`t2t sweep`: the points of a grid, their shared steps once, scheduled on Ray or Slurm, then one table.

Every distinct step (see `t2t.sweep.store`) is one job, `python -m t2t.sweep.node SWEEP STEP`, which runs
the same `t2t pipeline --until STEP` a user would run in its point's directory. On Ray (the default; a local
Ray with the machine's CPUs on a laptop) each job is a Ray task holding what the step needs: a training step
`train.nproc` CPUs, or GPUs where the cluster has them, for its torchrun ranks; a targets step none of its own
(its Ray workers claim theirs). Ray's resource accounting is the scheduler, so points run as far as the
machine allows and never oversubscribe it. With `--backend slurm` (t2t/sweep/slurm.py) the jobs are sbatch
submissions chained by `--dependency=afterok`, training through `launchers/train.slurm`.

A failing step fails only the points that have it, recorded with the step and its log; the other points
finish. A rerun runs only what is missing or failed: each step's status is a file in `nodes/`, and
evaluation results are cached per model and task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from t2t.data.files import write_json_atomic
from t2t.errors import UserError
from t2t.sweep.grid import expand, parse_grid
from t2t.sweep.store import Node, PointRun, Store, sweep_overrides

CARRIED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR",
               "TOKENIZERS_PARALLELISM", "PYTHONPATH")
"""The driver's environment a step's process gets wherever Ray runs it."""

STOP_GRACE_S = 120
"""How long a stopped step has to checkpoint after SIGTERM before it is killed."""


def run_step_process(cmd: list[str], cwd: str, env: dict, log_file: str) -> int:
    """Run one step's job as a child process (inside a Ray task); a cancelled task passes SIGTERM on, so the
    training ranks checkpoint, and waits for the child to finish before giving up."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        child = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            return child.wait()
        except BaseException:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
            raise


class Sweep:
    def __init__(self, recipe: str, overrides: list[str], grid: dict[str, list[str]], sweep_dir: str | None = None,
                 check_runnable: bool = True):
        from t2t.pipeline import Pipeline

        self.recipe, self.overrides, self.grid = str(recipe), list(overrides), grid
        points, self.notes = expand(self.recipe, self.overrides, grid)
        base_cfg = points[0].cfg
        self.dir = Path(sweep_dir) if sweep_dir else Path(base_cfg.run_dir).parent / f"{base_cfg.name}-sweep"
        self.assignments = {p.name: p.assignments for p in points}
        self.points: dict[str, PointRun] = {}
        self.nodes: dict[str, Node] = {}  # by key, in the order the first point meets them
        for point in points:
            point_overrides = [*self.overrides, *point.overrides, *sweep_overrides(self.dir, point.name)]
            try:
                # validates the recipe, its DeepSpeed JSON's file and the start models here, before any job starts
                pipeline = Pipeline(self.recipe, point_overrides, check_runnable=check_runnable)
            except UserError as e:
                raise type(e)(f"grid point {point.name}: {e}") from None
            fingerprints = pipeline.fingerprints()
            chain = []
            for step in pipeline.steps:
                if step in ("eval", "report"):
                    continue  # the sweep evaluates every point's final model together
                node = Node(step, fingerprints[step])
                node = self.nodes.setdefault(node.key, node)
                node.points.append(point.name)
                chain.append(node)
            self.points[point.name] = PointRun(point.name, point_overrides, pipeline, chain)
        self.store = Store(self.dir, self.points)
        self.ray_address: str | None = None
        """The Ray cluster to run on (None: $RAY_ADDRESS, else a private local one)."""

    def check_with_deepspeed(self) -> None:
        """DeepSpeed's parse of every point's JSON, before any step job starts (`Pipeline.check_with_deepspeed`)."""
        for point in self.points.values():
            point.pipeline.check_with_deepspeed(point.pipeline.steps, None)

    # ------------------------------------------------------------------ the grid file

    @property
    def grid_file(self) -> Path:
        return self.dir / "grid.json"

    def claim(self, overwrite: bool) -> None:
        """A sweep directory belongs to one grid: another one is refused unless `overwrite`."""
        mine = dict(recipe=str(Path(self.recipe).resolve()), overrides=self.overrides, grid=self.grid)
        if self.grid_file.exists():
            theirs = json.loads(self.grid_file.read_text())
            if theirs != mine and not overwrite:
                raise UserError(f"{self.dir} holds a sweep of another grid or recipe ({self.grid_file}: {theirs}); "
                                "pass --overwrite to sweep this one there (finished steps it shares are kept), "
                                "or --name another sweep")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.grid_file, mine)

    @classmethod
    def load(cls, sweep_dir: str | Path) -> "Sweep":
        """The sweep a directory holds (what a step's job reads: its grid.json)."""
        grid_file = Path(sweep_dir) / "grid.json"
        if not grid_file.is_file():
            raise UserError(f"{sweep_dir} is not a sweep directory (no grid.json)")
        saved = json.loads(grid_file.read_text())
        return cls(saved["recipe"], saved["overrides"], saved["grid"], str(sweep_dir))

    def announce(self) -> None:
        for note in self.notes:
            print(f"sweep: {note}", flush=True)
        print(f"sweep: {len(self.points)} points, {len(self.nodes)} distinct steps "
              f"(of {sum(len(p.chain) for p in self.points.values())} in separate pipelines) in {self.dir}",
              flush=True)

    def log_file(self, node: Node) -> Path:
        return self.dir / "logs" / f"{node.key}.log"

    def node_command(self, node: Node, *extra: str) -> list[str]:
        return [sys.executable, "-m", "t2t.sweep.node", str(self.dir), node.key, *extra]

    def node_command_finish(self) -> list[str]:
        return [sys.executable, "-m", "t2t.sweep.node", str(self.dir), "--finish"]

    # ------------------------------------------------------------------ running on Ray

    def run(self) -> dict:
        """Run every missing step on Ray, evaluate, write sweep.md/sweep.json; returns the sweep.json content."""
        import ray

        from t2t.jobs.session import cluster_address, start_or_join

        self.announce()
        if not self.ray_address and all(self.store.settle(n) for n in self.nodes.values()):
            # A rerun of a finished sweep starts no Ray: its evaluation is cached, or runs as `t2t eval` would.
            print("sweep: every step is done; nothing to run", flush=True)
            return self.finish(None)
        self.check_with_deepspeed()
        # A cluster the user named is handed to every step. A Ray started here only schedules the steps of one
        # machine: steps join it where they want Ray, but compute as `t2t pipeline` does there (LOCAL_RAY_ENV).
        named = cluster_address(self.ray_address)
        started = start_or_join(self.ray_address, None)
        try:
            address = ray.get_runtime_context().gcs_address
            self.run_steps(address, named=bool(named))
            if named:
                return self.finish(address)
        finally:
            if started:
                ray.shutdown()
        return self.finish(None)  # on one machine, once the steps are done: evaluated as `t2t eval` would

    def resources(self, node: Node, named: bool) -> dict:
        import ray

        from t2t.pipeline import step_parts
        from t2t.jobs.targets import targets_here

        if node.is_training:
            nproc = self.store.rep(node).cfg.train.nproc  # 0: decided where it runs (t2t.train.launch.local_ranks)
            if ray.cluster_resources().get("GPU", 0) > 0:
                return dict(num_cpus=1, num_gpus=nproc or 1)
            return dict(num_cpus=min(nproc or os.cpu_count() or 1, int(ray.cluster_resources().get("CPU", 1))))
        stage, what = step_parts(node.step)
        if what == "targets" and not targets_here(self.store.rep(node).cfg, stage, self.ray_address if named else None):
            return dict(num_cpus=0)  # its Ray workers compute, and need the CPUs
        return dict(num_cpus=1)

    def run_steps(self, address: str, named: bool) -> None:
        """Launch each point's next missing step as soon as the one before it is done; `named`: `address` is a
        cluster the user named, not the Ray this sweep started on its machine."""
        import ray

        from t2t.jobs.session import LOCAL_RAY_ENV

        running: dict = {}  # Ray ref → node
        failed_now: set[str] = set()  # a rerun retries what failed before it, not what failed in this run
        env = {k: os.environ[k] for k in CARRIED_ENV if k in os.environ}
        joins = ("--ray-address", address) if named else ()
        if not named:
            env[LOCAL_RAY_ENV] = address
        task = ray.remote(run_step_process)
        launched = 0
        try:
            while True:
                for point in self.points.values():
                    # a step in progress is never settled from here: its own job moves it into steps/
                    node = next((n for n in point.chain if n in running.values() or not self.store.settle(n)), None)
                    if node is None or node.key in failed_now or node in running.values():
                        continue
                    if node.step == "base" and any(n.step == "base" for n in running.values()):
                        continue  # backbones are built or converted one at a time (they may share a path)
                    print(f"sweep: {node.step} of {', '.join(node.points)}: running (log: {self.log_file(node)})",
                          flush=True)
                    ref = task.options(max_retries=0, **self.resources(node, named)).remote(
                        self.node_command(node, *joins), os.getcwd(), env, str(self.log_file(node)))
                    running[ref] = node
                    launched += 1
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                node = running.pop(ready[0])
                try:
                    rc = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the worker running the step died: the step failed
                    with open(self.log_file(node), "a") as f:
                        f.write(f"\nsweep: the Ray task running this step failed: {e}\n")
                    rc = -1
                entry = self.store.entry(node)
                if rc == 0 and entry.get("status") == "done":
                    print(f"sweep: {node.step} of {', '.join(node.points)}: done in {entry['seconds']:.0f}s", flush=True)
                else:
                    failed_now.add(node.key)
                    if entry.get("status") != "failed":  # killed before it could say so itself
                        self.store.mark(node, status="failed", log=str(self.log_file(node)),
                                        error=f"exit {rc}: {last_error(self.log_file(node))}")
                    print(f"sweep: {node.step} of {', '.join(node.points)}: FAILED (log: {self.log_file(node)})",
                          flush=True)
                self.progress(running, failed_now)
        except BaseException:
            for ref in running:
                ray.cancel(ref)  # each step's process gets SIGTERM: training ranks checkpoint
            ray.wait(list(running), num_returns=len(running), timeout=STOP_GRACE_S + 10)
            raise
        if not launched:
            print("sweep: every step is done; nothing to run", flush=True)

    def progress(self, running: dict, failed_now: set[str]) -> None:
        counts = {"done": 0, "running": 0, "failed": 0, "waiting": 0}
        for point in self.points.values():
            pending = next((n for n in point.chain if self.store.status(n) != "done"), None)
            state = ("done" if pending is None else "failed" if pending.key in failed_now
                     else "running" if pending in running.values() else "waiting")
            counts[state] += 1
        print("sweep: points " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)

    # ------------------------------------------------------------------ evaluation and the table

    def finish(self, address: str | None) -> dict:
        """Evaluate every finished point, write sweep.json, sweep.md and the plots."""
        from t2t.sweep.table import evaluate_points, write_sweep

        rows, finished = {}, []
        for point in self.points.values():
            pending = next((n for n in point.chain if not self.store.settle(n)), None)
            rows[point.name] = dict(assignments=self.assignments[point.name], overrides=point.overrides,
                                    status="failed" if pending else "done")
            if pending:
                entry = self.store.entry(pending)
                rows[point.name].update(failed_step=pending.step, log=entry.get("log", str(self.log_file(pending))),
                                        error=entry.get("error") or last_error(self.log_file(pending))
                                        or "not run: a step it needs failed")
            else:
                self.store.prelink(point)
                finished.append(point)
        return write_sweep(self, rows, evaluate_points(self, finished, address))


def last_error(log_file: str | Path) -> str:
    """The last line a failed step printed that names an error (or its last line)."""
    try:
        lines = [ln.strip() for ln in Path(log_file).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or [""])[-1][:500]


def run_sweep(recipe: str, overrides: list[str], grid_flags: list[str], name: str | None = None,
              ray_address: str | None = None, overwrite: bool = False, backend: str = "ray",
              sbatch_args: list[str] = ()) -> dict:
    """Run (or resume) a sweep; returns its sweep.json content (on Slurm: the submitted jobs)."""
    grid = parse_grid(grid_flags)
    sweep_dir = None
    if name:
        from t2t.config import load_config

        sweep_dir = str(Path(load_config(recipe, overrides).run_dir).parent / name)
    sweep = Sweep(recipe, overrides, grid, sweep_dir)
    sweep.claim(overwrite)
    if backend == "slurm":
        from t2t.sweep.slurm import submit

        sweep.check_with_deepspeed()
        return submit(sweep, list(sbatch_args))
    sweep.ray_address = ray_address
    return sweep.run()


__all__ = ["Sweep", "run_sweep", "last_error"]
