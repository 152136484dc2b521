"""Training faults, reproduced for real (2 ranks of ZeRO-3 on CPU, real checkpoint files): a blow-up is never
checkpointed, a collapsed model stops the run, and a truncated checkpoint is named and skipped.

One good run (module fixture, checkpoints at steps 2 and 4) is the starting point the fault runs copy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2t.config import ConfigError, load_config
from t2t.train import checkpoint
from conftest import CORPUS
from train_support import REPO, metrics, rank_env, torchrun, write_recipe, write_stage_shards
from t2t.errors import UserError
from t2t.fingerprints import resume_identity

TRAIN_ARGS = ["-m", "t2t.cli", "train", "--stage", "stage1", "--config"]
TEXTS = ["The river flows through the old town.", "Quantum physics is hard.", "A short one."]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_faults")
    write_stage_shards(tiny_model_dir, root / "shards" / "stage1", n_shards=4, per_shard=24)
    recipe = write_recipe(root / "r.yaml", tiny_model_dir, root / "shards", root / "good",
                          stage1=dict(steps=4), save_every=2, keep_checkpoints=2)
    return root, recipe


@pytest.fixture(scope="module")
def good_run(setup):
    """A run that went well: checkpoints step00000002 and step00000004."""
    root, recipe = setup
    torchrun(2, TRAIN_ARGS + [str(recipe)], root / "good.log", timeout=300)
    return root / "good" / "stage1" / "checkpoints"


def copy_run(ckpt: Path, run_dir: Path) -> Path:
    """The good run's checkpoints in a run directory of their own; returns its checkpoints directory."""
    out = run_dir / "stage1" / "checkpoints"
    shutil.copytree(ckpt, out)
    return out


