"""Shared steps: every point's pipeline steps, keyed by the pipeline's own fingerprints, computed once.

    runs/<sweep>/points/<point>/              the point's run directory (`t2t pipeline` works in it as usual)
    runs/<sweep>/points/<point>/shards/       its target shards
    runs/<sweep>/steps/<step>-<fingerprint>/  a finished step's outputs; every point that has the step links here
    runs/<sweep>/nodes/<step>-<fingerprint>.json   the step's status: running, done or failed (with its log)

A step's fingerprint hashes exactly the config fields it reads and the fingerprints of the steps it reads
from (`t2t.pipeline.Pipeline.fingerprints`), so two points with the same fingerprint for a step compute the
same thing, and share everything upstream of it too. The step runs once, in the run directory of the first
point that has it (its representative: checkpoints, ledger and logs stay resumable there); once finished, its
output directory moves into `steps/` and is linked back. The other points link to that `steps/` directory
from the start. A point's `pipeline.json` records the finished steps, so `t2t pipeline` skips them there
like any finished step. Statuses are one file per step, so jobs on different machines never write the same file.

A status file is a record, not the truth: a step recorded done counts as done only while the pipeline's own
output checks pass for it (its outputs complete and made from what the recipe reads now: a changed corpus
makes its targets stale) and no step before it has finished again since (each done step records when the
steps it read from finished). A stale step runs again, and so does everything after it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from t2t import run_paths
from t2t.data.files import replace_dir, write_json_atomic
from t2t.errors import UserError
from t2t.pipeline import step_parts


def sweep_overrides(sweep_dir: Path, point: str) -> list[str]:
    """What the sweep sets for each point: its name and its own directories."""
    run = sweep_dir / "points" / point
    return [f"name={point}", f"run_dir={run}", f"data.shards_dir={run / 'shards'}", f"eval.out_dir={sweep_dir / 'eval'}"]


def output_dir(cfg, step: str) -> Path:
    """The directory a pipeline step writes (and a later step or point reads)."""
    stage, what = step_parts(step)
    if step == "base":
        return run_paths.base_export_dir(cfg)
    return run_paths.shards_dir(cfg, stage) if what == "targets" else run_paths.stage_dir(cfg, stage)


@dataclass
class Node:
    """One distinct step of the sweep: a step name and the fingerprint of its inputs."""

    step: str
    fingerprint: str
    points: list[str] = field(default_factory=list)
    """The points whose pipelines have this step with these inputs, in grid order; the first one runs it."""

    @property
    def key(self) -> str:
        return f"{self.step.replace(':', '-')}-{self.fingerprint}"

    @property
    def is_training(self) -> bool:
        return self.step.endswith(":train")


@dataclass
class PointRun:
    """A point as the sweep runs it: its recipe arguments, its pipeline and its chain of step nodes."""

    name: str
    overrides: list[str]
    """Recipe-wide overrides, the point's grid assignments and its directories, in that order."""
    pipeline: object
    """Its `t2t.pipeline.Pipeline` (config, fingerprints, output checks)."""
    chain: list[Node]

    @property
    def cfg(self):
        return self.pipeline.cfg


