"""Trainer pieces in one process: LR schedules, NaN guard, stop signals, metrics on resume, checkpoint rotation,
SimCSE's dropout views, stages addressed by name (a number N: the Nth stage)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from t2t.config import ConfigError, load_config
from t2t.errors import UserError
from t2t.fingerprints import resume_identity
from t2t.train import checkpoint
from t2t.train.export import TRAIN_INFO, stage_complete
from t2t.train.engine import free_port, lr_multiplier
from t2t.objectives import Text2TokenObjective
from t2t.train.loss import objective_for
from t2t.train.monitor import MetricsLog
from t2t.train.trainer import StopSignals, TrainingDiverged, train_step


def test_lr_schedules():
    constant = lr_multiplier("constant", 0, 10)
    warmup = lr_multiplier("warmup", 4, 10)
    cosine = lr_multiplier("cosine", 2, 10)
    assert [constant(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [warmup(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [cosine(0), cosine(1), cosine(2)] == [0.5, 1.0, 1.0]
    assert cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert all(cosine(s) >= cosine(s + 1) for s in range(2, 10))
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier("linear", 0, 10)


@pytest.fixture
def process_group():
    """A world-size-1 gloo group in this process (what a lone `t2t train` gets)."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


class FakeEngine(torch.nn.Module):
    """The slice of a DeepSpeed engine train_step uses; its logits are whatever the test sets."""

    device = torch.device("cpu")

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.z = torch.nn.Parameter(logits)
        self.steps = 0

    def forward(self, input_ids, attention_mask):
        return None, self.z.expand(input_ids.shape[0], -1)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.steps += 1

    def get_lr(self):
        return [1e-3]


def batch(n: int = 3) -> dict:
    return dict(input_ids=torch.ones(n, 4, dtype=torch.long), attention_mask=torch.ones(n, 4, dtype=torch.long),
                target_ids=torch.tensor([[1, 2]] * n), target_w=torch.tensor([[0.5, 0.5]] * n),
                target_mask=torch.ones(n, 2, dtype=torch.bool))


def test_train_step_reports_the_global_mean(process_group):
    engine = FakeEngine(torch.zeros(8))
    result = train_step(engine, objective_for(Text2TokenObjective()), [batch(3), batch(2)], world_size=1, flags=[5.0])
    # uniform student over 8 tokens vs a target uniform over 2: KL = log(8/2)
    assert result.loss == pytest.approx(float(torch.log(torch.tensor(4.0))), abs=1e-6)
    assert (result.counted, result.tokens, result.flags, result.stop) == (5, 20, [5.0], False)
    assert engine.steps == 2  # one per micro-step: DeepSpeed counts them


def test_nan_loss_stops_before_the_optimizer_step(process_group):
    engine = FakeEngine(torch.full((8,), float("nan")))
    with pytest.raises(TrainingDiverged, match="nan"):
        train_step(engine, objective_for(Text2TokenObjective()), [batch()], world_size=1,
                   before_update=lambda: pytest.fail("the update must not run"))
    assert engine.steps == 0