def failing_run(args: list[str], log: Path, ranks: int = 2) -> str:
    """`t2t train` on `ranks` ranks that must fail; returns its output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=rank_env(), timeout=300, cwd=REPO)
    text = log.read_text()
    assert done.returncode != 0, text[-4000:]
    return text


def export_embeds_finitely(recipe: Path, ckpt: Path, out: Path) -> bool:
    from t2t.cli import main
    from t2t.model import load

    assert main(["export", "--config", str(recipe), "--stage", "stage1", "--checkpoint", str(ckpt),
                 "--out", str(out)]) == 0
    return bool(np.isfinite(load(out).encode(TEXTS)).all())


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.slow
def test_a_blow_up_is_never_checkpointed(setup, good_run, tmp_path):
    """lr=1e30 from the good step-4 checkpoint: step 5's update gives weights ~1e30 whose loss is still finite
    (it was computed before the update), so only a check of the updated weights keeps them off disk."""
    root, recipe = setup
    ckpt = copy_run(good_run, root / "blowup")
    overrides = [f"run_dir={root / 'blowup'}", "stages.stage1.lr=1e30", "stages.stage1.steps=8", "train.save_every=1"]
    args = TRAIN_ARGS + [str(recipe), "--resume", str(ckpt / "step00000004")]
    args += [a for o in overrides for a in ("--set", o)]
    text = failing_run(args, root / "blowup.log")
    assert re.search(r"exitcode\s*:\s*3", text)  # TrainingDiverged, not a crash
    assert [(m["step"], m["lr"]) for m in metrics(root / "blowup")] == [(5, 1e30)]  # the resumed run's own lr
    assert "stage1 step 5: the weights after its optimizer step give a non-finite loss or output on the step's " \
           "batch, so step 5 was " \
           f"NOT checkpointed; the newest good checkpoint is step00000004 in {ckpt}; lower stages.stage1.lr and " \
           f"continue from it with --resume {ckpt / 'step00000004'}" in text
    kept = sorted(p for p in ckpt.iterdir() if p.is_dir())
    assert [p.name for p in kept] == ["step00000002", "step00000004"]
    assert checkpoint.latest_tag(ckpt) == "step00000004"
    for tag_dir in kept:
        assert export_embeds_finitely(recipe, tag_dir, tmp_path / tag_dir.name), tag_dir


@pytest.mark.slow
def test_a_blow_up_that_the_steps_own_texts_do_not_show_is_never_checkpointed(tmp_path):
    """Issue #25's probe 1 as a user ran it: recipes/tiny.yaml (a smaller backbone and corpus), lr=1e30 from the
    start, a checkpoint every step. Step 1's update blows up exactly the embedding rows of the tokens its batch
    held; on that batch the final norm flattens them to one finite embedding, while most other texts embed to
    NaN. Only the random-token probe meets the other rows: before it, step00000001 was saved."""
    sets = [f"run_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'base'}", f"data.shards_dir={tmp_path / 'shards'}",
            f"data.corpus={CORPUS}", f"model.tiny.tokenizer_corpus={CORPUS}", "model.tiny.tokenizer_train_texts=3000",
            "model.tiny.vocab_size=1000", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
            "model.tiny.intermediate_size=128", "data.max_texts=512", "data.loader_workers=0",
            "targets.shard_size=128", "targets.workers=1", "train.micro_batch_size=4",
            "stages.stage1.lr=1e30", "stages.stage1.schedule=constant", "stages.stage1.warmup_steps=0",
            "stages.stage1.steps=3", "train.save_every=1"]
    sets = [a for o in sets for a in ("--set", o)]
    recipe = str(REPO / "recipes" / "tiny.yaml")
    done = subprocess.run([sys.executable, "-m", "t2t.cli", "targets", "--stage", "stage1", "--config", recipe, *sets],
                          env=rank_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # One rank: the ranks' agreement on the check is test_a_blow_up_is_never_checkpointed's (2 ranks).
    text = failing_run(TRAIN_ARGS + [recipe, *sets], tmp_path / "train.log", ranks=1)
    assert re.search(r"exitcode\s*:\s*3", text)  # TrainingDiverged
    assert "stage1 step 1: the weights after its optimizer step give non-finite embeddings on the 4 random-token " \
           "probe texts, so step 1 was NOT checkpointed; no good checkpoint is kept" in text, text[-3000:]
    assert checkpoint.latest_tag(tmp_path / "run" / "stage1" / "checkpoints") is None


@pytest.mark.slow
def test_a_collapsed_model_stops_the_run(setup, tmp_path):
    """lr=1e6 on the tiny model: after step 1 the gradient norm is exactly 0 and the export embeds to zeros."""
    root, recipe = setup
    run_dir = root / "collapse"
    args = TRAIN_ARGS + [str(recipe), "--set", f"run_dir={run_dir}", "--set", "stages.stage1.lr=1e6",
                         "--set", "stages.stage1.steps=8", "--set", "train.save_every=8"]
    text = failing_run(args, root / "collapse.log")
    assert re.search(r"exitcode\s*:\s*3", text)
    assert "stage1 step 4: the gradient norm was exactly 0 for 3 steps in a row (steps 2-4): the update of step 1 " \
           "collapsed the model, so the run stopped without checkpointing it; no good checkpoint is kept in " \
           f"{run_dir / 'stage1' / 'checkpoints'}; lower stages.stage1.lr and start the stage over" in text
    assert [m["grad_norm"] for m in metrics(run_dir)][1:] == [0.0, 0.0, 0.0]
    assert checkpoint.latest_tag(run_dir / "stage1" / "checkpoints") is None


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_named_and_skipped(setup, good_run):
    """`--resume auto` warns, naming the file, and resumes from step 2, repeating the good run's losses."""
    root, recipe = setup
    ckpt = copy_run(good_run, root / "truncated")
    bad = ckpt / "step00000004" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    truncate(bad)
    torchrun(2, TRAIN_ARGS + [str(recipe), "--set", f"run_dir={root / 'truncated'}"], root / "truncated.log",
             timeout=300)
    text = (root / "truncated.log").read_text()
    assert f"{bad} is truncated or corrupt" in text
    assert f"resuming from the previous checkpoint {ckpt / 'step00000002'} instead" in text
    assert f"resumed from {ckpt / 'step00000002'} at step 2" in text
    good = [m["loss"] for m in metrics(root / "good")]
    assert [m["loss"] for m in metrics(root / "truncated")] == good[2:]  # steps 3-4 trained again, exactly
    assert checkpoint.checkpoint_problem(ckpt / "step00000004", world=2) is None  # saved anew


