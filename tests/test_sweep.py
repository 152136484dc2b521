"""`t2t sweep`: a grid of pipelines on the real local Ray, identical steps computed once, failures isolated,
reruns doing only what is missing or failed, one table whose scores are those of separate `t2t eval` runs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CORPUS, REPO

from t2t.config import ConfigError
from t2t.errors import UserError
from t2t.sweep.grid import expand, labels, parse_grid

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def small_recipe(tmp: Path) -> Path:
    """recipes/tiny.yaml cut to seconds: a 2-layer model, 3 + 2 steps on one rank, STSBenchmark only, targets and
    evaluation in the steps' and the sweep's processes (`workers: 0`, as on one machine by default)."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    recipe["name"], recipe["run_dir"] = "sw", "runs/sw"
    recipe["model"]["path"] = "runs/sw/base"
    recipe["model"]["tiny"].update(tokenizer_corpus=str(CORPUS), vocab_size=1000, tokenizer_train_texts=2000,
                                   hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    recipe["data"].update(corpus=str(CORPUS), max_texts=400, shards_dir="shards/sw", loader_workers=0)
    recipe["targets"].update(shard_size=100, workers=0)
    recipe["train"].update(micro_batch_size=8, save_every=50, nproc=1)
    recipe["eval"].update(tasks=["STSBenchmark"], workers=0, out_dir="runs/sw/eval")
    stage1, stage2 = recipe["stages"]
    stage1.update(steps=3, schedule="constant", warmup_steps=0)
    stage2.update(steps=2)
    stage2["targets"].update(tau=1.0e-4, max_texts=200)
    path = tmp / "sw.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_grid_flags_points_and_names(tmp_path):
    recipe = str(small_recipe(tmp_path))
    assert parse_grid(["a.b=1,2", "c=x", "a.b=2,3"]) == {"a.b": ["1", "2", "3"], "c": ["x"]}
    assert labels(["stages.stage1.lr", "stages.stage2.lr", "seed"]) == {
        "stages.stage1.lr": "stage1.lr", "stages.stage2.lr": "stage2.lr", "seed": "seed"}
    with pytest.raises(UserError, match="the grid is empty"):
        parse_grid([])
    with pytest.raises(UserError, match=r"--grid 'seed=' must look like KEY=V1,V2"):
        parse_grid(["seed="])
    with pytest.raises(UserError, match=r"--grid run_dir: the sweep sets"):
        parse_grid(["run_dir=a,b"])

    points, notes = expand(recipe, [], parse_grid(["stages.stage1.lr=1e-3,0.001,5e-4", "seed=0,1"]))
    assert [p.name for p in points] == ["lr=1e-3_seed=0", "lr=1e-3_seed=1", "lr=5e-4_seed=0", "lr=5e-4_seed=1"]
    assert notes == ["grid point lr=0.001_seed=0 is the same recipe as lr=1e-3_seed=0: it runs once, as lr=1e-3_seed=0",
                     "grid point lr=0.001_seed=1 is the same recipe as lr=1e-3_seed=1: it runs once, as lr=1e-3_seed=1"]
    assert points[3].cfg.stage("stage1").lr == 5e-4 and points[3].cfg.seed == 1
    with pytest.raises(ConfigError, match=r"unknown key stages\.stage1\.lrr; did you mean stages\.stage1\.lr\?"):
        expand(recipe, [], parse_grid(["stages.stage1.lrr=1e-3,1e-4"]))
    with pytest.raises(ConfigError, match=r"grid point lr=fast: .*stages\.stage1\.lr must be a number, got 'fast'"):
        expand(recipe, [], parse_grid(["stages.stage1.lr=1e-3,fast"]))


def test_a_sweep_directory_belongs_to_one_grid(tmp_path, monkeypatch):
    from t2t.sweep import Sweep

    monkeypatch.chdir(tmp_path)
    recipe = str(small_recipe(tmp_path))
    sweep = Sweep(recipe, [], parse_grid(["stages.stage1.lr=1e-3,5e-4"]))
    sweep.claim(overwrite=False)
    assert sweep.dir == Path("runs/sw-sweep") and (sweep.dir / "grid.json").is_file()
    # Stage-1 targets and the backbone are one step for both points; the stage-1 trainings differ.
    shared = {n.step: len(n.points) for n in sweep.nodes.values()}
    assert shared["base"] == 2 and shared["stage1:targets"] == 2 and shared["stage1:train"] == 1
    assert len(sweep.nodes) == 2 + 2 * 3
    assert Sweep.load(sweep.dir).nodes.keys() == sweep.nodes.keys()  # what a step's job reads back
    with pytest.raises(UserError, match=r"runs/sw-sweep holds a sweep of another grid .*--overwrite"):
        Sweep(recipe, [], parse_grid(["stages.stage1.lr=1e-3,1e-4"])).claim(overwrite=False)
    Sweep(recipe, [], parse_grid(["stages.stage1.lr=1e-3,1e-4"])).claim(overwrite=True)
    assert json.loads((sweep.dir / "grid.json").read_text())["grid"] == {"stages.stage1.lr": ["1e-3", "1e-4"]}


def test_a_step_job_leaves_the_deepspeed_check_to_the_sweeps_driver(tmp_path):
    """The driver has DeepSpeed parse every point's JSON before any step starts (Sweep.check_with_deepspeed); a step
    job that trains does not import torch and DeepSpeed again for it (5 s of CPU in a process that only waits for
    the ranks), while `t2t pipeline` itself still checks."""
    recipe = small_recipe(tmp_path)
    probe = ("import sys; from t2t.pipeline import Pipeline; "
             f"p = Pipeline({str(recipe)!r}, [], deepspeed_checked=sys.argv[1] == 'sweep'); "
             "p.check_with_deepspeed(p.steps, None); print('deepspeed' in sys.modules)")
    seen = {who: subprocess.run([sys.executable, "-c", probe, who], cwd=tmp_path, env=ENV, capture_output=True,
                                text=True) for who in ("sweep", "pipeline")}
    assert [(done.returncode, done.stdout.strip()) for done in seen.values()] == [(0, "False"), (0, "True")], \
        [done.stderr[-2000:] for done in seen.values()]


def sweep(tmp: Path, recipe: Path, *grid: str) -> subprocess.CompletedProcess:
    flags = [arg for g in grid for arg in ([g] if g.startswith("--") else ["--grid", g])]
    return subprocess.run([sys.executable, "-m", "t2t.cli", "sweep", "--config", str(recipe), *flags], cwd=tmp,
                          env=ENV, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_a_two_by_two_sweep_shares_steps_isolates_a_failure_and_reruns_only_what_failed(tmp_path):
    recipe = small_recipe(tmp_path)
    with gzip.open(CORPUS, "rt") as f:
        (tmp_path / "a.txt").write_text("".join(next(f) for _ in range(300)))
    (tmp_path / "b.txt").write_text("")  # stage 2 of the points reading it fails: the corpus holds no texts
    # Both axes are stage 2's: stage 1 is shared by all four points, each corpus's stage-2 targets by two.
    grid = ["stages.stage2.targets.corpus=a.txt,b.txt", "stages.stage2.lr=1e-4,5e-5"]
    root = tmp_path / "runs" / "sw-sweep"
    a_points = ["corpus=a.txt_lr=1e-4", "corpus=a.txt_lr=5e-5"]
    b_points = ["corpus=b.txt_lr=1e-4", "corpus=b.txt_lr=5e-5"]

    # 1. Two points fail at their stage-2 targets; the other two finish, evaluated.
    first = sweep(tmp_path, recipe, *grid)
    out = first.stdout + first.stderr
    assert first.returncode == 1, out[-4000:]
    assert "4 points, 9 distinct steps (of 20 in separate pipelines)" in out, out[-4000:]
    result = json.loads((root / "sweep.json").read_text())
    assert list(result["rows"]) == ["start", *a_points, *b_points]
    for name in b_points:
        row = result["rows"][name]
        assert row["status"] == "failed" and row["failed_step"] == "stage2:targets", row
        assert "holds no texts" in row["error"] and (tmp_path / row["log"]).is_file()
    assert all(result["rows"][n]["status"] == "done" and result["rows"][n]["scores"]["STSBenchmark"] is not None
               for n in a_points)
    assert "failed at stage2:targets" in (root / "sweep.md").read_text()
    # The sweep's own Ray only schedules the steps: on one machine they compute their targets in their processes.
    [log] = (root / "logs").glob("stage1-targets-*.log")
    assert "targets.workers 0 (automatic): one worker in this process" in log.read_text()

    # Stage 1 was computed once: one shard directory, every shard once in its ledger, the finished points link it;
    # one training; one stage-2 targets job per corpus (the failed one is not among the finished steps).
    steps = sorted(p.name.rsplit("-", 1)[0] for p in (root / "steps").iterdir())
    assert steps == ["base", "stage1-targets", "stage1-train", "stage2-targets", "stage2-train", "stage2-train"]
    [targets] = (root / "steps").glob("stage1-targets-*")
    ledger = [json.loads(line)["index"] for line in (targets / "ledger.jsonl").read_text().splitlines()]
    assert sorted(ledger) == list(range(4))
    for name in a_points:
        assert (root / "points" / name / "shards" / "stage1").resolve() == targets.resolve()
    for step in ("stage1:targets", "stage1:train"):
        launched = [line for line in out.splitlines() if f"{step} of" in line and ": running (log" in line]
        assert len(launched) == 1 and all(n in launched[0] for n in a_points + b_points), step  # once, for all four
    launched = [line for line in out.splitlines() if "stage2:targets of" in line and ": running (log" in line]
    assert sorted(line.split(" of ")[1].split(": running")[0] for line in launched) == \
        [", ".join(a_points), ", ".join(b_points)]

    # 2. With b's corpus filled, a rerun does stage 2 of the failed points only: its targets once, for both, and
    #    their trainings (a step that turned stale, and what follows it, is rerun in tests/test_cluster.py's sweep).
    (tmp_path / "b.txt").write_text((tmp_path / "a.txt").read_text())
    nodes_before = {f.name: json.loads(f.read_text()) for f in (root / "nodes").iterdir()}
    second = sweep(tmp_path, recipe, *grid)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    ran = [line.split(": ")[1].split(": running")[0] for line in out.splitlines() if line.endswith(".log)")
           and ": running" in line]
    assert sorted(ran) == sorted([f"stage2:targets of {', '.join(b_points)}",
                                  *(f"stage2:train of {n}" for n in b_points)]), out[-4000:]
    assert "3 of 5 (model, task) pairs cached" in out, out[-4000:]  # the start model's and a's; b's two are new
    nodes = {f.name: json.loads(f.read_text()) for f in (root / "nodes").iterdir()}
    assert all(nodes[k] == v for k, v in nodes_before.items() if v["status"] == "done")

    # 3. A rerun starts nothing, and every evaluation comes from the cache.
    third = sweep(tmp_path, recipe, *grid)
    out = third.stdout + third.stderr
    assert third.returncode == 0 and "every step is done; nothing to run" in out and ": running" not in out, out
    assert "Token authentication" not in out  # Ray's notice at every start: nothing a user acts on
    assert "5 of 5 (model, task) pairs cached" in out
    result = json.loads((root / "sweep.json").read_text())
    assert result["progress"] == {"points": 4, "done": 4, "failed": 0}
    assert set(result["plots"]) == set(result["grid"]) and all((tmp_path / p).is_file() for p in result["plots"].values())
    assert result["best"]["STSBenchmark"][0] in a_points + b_points
    four = result

    # Another grid in the same directory is refused; with --overwrite, the points it shares are kept as they are.
    smaller = ["stages.stage2.targets.corpus=a.txt", "stages.stage2.lr=1e-4,5e-5"]
    refused = sweep(tmp_path, recipe, *smaller)
    assert refused.returncode == 2 and "holds a sweep of another grid" in refused.stderr, refused.stderr[-2000:]
    kept = sweep(tmp_path, recipe, *smaller, "--overwrite")
    out = kept.stdout + kept.stderr
    assert kept.returncode == 0 and "every step is done; nothing to run" in out, out[-3000:]
    assert list(json.loads((root / "sweep.json").read_text())["rows"]) == ["start", *a_points]

    # The table's scores are those of a separate `t2t eval` of the same models.
    models = [str(root / "points" / n / "stage2" / "model") for n in a_points + b_points]
    alone = subprocess.run([sys.executable, "-m", "t2t.cli", "eval", "--model", *models, "--names", *a_points,
                            *b_points, "--tasks", "STSBenchmark", "--batch-size", "64", "--out", "alone"], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    separate = json.loads((tmp_path / "alone" / "results.json").read_text())["scores"]
    assert [four["rows"][n]["scores"] for n in a_points + b_points] == list(separate.values())


def test_a_slurm_command_that_does_not_answer_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    """sbatch and squeue talk to the Slurm controller; one that is down must not hang the sweep for ever.

    Stand-ins stay here (tests/test_cluster.py runs the sweep on real Slurm): a controller that takes the
    connection and never answers cannot be made with the real cluster without hanging every other test using it."""
    import time

    from t2t.sweep import slurm

    for name in ("sbatch", "squeue"):  # stand-ins for clients waiting on a controller that never answers
        (tmp_path / name).write_text("#!/usr/bin/env bash\nexec sleep 60\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "SLURM_COMMAND_TIMEOUT_S", 1, raising=False)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"sbatch did not answer within 1 s .*scontrol ping.*squeue --me"):
        slurm.sbatch(["--wrap", "true"])
    with pytest.raises(UserError, match=r"squeue did not answer within 1 s .*whether job 17 is still queued"):
        slurm.alive("17")
    assert time.monotonic() - started < 10
