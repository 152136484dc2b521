"""The real training entry, 2 ranks of ZeRO-3 on CPU: learning, checkpoints, export, and exact resume.

One uninterrupted run (module fixture) serves several assertions; a second run resumes from
the first one's step-6 checkpoint (the data stream crosses an epoch boundary there, through a
loader process) and must log exactly the first run's losses for the steps after it. The SimCSE
objective gets the same treatment in one test: `t2t train --set stages.stage1.objective.name=simcse`, then a
resumed run that must reproduce its losses, dropout masks included; so does MNTP, its token masks included. Stage 2 then trains stage 1's export by
name alone (`--stage stage2`, no model.path override). The stop on SIGUSR1 and the
requeued resume are tested on a real two-node Slurm cluster in test_cluster.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import webdataset as wds

from t2t.config import load_config
from t2t.data.shards import decode_sample
from t2t.data.stream import collate
from t2t.train import launch_local, stage_complete
from t2t.train.export import TRAIN_INFO
from train_support import metrics, rank_env, torchrun, write_recipe, write_stage_shards

STEPS = 8
TRAIN_ARGS = ["-m", "t2t.cli", "train", "--stage", "stage1", "--config"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_run")
    write_stage_shards(tiny_model_dir, root / "shards" / "stage1", n_shards=4, per_shard=24)
    recipe = write_recipe(root / "r.yaml", tiny_model_dir, root / "shards", root / "run_a",
                          micro_batch_size=4, grad_accum_steps=2,
                          stage1=dict(steps=STEPS, lr=5.0e-3, schedule="warmup", warmup_steps=2),
                          train_embeddings=True)  # a random model has no embeddings worth keeping frozen
    text = recipe.read_text().replace("loader_workers: 0", "loader_workers: 1")  # real loader processes
    recipe.write_text(text)
    return root, recipe


@pytest.fixture(scope="module")
def run_a(setup):
    root, recipe = setup
    torchrun(2, TRAIN_ARGS + [str(recipe)], root / "run_a.log")
    return root / "run_a", load_config(recipe)


def all_samples(shard_dir: Path) -> list:
    return [decode_sample(s) for p in sorted(shard_dir.glob("t2t-*.tar")) for s in wds.tarfile_samples([dict(url=str(p))])]


def simcse_mean_loss(embedder, texts: list[str], dropout: float) -> float:
    """SimCSE loss over `texts` in batches of 16, with dropout masks drawn from a fixed seed."""
    from t2t.train.loss import set_attention_dropout, simcse_loss

    set_attention_dropout(embedder, dropout)
    embedder.train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        parts = [simcse_loss(embedder, embedder.tokenize(texts[i:i + 16]), temperature=0.05)
                 for i in range(0, len(texts), 16)]
    return sum(p.total.item() for p in parts) / sum(p.count for p in parts)


def mean_loss(embedder, samples) -> float:
    from t2t.train.loss import text2token_loss

    with torch.no_grad():
        parts = text2token_loss(embedder.eval(), collate(samples, embedder.tokenizer, embedder.settings))
    return parts.total.item() / parts.count


@pytest.mark.slow
def test_two_ranks_lower_the_loss(run_a, setup):
    from t2t.model import from_config, load

    run_dir, cfg = run_a
    samples = all_samples(setup[0] / "shards" / "stage1")
    before = mean_loss(from_config(cfg.model), samples)
    after = mean_loss(load(run_dir / "stage1" / "model"), samples)
    assert after < before - 0.2, (before, after)
    lines = metrics(run_dir)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for m in lines:
        assert m["loss"] > 0 and m["grad_norm"] > 0 and m["samples_per_s"] > 0 and m["tokens_per_s"] > 0
        assert 0 < m["mfu"] < 1 and m["comm_s"] > 0 and m["compute_s"] > 0  # 2 ranks: ZeRO-3 gathers are timed
        phases = m["compute_s"] + m["comm_s"] + m["optimizer_s"] + m["data_wait_s"]
        assert phases <= m["step_s"] * 1.001  # the phases are parts of the step
    # The same numbers through DeepSpeed's CSV monitor (the recipe's default `train.monitors: [csv]`).
    monitor = run_dir / "stage1" / "monitor" / "stage1"
    losses = (monitor / "t2t_loss.csv").read_text().splitlines()
    assert losses[0] == "step,loss" and len(losses) == STEPS + 1
    assert float(losses[1].split(",")[1]) == pytest.approx(lines[0]["loss"])
    assert (monitor / "t2t_mfu.csv").is_file() and (monitor / "t2t_comm_s.csv").is_file()
    assert [m["lr"] for m in lines[:3]] == pytest.approx([2.5e-3, 5e-3, 5e-3])  # warmup over 2 steps
    assert all(m["texts_counted"] <= 16 for m in lines)  # 2 ranks × 2 micro-steps × 4, empty targets left out


@pytest.mark.slow
def test_checkpoints_rotate_and_hold_client_state(run_a):
    run_dir, _ = run_a
    ckpt = run_dir / "stage1" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000006", "step00000008"]
    assert (ckpt / "latest").read_text().strip() == "step00000008"
    state = torch.load(ckpt / "step00000008" / "mp_rank_00_model_states.pt", weights_only=False)["t2t"] \
        if (ckpt / "step00000008" / "mp_rank_00_model_states.pt").exists() else \
        torch.load(ckpt / "step00000008" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)["t2t"]
    assert state["step"] == STEPS and len(state["data"]) == len(state["rng"]) == 2
    assert [d["batches"] for d in state["data"]] == [2 * STEPS, 2 * STEPS]


@pytest.mark.slow
def test_export_loads_in_sentence_transformers_and_encodes(run_a):
    from sentence_transformers import SentenceTransformer

    from t2t.model import load

    run_dir, cfg = run_a
    out = run_dir / "stage1" / "model"
    texts = ["The river flows through the old town.", "Quantum physics is hard.", "A short one."]
    st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    ours = load(out).encode(texts)
    assert st.shape == (3, 64)
    assert abs(st - ours).max() < 1e-4
    assert stage_complete(cfg, "stage1")
    assert not stage_complete(load_config(run_dir.parent / "r.yaml", [f"stages.stage1.steps={STEPS + 1}"]), "stage1")


@pytest.mark.slow
def test_export_cli_consolidates_an_older_checkpoint(run_a, tmp_path):
    from safetensors.torch import load_file

    from t2t.cli import main

    run_dir, _ = run_a
    out = tmp_path / "m6"
    ckpt = run_dir / "stage1" / "checkpoints" / "step00000006"
    assert main(["export", "--config", str(run_dir.parent / "r.yaml"), "--stage", "stage1", "--checkpoint", str(ckpt),
                 "--out", str(out)]) == 0
    assert json.loads((out / TRAIN_INFO).read_text())["steps"] == 6
    w6 = load_file(out / "model.safetensors")
    w8 = load_file(run_dir / "stage1" / "model" / "model.safetensors")
    assert w6.keys() == w8.keys()
    assert any(not torch.equal(w6[k], w8[k]) for k in w6)


def test_export_stage0_is_the_recipes_backbone_with_its_embedding_settings(setup, tmp_path, capsys):
    from t2t.cli import main
    from t2t.model import from_config, load

    _, recipe = setup
    out = tmp_path / "m0"
    assert main(["export", "--config", str(recipe), "--stage", "base", "--out", str(out)]) == 0
    cfg = load_config(recipe)
    texts = ["The river flows through the old town.", "A short one."]
    assert abs(load(out).encode(texts) - from_config(cfg.model).encode(texts)).max() < 1e-6
    assert json.loads((out / "t2t_config.json").read_text())["pooling"] == cfg.model.pooling
    assert main(["export", "--config", str(recipe), "--stage", "0", "--checkpoint", str(tmp_path)]) != 0  # 0: base
    assert "--checkpoint belongs to a training stage" in capsys.readouterr().err


@pytest.mark.slow
def test_stage2_trains_the_stage1_export_by_name_alone(run_a, setup, tiny_model_dir):
    """`t2t train --stage stage2` with no model.path override starts from `<run_dir>/stage1/model` (stage2's
    `start`): with an lr of 1e-12 its export holds M1's weights, and the frozen embeddings are M1's exactly."""
    from safetensors.torch import load_file

    root, recipe = setup
    run_dir, _ = run_a
    write_stage_shards(tiny_model_dir, root / "shards" / "stage2", n_shards=2, per_shard=8, stage="stage2")
    overrides = ["stages.stage2.steps=1", "stages.stage2.lr=1e-12", "train.train_embeddings=false"]
    args = ["-m", "t2t.cli", "train", "--stage", "stage2", "--config", str(recipe)]
    torchrun(1, args + [a for o in overrides for a in ("--set", o)], root / "stage2.log")
    assert stage_complete(load_config(recipe, overrides), "stage2")
    assert [m["step"] for m in metrics(run_dir, "stage2")] == [1]
    m0 = load_file(tiny_model_dir / "model.safetensors")
    m1 = load_file(run_dir / "stage1" / "model" / "model.safetensors")
    m2 = load_file(run_dir / "stage2" / "model" / "model.safetensors")
    assert m2.keys() == m1.keys()
    embed = next(k for k in m1 if "embed_tokens" in k)
    assert torch.equal(m2[embed], m1[embed]) and not torch.equal(m1[embed], m0[embed])
    for k in m1:
        torch.testing.assert_close(m2[k], m1[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert max((m1[k] - m0[k]).abs().max().item() for k in m1) > 1e-3  # M1 is far from M0: stage2 started at M1


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_losses(run_a, setup, monkeypatch):
    """Run B starts from run A's step-6 checkpoint, as after a crash right after it, and must log A's losses."""
    root, recipe = setup
    for key, value in rank_env().items():  # the same threads as run A: bitwise-equal losses
        monkeypatch.setenv(key, value)
    a_stage, b_stage = run_a[0] / "stage1", root / "run_b" / "stage1"
    shutil.copytree(a_stage / "checkpoints" / "step00000006", b_stage / "checkpoints" / "step00000006")
    (b_stage / "checkpoints" / "latest").write_text("step00000006")
    lost = [dict(m, loss=-1.0) for m in metrics(run_a[0])]  # what the crashed run had logged, steps 1-8
    (b_stage / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lost))

    launch_local(str(recipe), [f"run_dir={root / 'run_b'}"], stage="stage1", nproc=2, log_file=root / "run_b.log")
    assert "resumed from" in (root / "run_b.log").read_text()  # launch_local resumes (--resume auto)
    resumed = [m["loss"] for m in metrics(root / "run_b")]
    uninterrupted = [m["loss"] for m in metrics(run_a[0])]
    assert resumed[:6] == [-1.0] * 6  # logged before the checkpoint: kept; the lost steps 7-8: replaced
    assert resumed[6:] == uninterrupted[6:]  # the steps trained after the resume, exactly
    assert len(resumed) == STEPS and stage_complete(load_config(recipe, [f"run_dir={root / 'run_b'}"]), "stage1")


@pytest.mark.slow
def test_simcse_trains_resumes_exactly_and_exports(setup):
    """`t2t train --set stages.stage1.objective.name=simcse` (bidirectional, 2 ranks × 2 micro-steps), then a resume at
    step 4."""
    from t2t.model import from_config, load

    root, recipe = setup
    steps = 6
    overrides = ["stages.stage1.objective.name=simcse", "model.attention=bidirectional", f"stages.stage1.steps={steps}",
                 "stages.stage1.lr=2.0e-4", "stages.stage1.schedule=constant", "stages.stage1.warmup_steps=0"]
    args = TRAIN_ARGS + [str(recipe)] + [a for o in overrides for a in ("--set", o)]
    run_a, run_b = root / "simcse_a", root / "simcse_b"
    torchrun(2, args + ["--set", f"run_dir={run_a}"], root / "simcse_a.log")
    assert "simcse: attention dropout 0.1 on 2 attention layers" in (root / "simcse_a.log").read_text()
    lines = metrics(run_a)
    assert [m["step"] for m in lines] == list(range(1, steps + 1))
    assert all(m["loss"] > 0 and m["grad_norm"] > 0 and m["texts_counted"] == 16 for m in lines)  # 2 × 2 × 4

    a_ckpt, b_ckpt = run_a / "stage1" / "checkpoints", run_b / "stage1" / "checkpoints"
    shutil.copytree(a_ckpt / "step00000004", b_ckpt / "step00000004")  # as after a crash right after step 4
    (b_ckpt / "latest").write_text("step00000004")
    torchrun(2, args + ["--set", f"run_dir={run_b}"], root / "simcse_b.log")
    assert "resumed from" in (root / "simcse_b.log").read_text()
    assert [m["loss"] for m in metrics(run_b)] == [m["loss"] for m in lines[4:]]  # steps 5-6, dropout and all

    exported = load(run_a / "stage1" / "model")
    assert exported.settings.attention == "bidirectional" and exported.lm.config.attention_dropout == 0.0
    assert exported.encode(["The river flows through the old town.", "A short one."]).shape == (2, 64)
    texts = [s[1] for s in all_samples(root / "shards" / "stage1")]
    base = from_config(load_config(recipe, ["model.attention=bidirectional"]).model)
    before, after = simcse_mean_loss(base, texts, 0.1), simcse_mean_loss(exported, texts, 0.1)
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_mntp_trains_resumes_exactly_and_exports(setup):
    """`t2t train --set stages.stage1.objective.name=mntp` (bidirectional, one rank × 2 micro-steps of 8, a loader
    process), then a resume at step 2 must log the same losses: the masks of the steps after it are drawn again
    exactly. (Each rank's own generator across a resume: SimCSE's dropout above, on 2 ranks.)"""
    from t2t.model import load

    root, recipe = setup
    steps = 4
    overrides = ["stages.stage1.objective.name=mntp", "model.attention=bidirectional", f"stages.stage1.steps={steps}",
                 "train.micro_batch_size=8"]  # the global batch of 2 ranks × 4
    args = TRAIN_ARGS + [str(recipe)] + [a for o in overrides for a in ("--set", o)]
    run_a, run_b = root / "mntp_a", root / "mntp_b"
    torchrun(1, args + ["--set", f"run_dir={run_a}"], root / "mntp_a.log")
    lines = metrics(run_a)
    assert [m["step"] for m in lines] == list(range(1, steps + 1))
    assert all(m["loss"] > 0 and m["grad_norm"] > 0 and m["texts_counted"] > 16 for m in lines)  # masked tokens
    assert lines[-1]["loss"] < lines[0]["loss"]

    a_ckpt, b_ckpt = run_a / "stage1" / "checkpoints", run_b / "stage1" / "checkpoints"
    shutil.copytree(a_ckpt / "step00000002", b_ckpt / "step00000002")  # as after a crash right after step 2
    (b_ckpt / "latest").write_text("step00000002")
    torchrun(1, args + ["--set", f"run_dir={run_b}"], root / "mntp_b.log")
    assert "resumed from" in (root / "mntp_b.log").read_text()
    assert [(m["loss"], m["texts_counted"]) for m in metrics(run_b)] == \
        [(m["loss"], m["texts_counted"]) for m in lines[2:]]
    exported = load(run_a / "stage1" / "model")
    assert exported.settings.attention == "bidirectional"
    assert exported.encode(["The river flows through the old town."]).shape == (1, 64)


@pytest.mark.slow
def test_launch_local_names_the_stage_and_log_when_training_fails(setup, monkeypatch, tmp_path):
    root, recipe = setup
    for key, value in rank_env().items():
        monkeypatch.setenv(key, value)
    log = root / "failing.log"
    with pytest.raises(RuntimeError, match=f"stage1: training failed.*{log}"):
        # a rank refuses a shard directory without a manifest before it starts DeepSpeed: a fast, real failure
        launch_local(str(recipe), [f"data.shards_dir={tmp_path / 'none'}"], stage="stage1", nproc=1, log_file=log)
    assert str(tmp_path / "none" / "stage1") in log.read_text()