@pytest.mark.slow
def test_a_truncated_named_checkpoint_is_an_error_naming_the_file(setup, good_run, tmp_path, capsys):
    """`t2t export` of it names the file; `t2t train --resume DIR` does the same through `checkpoint.resume`
    (test_resume_auto_names_every_file_when_no_checkpoint_loads: no fallback for a named checkpoint)."""
    from t2t.cli import main

    root, recipe = setup
    ckpt = copy_run(good_run, root / "named")
    bad = ckpt / "step00000004" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    truncate(bad)
    assert main(["export", "--config", str(recipe), "--stage", "stage1", "--set", f"run_dir={root / 'named'}",
                 "--out", str(tmp_path / "m")]) == 2
    assert f"t2t export: error: {bad} is truncated or corrupt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in one process, real files


def saved_checkpoint(tag_dir: Path, ranks: int = 2) -> Path:
    """A directory holding DeepSpeed's per-rank file names, each a real torch.save archive."""
    tag_dir.mkdir(parents=True)
    for rank in range(ranks):
        for kind in ("model", "optim"):
            torch.save({"w": torch.arange(1000.0)}, tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt")
    return tag_dir


def test_checkpoint_problems_name_the_file(tmp_path):
    tag_dir = saved_checkpoint(tmp_path / "step00000002")
    assert checkpoint.checkpoint_problem(tag_dir, world=2) is None
    assert "rank 2" in checkpoint.checkpoint_problem(tag_dir, world=3)  # a rank without its files
    assert checkpoint.checkpoint_problem(tmp_path / "missing") is None  # DeepSpeed says so itself, on every rank
    optim = tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    truncate(optim)
    assert checkpoint.checkpoint_problem(tag_dir, world=2).startswith(f"{optim} is truncated or corrupt")
    optim.write_bytes(b"")
    assert checkpoint.checkpoint_problem(tag_dir, world=2) == f"{optim} is empty"
    optim.unlink()
    assert "optim-states file for rank 1" in checkpoint.checkpoint_problem(tag_dir, world=1)


def test_resume_auto_names_every_file_when_no_checkpoint_loads(tmp_path):
    for step in (2, 4):
        tag_dir = saved_checkpoint(tmp_path / checkpoint.tag_for(step), ranks=1)
        truncate(tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("step00000004")
    with pytest.raises(UserError, match=r"no checkpoint in .* loads: .*step00000004/zero_pp_rank_0_mp_rank_00_model_"
                                         r"states.pt is truncated.*step00000002/zero_pp_rank_0_mp_rank_00_model_"):
        checkpoint.resume(engine=None, ckpt_dir=tmp_path, mode="auto")  # no rank gets to load a file
    with pytest.raises(UserError, match=r"step00000002/zero_pp_rank_0_mp_rank_00_model_states.pt is truncated"):
        checkpoint.resume(engine=None, ckpt_dir=tmp_path, mode=str(tmp_path / "step00000002"))


def test_zero_grad_stop_is_validated_and_resumable():
    assert load_config(None, ["model.path=m"]).train.stop_after_zero_grad_steps == 3
    with pytest.raises(ConfigError, match="train.stop_after_zero_grad_steps must be >= 0"):
        load_config(None, ["model.path=m", "train.stop_after_zero_grad_steps=-1"])
    ids = [resume_identity(load_config(None, ["model.path=m", f"train.stop_after_zero_grad_steps={n}"]),
                                      "stage1") for n in (0, 3)]
    assert ids[0] == ids[1]  # a stopping rule, not what trains: changing it keeps `--resume auto` working