def test_deepspeeds_muon_module_is_imported_without_compiling_its_kernels():
    """Every ZeRO engine imports DeepSpeed's Muon module for an isinstance check; imported by itself it wraps three
    kernels in torch.compile, which loads TorchDynamo (1.2 s per rank start). engine.import_muon_uncompiled keeps
    them eager, and leaves DeepSpeed's compile helper as it was."""
    import subprocess
    import sys

    probe = ("import sys, deepspeed; from deepspeed.runtime import compiler; helper = compiler.compile; "
             "from t2t.train.engine import import_muon_uncompiled; import_muon_uncompiled(); "
             "import deepspeed.runtime.zero.muon.muon_optimizer; "
             "print('torch._dynamo' in sys.modules, compiler.compile is helper)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert done.returncode == 0 and done.stdout.split() == ["False", "True"], done.stdout + done.stderr[-2000:]


def test_stop_signals_are_recorded_not_fatal():
    before = signal.getsignal(signal.SIGTERM)  # another in-process library (Ray) may own it already
    stop = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C stops cleanly too...
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # ...a second one interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_pre_timeout_signal_before_the_loop_is_kept_for_it(monkeypatch):
    """Slurm's SIGUSR1 can reach a launched rank while it still loads (tests/test_cluster.py met it): it is
    recorded, and the loop takes it as received, so the rank trains one step, checkpoints and exits."""
    from t2t.train import signals

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    monkeypatch.setattr(signals, "_early", None)
    monkeypatch.setattr(signals, "_loop_started", False)
    try:
        signals.install_rank_handlers()
        os.kill(os.getpid(), signal.SIGUSR1)  # not fatal, not ignored
        stop = StopSignals()
        assert stop.received == signal.SIGUSR1
        stop.restore()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_metrics_log_drops_lines_after_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    log = MetricsLog(path, resumed_step=4)
    log.write({"step": 5, "loss": 0.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / checkpoint.tag_for(step)).mkdir()
    (tmp_path / "latest").write_text("step00000006")  # step 8 never finished (no `latest` update)
    checkpoint.rotate(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step00000004", "step00000006"]


def test_resolve_checkpoint(tmp_path):
    (tmp_path / "step00000010").mkdir()
    (tmp_path / "latest").write_text("step00000010\n")
    assert checkpoint.resolve_checkpoint(tmp_path) == (tmp_path, "step00000010")
    assert checkpoint.resolve_checkpoint(tmp_path / "step00000010") == (tmp_path, "step00000010")
    with pytest.raises(UserError, match="neither a checkpoints directory"):
        checkpoint.resolve_checkpoint(tmp_path / "nothing")


def test_resume_never_refuses_existing_checkpoints(tmp_path):
    (tmp_path / "latest").write_text("step00000002")
    with pytest.raises(UserError, match="--resume never"):
        checkpoint.resume(engine=None, ckpt_dir=tmp_path, mode="never")
    assert checkpoint.resume(engine=None, ckpt_dir=tmp_path / "empty", mode="auto") is None


def test_simcse_dropout_gives_two_views_in_train_mode_only(tiny_model_dir):
    from t2t.config import ModelConfig
    from t2t.model import from_config

    embedder = from_config(ModelConfig(path=str(tiny_model_dir)))
    cfg = load_config(None, ["model.path=m", "stages.stage1.objective.name=simcse", "stages.stage1.objective.dropout=0.2"])
    objective = objective_for(cfg.stage("stage1").objective)
    objective.prepare(embedder)
    layers = [m for m in embedder.lm.modules() if hasattr(m, "attention_dropout")]
    assert embedder.lm.config.attention_dropout == 0.2 and [m.attention_dropout for m in layers] == [0.2, 0.2]
    batch = embedder.tokenize(["The river flows through the old town.", "Quantum physics is hard."])
    embedder.train()
    assert (embedder(**batch)[0] - embedder(**batch)[0]).abs().max() > 1e-3
    torch.manual_seed(7)
    first = objective.loss(embedder, batch).total
    torch.manual_seed(7)
    assert objective.loss(embedder, batch).total == first  # the RNG state decides the masks: resume restores it
    embedder.eval()
    torch.testing.assert_close(embedder(**batch)[0], embedder(**batch)[0], rtol=0, atol=0)


def test_simcse_settings_are_validated():
    simcse = "stages.stage1.objective.name=simcse"
    for key, value in (("stages.stage1.objective.temperature", 0), ("stages.stage1.objective.dropout", 1.0)):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, ["model.path=m", simcse, f"{key}={value}"])


class EmbedderEngine(torch.nn.Module):
    """The slice of a DeepSpeed engine train_step uses, around a real embedder: its backward divides by the
    micro-steps of a step, as DeepSpeed's does."""

    device = torch.device("cpu")

    def __init__(self, embedder, micro_steps: int = 1):
        super().__init__()
        self.module, self.micro_steps = embedder, micro_steps

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss):
        (loss / self.micro_steps).backward()

    def step(self):
        pass

    def get_lr(self):
        return [1e-3]


def test_simcse_trains_from_the_text2token_start(tiny_model_dir, process_group):
    """Causal attention, PromptEOL and `last` pooling: a recipe that loads, and a SimCSE step on a tiny model whose
    two views differ and whose gradient reaches the backbone."""
    from t2t.model import from_config

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.pooling=last", "model.attention=causal",
                             "model.max_length=32", "stages.stage1.objective.name=simcse"])
    assert "means in one word" in cfg.model.template  # PromptEOL, the `last` pooling's own prompt
    embedder = from_config(cfg.model)
    objective = objective_for(cfg.stage("stage1").objective)
    objective.prepare(embedder)
    embedder.train()
    batch = embedder.tokenize(["The river flows through the old town.", "Quantum physics is hard.", "Rain fell.",
                               "The market opens at dawn."])
    assert (embedder(**batch)[0] - embedder(**batch)[0]).abs().max() > 1e-3  # the last position's two views differ
    result = train_step(EmbedderEngine(embedder), objective, [batch], world_size=1)
    assert result.counted == 4 and 0 < result.loss < float("inf")
    layer = embedder.lm.model.layers[0].self_attn.q_proj.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0


