"""`t2t sweep`: the points of a grid, their shared steps once, scheduled on Ray, then one evaluation and one table.

Every distinct step (see `t2t.sweep.store`) is a Ray task that runs the same `t2t pipeline --until STEP` a user
would run in the point's directory, holding the resources the step needs: a training step `train.nproc` CPUs
(GPUs where the cluster has them) for its torchrun ranks, a targets step none of its own (its Ray workers
claim theirs). Ray's resource accounting is the scheduler: on a laptop the sweep starts a local Ray with the
machine's CPUs, so points run as far as the machine allows and never oversubscribe it; `--ray-address`
spreads them over a cluster (the sweep directory must then be on a filesystem every node sees).

A failing step fails only the points that contain it, recorded with the step and its log; the other points
finish. A rerun runs only what is missing or failed: finished steps are recorded in `nodes.json`, and
evaluation results are cached per model and task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from t2t.data.files import write_json_atomic
from t2t.errors import UserError
from t2t.sweep.grid import expand, parse_grid
from t2t.sweep.store import Node, PointRun, Store, sweep_overrides

CARRIED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR",
               "TOKENIZERS_PARALLELISM", "PYTHONPATH", "T2T_FAULT_INJECT")
"""The driver's environment a step's process gets wherever Ray runs it."""

STOP_GRACE_S = 120
"""How long a stopped step has to checkpoint after SIGTERM before it is killed."""


def run_step_process(cmd: list[str], cwd: str, env: dict, log_file: str) -> int:
    """Run one pipeline step as a child process (inside a Ray task); a cancelled task passes SIGTERM on, so the
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
    def __init__(self, recipe: str, overrides: list[str], grid_flags: list[str], sweep_dir: str | None = None,
                 ray_address: str | None = None, overwrite: bool = False):
        from t2t.pipeline import Pipeline

        self.recipe, self.overrides = recipe, list(overrides)
        self.grid = parse_grid(grid_flags)
        points, self.notes = expand(recipe, self.overrides, self.grid)
        base_cfg = points[0].cfg
        self.dir = Path(sweep_dir) if sweep_dir else Path(base_cfg.run_dir).parent / f"{base_cfg.name}-sweep"
        self.ray_address = ray_address
        self.check_grid_file(overwrite)
        self.points: list[PointRun] = []
        self.nodes: dict[str, Node] = {}
        for point in points:
            point_overrides = [*self.overrides, *point.overrides, *sweep_overrides(self.dir, point.name)]
            try:
                pipeline = Pipeline(recipe, point_overrides)  # validates the DeepSpeed JSON, objectives, starts
            except UserError as e:
                raise type(e)(f"grid point {point.name}: {e}") from None
            fingerprints = pipeline.fingerprints()
            chain = []
            for step in pipeline.steps:
                if step in ("eval", "report"):
                    continue  # the sweep evaluates every point's final model together
                node = self.nodes.setdefault(f"{step}@{fingerprints[step]}", Node(step, fingerprints[step]))
                node.points.append(point.name)
                chain.append(node)
            self.points.append(PointRun(point.name, point_overrides, pipeline.cfg, chain))
        self.assignments = {p.name: p.assignments for p in points}
        self.store = Store(self.dir)
        self.failed_now: set[str] = set()
        """Nodes that failed in this run (a rerun retries what failed before it)."""

    # ------------------------------------------------------------------ the grid file

    def check_grid_file(self, overwrite: bool) -> None:
        """A sweep directory belongs to one grid: another one is refused unless `overwrite`."""
        grid_file = self.dir / "grid.json"
        mine = dict(recipe=str(Path(self.recipe).resolve()), overrides=self.overrides, grid=self.grid)
        if grid_file.exists():
            theirs = json.loads(grid_file.read_text())
            if theirs != mine and not overwrite:
                raise UserError(f"{self.dir} holds a sweep of another grid or recipe ({grid_file}: {theirs}); "
                                "pass --overwrite to sweep this one there (finished steps it shares are kept), "
                                "or --name another sweep")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(grid_file, mine)

    # ------------------------------------------------------------------ running

    def step_command(self, point: PointRun, node: Node) -> list[str]:
        sets = [arg for o in point.overrides for arg in ("--set", o)]
        return [sys.executable, "-m", "t2t.cli", "pipeline", "--config", self.recipe, *sets, "--until", node.step,
                "--ray-address", self.address]

    def resources(self, point: PointRun, node: Node) -> dict:
        import ray

        if node.step.endswith(":train"):
            nproc = point.cfg.train.nproc
            if ray.cluster_resources().get("GPU", 0) > 0:
                return dict(num_cpus=1, num_gpus=nproc)
            return dict(num_cpus=min(nproc, int(ray.cluster_resources().get("CPU", 1))))
        return dict(num_cpus=0 if node.step.endswith(":targets") else 1)

    def launch(self, point: PointRun, node: Node):
        import ray

        self.store.sync(point)
        log_file = self.dir / "logs" / f"{node.key}.log"
        env = {k: os.environ[k] for k in CARRIED_ENV if k in os.environ}
        task = ray.remote(run_step_process).options(max_retries=0, **self.resources(point, node))
        self.store.mark(node, status="running", point=point.name, log=str(log_file), started=time.time())
        print(f"sweep: {node.step} of {', '.join(node.points)}: running (log: {log_file})", flush=True)
        return task.remote(self.step_command(point, node), os.getcwd(), env, str(log_file))

    def run(self) -> dict:
        """Run every missing step, evaluate, write sweep.md/sweep.json; returns the table."""
        import ray

        from t2t.ray_jobs.session import start_or_join

        for note in self.notes:
            print(f"sweep: {note}", flush=True)
        print(f"sweep: {len(self.points)} points, {len(self.nodes)} distinct steps "
              f"(of {sum(len(p.chain) for p in self.points)} in separate pipelines) in {self.dir}", flush=True)
        started = start_or_join(self.ray_address, None)
        self.address = ray.get_runtime_context().gcs_address
        try:
            failed = self.run_steps()
            return self.finish(failed)
        finally:
            if started:
                ray.shutdown()

    def run_steps(self) -> dict[str, Node]:
        """Launch each point's next missing step as soon as the one before it is done; returns failed points."""
        import ray

        running: dict = {}  # Ray ref → (node, representative point)
        failed: dict[str, Node] = {}
        started_any = False
        try:
            while True:
                for point in self.points:
                    if point.name in failed:
                        continue
                    node = next((n for n in point.chain if self.store.status(n) != "done"), None)
                    if node is None or any(n is node for n, _ in running.values()):
                        continue
                    if node.key in self.failed_now:
                        failed[point.name] = node  # failed in this run: the points that contain it stop here
                        continue
                    if node.step == "base" and any(n.step == "base" for n, _ in running.values()):
                        continue  # backbones are built or converted one at a time (they may share a path)
                    running[self.launch(point, node)] = (node, point)
                    started_any = True
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                node, point = running.pop(ready[0])
                try:
                    rc = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the worker running the step died: the step failed
                    with open(self.store.record[node.key]["log"], "a") as f:
                        f.write(f"\nsweep: the Ray task running this step failed: {e}\n")
                    rc = -1
                self.finished(node, point, rc)
                self.progress(running)
        except BaseException:
            for ref in running:
                ray.cancel(ref)  # each step's process gets SIGTERM: training ranks checkpoint
            ray.wait(list(running), num_returns=len(running), timeout=STOP_GRACE_S + 10)
            raise
        if not started_any:
            print("sweep: every step is done; nothing to run", flush=True)
        for point in self.points:
            if point.name not in failed:
                self.store.sync(point)
        return failed

    def finished(self, node: Node, point: PointRun, rc: int) -> None:
        entry = self.store.record[node.key]
        seconds = round(time.time() - entry["started"], 1)
        if rc == 0:
            self.store.adopt(node, point)
            self.store.mark(node, status="done", seconds=seconds)
            print(f"sweep: {node.step} of {', '.join(node.points)}: done in {seconds:.0f}s", flush=True)
        else:
            self.failed_now.add(node.key)
            self.store.mark(node, status="failed", seconds=seconds, error=last_error(entry["log"]))
            print(f"sweep: {node.step} of {', '.join(node.points)}: FAILED (exit {rc}; log: {entry['log']})",
                  flush=True)

    def progress(self, running: dict) -> None:
        done = sum(all(self.store.status(n) == "done" for n in p.chain) for p in self.points)
        failed = {p.name for p in self.points if any(n.key in self.failed_now for n in p.chain)}
        busy = {p.name for p in self.points if any(n is m for n, _ in running.values() for m in p.chain)} - failed
        print(f"sweep: points {done} done, {len(busy)} running, {len(failed)} failed, "
              f"{len(self.points) - done - len(busy) - len(failed)} waiting", flush=True)

    # ------------------------------------------------------------------ evaluation and the table

    def finish(self, failed: dict[str, Node]) -> dict:
        from t2t.sweep.table import evaluate_points, write_sweep

        rows = {}
        for point in self.points:
            node = failed.get(point.name)
            rows[point.name] = dict(assignments=self.assignments[point.name], overrides=point.overrides,
                                    status="failed" if node else "done")
            if node:
                entry = self.store.record[node.key]
                rows[point.name].update(failed_step=node.step, log=entry["log"], error=entry.get("error", ""))
        table = evaluate_points(self, [p for p in self.points if p.name not in failed], self.address)
        return write_sweep(self, rows, table)


def last_error(log_file: str) -> str:
    """The last line a failed step printed that names an error (or its last line)."""
    try:
        lines = [ln.strip() for ln in Path(log_file).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or [""])[-1][:500]


def run_sweep(recipe: str, overrides: list[str], grid: list[str], name: str | None = None,
              ray_address: str | None = None, overwrite: bool = False) -> dict:
    sweep_dir = None
    if name:
        from t2t.config import load_config

        sweep_dir = str(Path(load_config(recipe, overrides).run_dir).parent / name)
    return Sweep(recipe, overrides, grid, sweep_dir, ray_address, overwrite).run()


__all__ = ["Sweep", "run_sweep"]
