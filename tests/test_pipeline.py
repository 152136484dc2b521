"""`t2t pipeline` end to end on a shortened tiny recipe: interrupted in stage-1 training, resumed, then up to date.

One real run through the console entry (Ray for targets, one DeepSpeed rank for training: several ranks are
stopped and resumed in tests/test_signals.py and tests/test_train_run.py):
1. start it, wait for the first stage-1 checkpoint, press Ctrl-C (SIGINT to the process group);
2. rerun: the targets are not recomputed, training resumes from the checkpoint, the rest finishes;
3. rerun again: every step is up to date.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import CORPUS, REPO
from t2t.errors import UserError

pytestmark = pytest.mark.slow


def short_demo(tmp: Path) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    recipe["run_dir"] = "runs/short"
    recipe["model"]["path"] = "runs/short/base"
    recipe["model"]["tiny"].update(tokenizer_corpus=str(CORPUS), vocab_size=1000, tokenizer_train_texts=3000,
                                   hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    recipe["data"].update(corpus=str(CORPUS), max_texts=1200, shards_dir="shards/short", loader_workers=0)
    recipe["targets"].update(shard_size=300)
    recipe["train"].update(micro_batch_size=8, save_every=3, nproc=1)
    stage1, stage2 = recipe["stages"]
    stage1.update(steps=24, lr=1.0e-3, schedule="constant", warmup_steps=0)
    stage2.update(steps=4, lr=1.0e-4, schedule="constant")
    stage2["targets"]["max_texts"] = 800
    recipe["eval"].update(tasks=["STSBenchmark"], workers=1, out_dir="runs/short/eval")
    path = tmp / "short.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def pipeline(tmp: Path, recipe: Path, *overrides: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    sets = [arg for o in overrides for arg in ([o] if o.startswith("--") else ["--set", o])]
    return subprocess.Popen([sys.executable, "-m", "t2t.cli", "pipeline", "--config", str(recipe), *sets], cwd=tmp,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_pipeline_interrupt_resume_and_up_to_date(tmp_path):
    recipe = short_demo(tmp_path)
    run = tmp_path / "runs" / "short"

    # 1. Interrupt stage-1 training once it has written a checkpoint.
    first = pipeline(tmp_path, recipe, start_new_session=True)
    deadline = time.time() + 600
    while not list((run / "stage1" / "checkpoints").glob("*step*")):
        assert first.poll() is None, f"pipeline ended early:\n{first.stdout.read()}"
        assert time.time() < deadline, "no stage-1 checkpoint within 10 minutes"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out1, _ = first.communicate(timeout=300)
    assert first.returncode != 0, out1
    assert "stage1:targets: done" in out1 and "stage2:train" not in out1
    targets = sorted((tmp_path / "shards" / "short" / "stage1").glob("t2t-*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in targets}
    assert targets and not (run / "stage1" / "model").exists()

    # 2. The same command resumes: targets skipped, training continues from the checkpoint.
    second = pipeline(tmp_path, recipe)
    out2, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out2
    assert "[2/7] stage1:targets: up to date, skipped" in out2
    assert {p: p.stat().st_mtime_ns for p in targets} == stamps  # not rewritten
    train_log = (run / "logs" / "stage1-train.log").read_text()
    assert "resum" in train_log.lower(), train_log[-2000:]
    steps = [json.loads(line)["step"] for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # one line per step, none lost or repeated across the interruption

    report = (run / "report.md").read_text()
    for name in ("tiny-M0-start", "tiny-M1-stage1", "tiny-M2-stage2"):
        assert name in report
    assert (run / "loss_stage1.png").stat().st_size > 0 and (run / "scores.png").stat().st_size > 0
    table = json.loads((run / "eval" / "results.json").read_text())
    assert all(table["scores"][m["name"]]["STSBenchmark"] is not None for m in table["models"])
    samples = {stage: json.loads((tmp_path / "shards" / "short" / stage / "manifest.json").read_text())["samples"]
               for stage in ("stage1", "stage2")}
    assert samples == {"stage1": 1200, "stage2": 800}  # stages.stage2.targets.max_texts caps stage 2 alone

    # 3. Nothing left to do, even with other checkpoint cadences (how often a run saves never retrains it, #26), and
    #    with every corpus, backbone and shard read in full (--verify) rather than trusted by size and time.
    third = pipeline(tmp_path, recipe, "train.keep_checkpoints=3", "train.save_every=7", "--verify")
    out3, _ = third.communicate(timeout=300)
    assert third.returncode == 0, out3
    assert out3.count("up to date, skipped") == 7, out3
    # Without --verify, a rerun with nothing to do takes every check from its records: it imports neither torch,
    # transformers, DeepSpeed nor scikit-learn (it took 8 s of CPU when it loaded them).
    quiet = subprocess.run([sys.executable, "-X", "importtime", "-m", "t2t.cli", "pipeline", "--config", str(recipe)],
                           cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.count("up to date, skipped") == 7, quiet.stdout + quiet.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in quiet.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers", "deepspeed", "sklearn"} & imported

    # 4. Same seed, same result: an uninterrupted run elsewhere, its targets computed in the pipeline's process
    #    instead of by two Ray workers, writes the same target bytes and θ, trains through the same per-step losses
    #    and gets the same scores.
    again = tmp_path / "again"
    again.mkdir()
    fourth = pipeline(again, recipe, "targets.workers=0")
    out4, _ = fourth.communicate(timeout=900)
    assert fourth.returncode == 0, out4
    for stage, shards in (("stage1", 4), ("stage2", 3)):  # stage 2 in 3 chunks: θ's sum has an order
        files = [sorted((root / "shards" / "short" / stage).glob("t2t-*.tar")) +
                 sorted((root / "shards" / "short" / stage).glob("*.npy")) for root in (tmp_path, again)]
        assert len(files[0]) == shards + (stage == "stage2") and [p.name for p in files[0]] == [p.name for p in files[1]]
        assert [p.read_bytes() for p in files[0]] == [p.read_bytes() for p in files[1]], stage
        losses = [[json.loads(line)["loss"] for line in (root / "runs" / "short" / stage / "metrics.jsonl").open()]
                  for root in (tmp_path, again)]
        assert losses[0] == losses[1], stage
    assert json.loads((again / "runs/short/eval/results.json").read_text())["scores"] == table["scores"]


def test_changed_config_invalidates_exactly_downstream_steps(tmp_path):
    from t2t.pipeline import Pipeline

    recipe = short_demo(tmp_path)
    base = Pipeline(str(recipe), []).fingerprints()
    changed = {
        "stages.stage2.steps=9": {"stage2:train", "eval", "report"},
        "stages.stage1.lr=0.01": {"stage1:train", "stage2:targets", "stage2:train", "eval", "report"},
        "stages.stage2.targets.tau=1e-4": {"stage2:targets", "stage2:train", "eval", "report"},
        "stages.stage2.targets.max_texts=400": {"stage2:targets", "stage2:train", "eval", "report"},
        "stages.stage1.targets.weighting=idf": {"stage1:targets", "stage1:train", "stage2:targets", "stage2:train",
                                                "eval", "report"},
        "stages.stage2.objective.name=simcse": {"stage2:train", "eval", "report"},
        "targets.workers=1": set(),
        # How often a run saves, logs and watches itself never retrains a finished stage (issue #26).
        "train.keep_checkpoints=3": set(),
        "train.save_every=7": set(),
        "train.log_every=5": set(),
        "train.stop_after_zero_grad_steps=0": set(),
        "eval.tasks=[BIOSSES]": {"eval", "report"},
        "eval.dtype=bfloat16": {"eval", "report"},
        "model.pooling=eos": set(base) - {"base"},  # how the base model embeds, not what it is
    }
    for override, expected in changed.items():
        fp = Pipeline(str(recipe), [override]).fingerprints()
        assert {k for k in base if fp[k] != base[k]} == expected, override
    # An objective's own setting decides its stage alone (it lives in the stage's `objective:` section).
    simcse = Pipeline(str(recipe), ["stages.stage2.objective.name=simcse"]).fingerprints()
    warmer = Pipeline(str(recipe), ["stages.stage2.objective.name=simcse",
                                    "stages.stage2.objective.temperature=0.1"]).fingerprints()
    assert {k for k in simcse if warmer[k] != simcse[k]} == {"stage2:train", "eval", "report"}


def test_one_rule_decides_where_a_target_job_computes(monkeypatch):
    """`targets_here` is the answer the job, the pipeline (which starts Ray otherwise) and a sweep (which then leaves
    the step no CPU) share: on one machine `workers: 0` stays in the process; a named cluster, `workers: N`, or GPUs
    asked for by a kind that runs the model go to Ray. A kind that only tokenizes asks for no GPU."""
    from t2t.config import load_config
    from t2t.jobs.targets import targets_here

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, ["model.path=m"])
    assert targets_here(cfg, "stage1", None) and targets_here(cfg, "stage2", None)
    assert not targets_here(cfg, "stage2", "10.0.0.1:6379")
    assert not targets_here(load_config(None, ["model.path=m", "targets.workers=2"]), "stage1", None)
    gpus = load_config(None, ["model.path=m", "targets.gpus_per_worker=1"])
    assert targets_here(gpus, "stage1", None) and not targets_here(gpus, "stage2", None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert not targets_here(cfg, "stage1", None)


def test_reruns_never_resume_other_inputs_nor_lose_finished_stages(tmp_path, monkeypatch):
    from t2t.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    recipe = short_demo(tmp_path)
    p = Pipeline(str(recipe), [])
    monkeypatch.setattr(Pipeline, "outputs_present", lambda self, name: True)
    stage1 = p.run_dir / "stage1"
    seen = {}

    def train1(fail=False):
        seen["stage1 during the rerun"] = sorted(x.name for x in p.run_dir.glob("stage1*"))
        if fail:
            raise RuntimeError("the new run failed")
        (stage1 / "model").mkdir(parents=True)
        (stage1 / "model" / "t2t_train.json").write_text("{}")

    def run(fp_train1: str, fail=False):
        fp = {name: "same" for name in p.steps} | {"stage1:train": fp_train1}
        actions = {name: (lambda: None) for name in p.steps} | {"stage1:train": lambda: train1(fail)}
        p._run_steps(fp, actions, only_until="stage1:train")

    p.logs.mkdir(parents=True)
    run("A")  # stage 1 finished from inputs A
    assert (stage1 / "model" / "t2t_train.json").is_file()

    # Inputs B, and the new training fails: the finished stage is set aside, not deleted.
    with pytest.raises(RuntimeError):
        run("B", fail=True)
    assert seen["stage1 during the rerun"] == ["stage1.replaced"]
    assert (p.run_dir / "stage1.replaced" / "model" / "t2t_train.json").is_file()

    # Interrupted checkpoints of inputs B are not resumed under inputs C; C finishing drops the replaced stage.
    (stage1 / "checkpoints").mkdir(parents=True)
    run("C")
    assert seen["stage1 during the rerun"] == ["stage1.replaced"]  # B's partial checkpoints were removed
    assert not (p.run_dir / "stage1.replaced").exists() and (stage1 / "model").is_dir()


def test_undoing_a_failed_change_takes_the_finished_stage_back(tmp_path, monkeypatch, capsys):
    """Issue #25, WEAK 10: stage 1 finished from recipe A, a change to B failed, the recipe is restored to A: the
    stage set aside as stage1.replaced is moved back, not retrained, and what B left is gone."""
    from t2t.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    p = Pipeline(str(short_demo(tmp_path)), [])
    monkeypatch.setattr(Pipeline, "outputs_present", lambda self, name: True)
    stage1 = p.run_dir / "stage1"
    trained = []

    def train1(inputs: str, fail: bool):
        trained.append(inputs)
        (stage1 / "checkpoints").mkdir(parents=True, exist_ok=True)
        (stage1 / "checkpoints" / inputs).touch()
        if fail:
            raise RuntimeError("the new run failed")
        (stage1 / "model").mkdir(parents=True)
        (stage1 / "model" / "t2t_train.json").write_text(inputs)

    def run(inputs: str, fail: bool = False):
        fp = {name: "same" for name in p.steps} | {"stage1:train": inputs}
        actions = {name: (lambda: None) for name in p.steps} | {"stage1:train": lambda: train1(inputs, fail)}
        p._run_steps(fp, actions, only_until="stage2:targets")

    p.logs.mkdir(parents=True)
    run("A")
    with pytest.raises(RuntimeError):
        run("B", fail=True)
    assert (p.run_dir / "stage1.replaced" / "model" / "t2t_train.json").read_text() == "A"
    capsys.readouterr()
    run("A")
    assert trained == ["A", "B"]  # not trained again
    assert f"stage1:train: taken back from {p.run_dir / 'stage1.replaced'}, made from these inputs" in \
        capsys.readouterr().out
    assert (stage1 / "model" / "t2t_train.json").read_text() == "A"
    assert [c.name for c in (stage1 / "checkpoints").iterdir()] == ["A"]  # B's are gone
    assert not (p.run_dir / "stage1.replaced").exists()
    run("A")  # and it is simply up to date from then on
    assert trained == ["A", "B"] and "stage1:train: up to date" in capsys.readouterr().out

    # Another change that fails, then one that finishes: what was set aside is dropped, never taken back later.
    with pytest.raises(RuntimeError):
        run("B", fail=True)
    run("C")
    assert not (p.run_dir / "stage1.replaced").exists() and "replaced" not in p.state or not p.state["replaced"]
    run("A")
    assert trained == ["A", "B", "B", "C", "A"]


def test_a_bad_deepspeed_json_stops_before_anything_is_touched(tmp_path, monkeypatch):
    """A missing file stops the pipeline at once; a value DeepSpeed rejects stops it before its first step that
    leads to training runs (DeepSpeed's parse imports torch, which a rerun with nothing to train does without)."""
    import json

    from t2t.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    recipe = short_demo(tmp_path)
    with pytest.raises(UserError, match="train.ds_config: ds_configs/zero3_cpu.jsn does not exist"):
        Pipeline(str(recipe), ["train.ds_config=ds_configs/zero3_cpu.jsn"])
    rejected = tmp_path / "ds.json"
    rejected.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": "sometimes"}}))
    p = Pipeline(str(recipe), [f"train.ds_config={rejected}"])
    p.logs.mkdir(parents=True)
    ran = []
    actions = {name: (lambda name=name: ran.append(name)) for name in p.steps}
    fp = p.fingerprints()
    with pytest.raises(UserError, match=r"ds.json: DeepSpeed rejects .*overlap_comm"):
        p._run_steps(fp, actions, only_until=None)
    assert ran == [] and not p.state_file.exists()
    # Only the evaluation and the report to redo: no training ahead, so DeepSpeed is not asked.
    monkeypatch.setattr(Pipeline, "outputs_present", lambda self, name: True)
    p.state = {name: fp[name] for name in p.steps if name not in ("eval", "report")}
    p._run_steps(fp, actions, only_until=None)
    assert ran == ["eval", "report"]


@pytest.mark.parametrize("error, then", [
    ("user", "once that is fixed, the same command goes on from this step"),  # a missing corpus: a rerun meets it again
    ("diverged", "once that is fixed, the same command goes on from this step"),  # a rank's exit 2 or 3
    ("killed", "rerun the same command to resume"),  # a killed rank: a rerun resumes
])
def test_the_resume_hint_is_given_only_where_a_rerun_can_help(tmp_path, monkeypatch, capsys, error, then):
    from t2t.errors import UserError
    from t2t.pipeline import Pipeline
    from t2t.train.launch import TrainingFailed
    from t2t.cli import main

    raised = {"user": UserError("corpus c.txt holds no texts"),
              "diverged": TrainingFailed("stage1: training failed: rank 0 exited with code 3", needs_a_fix=True),
              "killed": TrainingFailed("stage1: training failed: rank 1 died (signal 9, SIGKILL)", needs_a_fix=False)}

    def fail():
        raise raised[error]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Pipeline, "step_base", lambda self: self.logged("base", fail))  # the step's own wrapper
    assert main(["pipeline", "--config", str(short_demo(tmp_path))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"t2t pipeline: step base failed: {raised[error]} (log: ")
    assert err[1] == f"finished steps are kept; {then}"


def test_a_training_step_that_diverged_needs_a_fix_not_a_rerun(tmp_path, monkeypatch):
    from t2t.pipeline import Pipeline, StepFailed
    from t2t.train import launch
    from t2t.train.launch import TrainingFailed

    def diverged(*args, **kwargs):
        raise TrainingFailed("stage1: training failed: rank 1 exited with code 3", needs_a_fix=True)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "launch_local", diverged)
    pipeline = Pipeline(str(short_demo(tmp_path)), [], check_runnable=False)
    with pytest.raises(StepFailed) as failed:
        pipeline.step_train("stage1")
    assert failed.value.needs_a_fix