def test_stage_complete_needs_the_export(tmp_path, tiny_model_dir):
    from t2t.config import ModelConfig
    from t2t.model import export, from_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: m}}\nrun_dir: {tmp_path / 'run'}\n")
    cfg = load_config(recipe, ["stages.stage1.steps=4"])
    assert not stage_complete(cfg, "stage1")
    with pytest.raises(ConfigError, match=r"no stage 'stage3' in this recipe \(stages: stage1, stage2\)"):
        stage_complete(cfg, "stage3")
    out = export(from_config(ModelConfig(path=str(tiny_model_dir))), tmp_path / "run" / "stage1" / "model")
    for recorded, complete in ((dict(stage="stage1", steps=4), True), (dict(stage="stage1", steps=3), False),
                               (dict(stage="stage2", steps=4), False), (dict(stage=1, steps=4), False)):
        (out / TRAIN_INFO).write_text(json.dumps(recorded))
        assert stage_complete(cfg, "stage1") is complete, recorded
    assert not stage_complete(cfg, "stage2")  # another stage's directory


@pytest.mark.parametrize("mode", ["default", "train_embeddings", "lora"])
def test_trainable_policy_freezes_head_and_embeddings_by_default(tiny_model_dir, mode):
    from t2t.config import Config, LoraConfig
    from t2t.model import load_lm
    from t2t.train.engine import apply_trainable_policy, trainable_names

    cfg = Config()
    cfg.train.train_embeddings = mode == "train_embeddings"
    cfg.train.lora = LoraConfig() if mode == "lora" else None
    lm = apply_trainable_policy(load_lm(tiny_model_dir), cfg)
    names = trainable_names(lm)
    embedding_like = [n for n in names if "embed_tokens" in n or "lm_head" in n]
    if mode == "lora":
        assert names and all("lora_" in n for n in names)
    elif mode == "default":
        assert not embedding_like and any("layers.0.mlp" in n for n in names)
    else:
        assert embedding_like and len(names) == len(list(lm.parameters()))


def test_train_embeddings_with_lora_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: m}\ntrain: {lora: {r: 4}, train_embeddings: true}\n")
    with pytest.raises(ConfigError, match="train.train_embeddings applies to full-parameter training"):
        load_config(recipe)


class SavedCheckpoint:
    """Stands in for a DeepSpeed engine whose checkpoint holds `client`."""

    def __init__(self, client):
        self.client = client

    def load_checkpoint(self, load_dir, tag):
        return f"{load_dir}/{tag}", {"t2t": self.client}


def test_a_checkpoint_of_another_recipe_is_not_resumed_silently(tmp_path, caplog):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: m}\nstages: [{name: stage1, steps: 10, lr: 1.0e-3}]\n")
    saved = resume_identity(load_config(recipe), "stage1")
    client = dict(step=4, data=[], rng=[], recipe=saved)
    (tmp_path / "latest").write_text("step00000004")
    # More steps, another checkpoint cadence: the same run, continued.
    longer = resume_identity(load_config(recipe, ["stages.stage1.steps=20", "train.save_every=5"]),
                                        "stage1")
    assert checkpoint.resume(SavedCheckpoint(client), tmp_path, "auto", longer)["step"] == 4
    # Another lr and seed: refused under auto, naming both.
    changed = resume_identity(load_config(recipe, ["stages.stage1.lr=2e-3", "seed=1"]), "stage1")
    with pytest.raises(UserError, match=r"different recipe \(seed: 0 → 1; stages.stage1.lr: 0.001 → 0.002\)"):
        checkpoint.resume(SavedCheckpoint(client), tmp_path, "auto", changed)
    # --resume force: the newest anyway, the changes logged.
    with caplog.at_level("WARNING"):
        assert checkpoint.resume(SavedCheckpoint(client), tmp_path, "force", changed)["step"] == 4
    assert "seed: 0 → 1" in caplog.text
    caplog.clear()
    # Named explicitly (e.g. the last good checkpoint, with a lower lr): allowed, and the changes are logged.
    (tmp_path / "step00000004").mkdir()
    with caplog.at_level("WARNING"):
        assert checkpoint.resume(SavedCheckpoint(client), tmp_path, str(tmp_path / "step00000004"), changed)
    assert "seed: 0 → 1" in caplog.text


