"""Shared steps: every point's pipeline steps, keyed by the pipeline's own fingerprints, computed once.

    runs/<sweep>/points/<point>/            the point's run directory (`t2t pipeline` works in it as usual)
    runs/<sweep>/points/<point>/shards/     its target shards
    runs/<sweep>/steps/<step>-<fingerprint>/  a finished step's outputs; the points that share it link here

A step's fingerprint hashes exactly the config fields it reads and the fingerprints of the steps it reads
from (`t2t.pipeline.Pipeline.fingerprints`), so two points with the same fingerprint for a step would
compute the same thing. The step runs once, in the run directory of the first point that needs it (its
checkpoints, ledger and logs stay resumable there); once finished, its output directory moves into
`steps/` and every point that shares it gets a symbolic link in its place. A point's `pipeline.json` then
records the step as done, so `t2t pipeline` on that point skips it like any finished step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from t2t import run_paths
from t2t.config import Config
from t2t.data.files import replace_dir, write_json_atomic
from t2t.errors import UserError


def sweep_overrides(sweep_dir: Path, point: str) -> list[str]:
    """What the sweep sets for each point: its name and its own directories."""
    run = sweep_dir / "points" / point
    return [f"name={point}", f"run_dir={run}", f"data.shards_dir={run / 'shards'}", f"eval.out_dir={sweep_dir / 'eval'}"]


def output_dir(cfg: Config, step: str) -> Path:
    """The directory a pipeline step writes (and a later step or point reads)."""
    stage, _, what = step.partition(":")
    if step == "base":
        return run_paths.base_export_dir(cfg)
    return run_paths.shards_dir(cfg, stage) if what == "targets" else run_paths.stage_dir(cfg, stage)


@dataclass
class Node:
    """One distinct step of the sweep: a step name and the fingerprint of its inputs."""

    step: str
    fingerprint: str
    points: list[str] = field(default_factory=list)
    """The points whose pipelines contain this step with these inputs, in grid order."""

    @property
    def key(self) -> str:
        return f"{self.step.replace(':', '-')}-{self.fingerprint}"


@dataclass
class PointRun:
    """A point as the sweep runs it: its recipe arguments, config and chain of step nodes."""

    name: str
    overrides: list[str]
    """Recipe-wide overrides, the point's grid assignments and its directories, in that order."""
    cfg: Config
    chain: list[Node]

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)


def link(at: Path, target: Path) -> None:
    """Make `at` a relative symbolic link to `target` (replacing an older link atomically)."""
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
    """`steps/` and the record of which nodes are done or failed (`nodes.json`)."""

    def __init__(self, sweep_dir: Path):
        self.root = sweep_dir / "steps"
        self.record_file = sweep_dir / "nodes.json"
        self.record: dict[str, dict] = json.loads(self.record_file.read_text()) if self.record_file.exists() else {}

    def path(self, node: Node) -> Path:
        return self.root / node.key

    def status(self, node: Node) -> str:
        return self.record.get(node.key, {}).get("status", "pending")

    def mark(self, node: Node, **entry) -> None:
        self.record[node.key] = {**self.record.get(node.key, {}), "step": node.step, **entry}
        write_json_atomic(self.record_file, self.record)

    def adopt(self, node: Node, point: PointRun) -> None:
        """Move the step's output out of `point`'s run directory into steps/ and link it back."""
        src = output_dir(point.cfg, node.step)
        if not src.is_symlink():
            if src.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                replace_dir(src, self.path(node))
            elif not self.path(node).exists():
                raise RuntimeError(f"step {node.step} of {point.name} finished without its output {src}")
        link(src, self.path(node))

    def sync(self, point: PointRun) -> None:
        """Link every finished step of `point` into its run directory and record them in its pipeline.json,
        so its pipeline skips them; steps not finished are left out (the pipeline runs them)."""
        state_file = point.run_dir / "pipeline.json"
        done = {}
        for node in point.chain:
            out = output_dir(point.cfg, node.step)
            if self.status(node) == "done" and len(done) == point.chain.index(node):
                link(out, self.path(node))
                done[node.step] = node.fingerprint
            elif out.is_symlink():  # a finished step of other inputs (an earlier grid): never written into
                out.unlink()
        old = json.loads(state_file.read_text()) if state_file.exists() else {}
        point.run_dir.mkdir(parents=True, exist_ok=True)
        # An interrupted step keeps its `started` entry: run again from the same inputs, it resumes.
        write_json_atomic(state_file, {**done, "started": {**old.get("started", {}), **done}})