def link(at: Path, target: Path) -> None:
    """Make `at` a relative symbolic link to `target` (replacing another link atomically)."""
    rel = os.path.relpath(target, at.parent)
    if at.is_symlink():
        if os.readlink(at) == rel:
            return
    elif at.exists():
        raise UserError(f"{at} is a directory of its own, not a link into the sweep's steps/: move it away, "
                        "or sweep into a new directory (--name)")
    at.parent.mkdir(parents=True, exist_ok=True)
    tmp = at.with_name(f"{at.name}.link{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(rel, tmp)
    os.replace(tmp, at)


class Store:
    """`steps/` (shared outputs) and `nodes/` (one status file per distinct step)."""

    def __init__(self, sweep_dir: Path, points: dict[str, PointRun]):
        self.root = sweep_dir / "steps"
        self.status_dir = sweep_dir / "nodes"
        self.points = points
        self.checked: set[str] = set()
        """Done steps this process found current: checked once each (a check may hash a corpus)."""

    def path(self, node: Node) -> Path:
        return self.root / node.key

    def entry(self, node: Node) -> dict:
        f = self.status_dir / f"{node.key}.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def status(self, node: Node) -> str:
        return self.entry(node).get("status", "pending")

    def mark(self, node: Node, **entry) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.status_dir / f"{node.key}.json", {**self.entry(node), "step": node.step, **entry})

    def rep(self, node: Node) -> PointRun:
        return self.points[node.points[0]]

    def upstream(self, node: Node) -> list[Node]:
        """The steps `node` reads from, directly or not (the same in every point that has it)."""
        chain = self.rep(node).chain
        return chain[:chain.index(node)]

    def record_done(self, node: Node, **entry) -> None:
        """Record `node` done now, with when each step it read from finished."""
        inputs = {up.key: self.entry(up).get("finished") for up in self.upstream(node)}
        self.mark(node, status="done", finished=time.time(), inputs=inputs, **entry)

    def stale(self, node: Node) -> str | None:
        """Why a step recorded done is not current, or None if it is."""
        recorded = self.entry(node).get("inputs", {})  # absent in a status written before t2t recorded it
        for up in self.upstream(node):
            if recorded.get(up.key) != self.entry(up).get("finished"):
                return f"{up.step} ran again since it finished"
        if not self.rep(node).pipeline.outputs_present(node.step):
            return "its outputs are missing or no longer match what the recipe reads (a changed corpus?)"
        return None

    def adopt(self, node: Node) -> None:
        """Move the finished step's output out of its representative's run directory into steps/, link it back."""
        src = output_dir(self.rep(node).cfg, node.step)
        if not src.is_symlink():
            if src.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                replace_dir(src, self.path(node))
            elif not self.path(node).exists():
                raise RuntimeError(f"step {node.step} of {node.points[0]} finished without its output {src}")
        link(src, self.path(node))

    def settle(self, node: Node) -> bool:
        """True if the step is done and current (see the module docstring); a stale one is recorded so, with
        why. A step whose job finished outside a sweep process (a Slurm training job) is recognised by its
        complete outputs, moved into steps/ and recorded."""
        if self.status(node) == "done":
            if node.key in self.checked:
                return True
            why = self.stale(node)
            if why is None:
                self.checked.add(node.key)
                return True
            self.mark(node, status="stale", error=why)
            print(f"sweep: {node.step} of {', '.join(node.points)}: stale, runs again: {why}", flush=True)
            return False
        rep = self.rep(node)
        out = output_dir(rep.cfg, node.step)
        if not out.is_symlink() and rep.pipeline.outputs_present(node.step):
            self.adopt(node)
            self.record_done(node)
            return True
        return False

    def prelink(self, point: PointRun) -> None:
        """Link the outputs of every step `point` does not run itself to where they will be (or are) in steps/."""
        for node in point.chain:
            if node.points[0] != point.name or self.status(node) == "done":
                link(output_dir(point.cfg, node.step), self.path(node))

    def prepare(self, node: Node) -> None:
        """Ready `node`'s representative to run it: everything before it done and linked, recorded in its
        pipeline.json (so its pipeline skips them), its own output directory not a link."""
        point = self.rep(node)
        index = point.chain.index(node)
        for before in point.chain[:index]:
            if not self.settle(before):
                raise UserError(f"step {node.step} of {point.name} needs {before.step}, which is not done "
                                f"(status {self.status(before)}; {self.entry(before).get('log', 'no log')})")
        self.prelink(point)
        out = output_dir(point.cfg, node.step)
        if out.is_symlink():
            out.unlink()  # a link from an earlier grid or a crash after the move: the step runs here again
        state_file = Path(point.cfg.run_dir) / "pipeline.json"
        state_file.parent.mkdir(parents=True, exist_ok=True)
        done = {n.step: n.fingerprint for n in point.chain[:index]}
        old = json.loads(state_file.read_text()) if state_file.exists() else {}
        # An interrupted run of this step keeps its `started` entry: run again from the same inputs, it resumes.
        write_json_atomic(state_file, {**done, "started": {**old.get("started", {}), **done}})
