"""Start a multi-rank training run on this machine (what `t2t pipeline` and launchers/train_local.sh do).

    from t2t.train import launch_local
    launch_local("recipes/demo.yaml", ["train.stage1.steps=20"], stage=1, nproc=2, log_file=Path("runs/train1.log"))

runs `torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config ... --stage 1 --resume auto`
(torchrun picks a free port, so concurrent runs do not collide). Output of every rank goes to
`log_file`. A rerun resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def train_command(config_path: str | None, overrides: list[str], stage: int, resume: str = "auto") -> list[str]:
    """The per-rank `t2t train` arguments (after `python -m t2t.cli`)."""
    cmd = ["train", "--stage", str(stage), "--resume", resume]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def launch_local(config_path: str | None, overrides: list[str], stage: int, nproc: int, log_file: Path) -> None:
    """Train `stage` with `nproc` ranks on this machine; raise a RuntimeError naming the stage and log on failure."""
    from t2t.config import load_config
    from t2t.train.checkpoint import stage_complete

    cfg = load_config(config_path, overrides)
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "t2t.cli", *train_command(config_path, overrides, stage)]
    with log_file.open("a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _follow(proc, Path(cfg.run_dir) / f"stage{stage}" / "metrics.jsonl", stage,
                    getattr(cfg.train, f"stage{stage}").steps)
        except KeyboardInterrupt:
            proc.wait()  # torchrun forwards the signal: the ranks checkpoint, then exit
            raise
        code = proc.returncode
    if code != 0:
        raise RuntimeError(f"training stage {stage} failed (exit code {code}); see {log_file}:\n{_tail(log_file)}")
    if not stage_complete(cfg, stage):
        raise RuntimeError(f"training stage {stage} stopped before its final export (interrupted?); "
                           f"rerun to resume from the newest checkpoint; see {log_file}")


def _follow(proc: subprocess.Popen, metrics: Path, stage: int, steps: int) -> None:
    """Show a progress bar fed by rank 0's metrics.jsonl until the launcher exits."""
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc=f"train stage {stage}", unit="step") as bar:
        while proc.poll() is None:
            time.sleep(1.0)
            last = _last_record(metrics)
            if last is not None and last["step"] != bar.n:
                bar.n = last["step"]
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                bar.refresh()


def _last_record(metrics: Path) -> dict | None:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
    return None


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