def old_layout_identity(now: dict, stage: str) -> dict:
    """`now` as a checkpoint written before stages were a list recorded it: the stage's lr, schedule and warmup
    as `train.<stage>`, the objective as `train.objective`, the corpora under `data.`."""
    own = {k.split(".")[2]: v for k, v in now.items() if k.startswith(f"stages.{stage}.")}
    old = {k: v for k, v in now.items() if not k.startswith("stages.") and k != "data.corpus"}
    old[f"train.{stage}"] = {k: own[k] for k in ("lr", "schedule", "warmup_steps")}
    old["train.objective"] = own["objective"]["name"]
    old.update({"data.stage1_corpus": "", "data.stage2_corpus": "", "data.stage2_max_texts": 0})
    return old


def test_a_checkpoint_written_before_stages_were_a_list_is_not_resumed(tmp_path, caplog):
    now = resume_identity(load_config(None, ["model.path=m", "stages.stage2.lr=1e-3"]), "stage2")
    client = dict(step=4, data=[], rng=[], recipe=old_layout_identity(now, "stage2"))
    (tmp_path / "latest").write_text("step00000004")
    with pytest.raises(UserError) as e:  # the same recipe: still refused, saying why rather than listing every key
        checkpoint.resume(SavedCheckpoint(client), tmp_path, "auto", now)
    assert str(e.value) == (f"{tmp_path / 'step00000004'} was written by an older t2t layout (before stages were a "
                            f"list) and is not resumed; remove {tmp_path} to retrain the stage from its start")
    with caplog.at_level("WARNING"):  # --resume force stays the user's choice, the differences logged
        assert checkpoint.resume(SavedCheckpoint(client), tmp_path, "force", now)["step"] == 4
    assert "train.objective: 't2t' → None" in caplog.text


def test_a_stage_is_trained_as_it_runs_from_its_start(monkeypatch):
    """`train(cfg, "stage2")` builds from stage1's export (no model.path override) with stage2's objective."""
    import t2t.train.engine as engine
    from t2t.train import trainer

    built = {}

    class Built(Exception):
        pass

    def build(cfg, stage, resume, objective, rank, world):
        built.update(cfg=cfg, stage=stage, objective=objective.name)
        raise Built

    monkeypatch.setattr(engine, "init_distributed", lambda: (0, 1))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    monkeypatch.setattr(trainer.TrainState, "build", staticmethod(build))
    cfg = load_config(None, ["model.path=m", "run_dir=runs/x", "stages.stage2.objective.name=simcse"])
    with pytest.raises(Built):
        trainer.train(cfg, "stage2")
    assert built["stage"] == "stage2" and built["objective"] == "simcse"
    assert built["cfg"].model.path == os.path.join("runs", "x", "stage1", "model")
    with pytest.raises(Built):
        trainer.train(cfg, "stage1")
    assert built["cfg"].model.path == "m" and built["objective"] == "t2t"
    with pytest.raises(ConfigError, match="no stage 'stage3'"):
        trainer.train(cfg, "stage3")


def test_the_cli_takes_a_stage_by_name_or_number(tmp_path, capsys):
    from t2t.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: m}}\nrun_dir: {tmp_path / 'run'}\n")
    for verb in ("train", "export"):
        assert main([verb, "--config", str(recipe), "--stage", "stage9"]) == 2
        assert "--stage stage9: the recipe's stages are stage1, stage2" in capsys.readouterr().err
    # A number N is the Nth stage: its (missing) checkpoints are looked for in the stage's directory.
    assert main(["export", "--config", str(recipe), "--stage", "2"]) == 2
    ckpt_dir = tmp_path / "run" / "stage2" / "checkpoints"
    assert f"{ckpt_dir} is neither a checkpoints directory" in capsys.readouterr().err
    assert main(["export", "--config", str(recipe), "--stage", "base", "--checkpoint", "x"]) == 2
    assert "--checkpoint belongs to a training stage" in capsys.readouterr().err
