"""A recipe is a list of stages: a third stage, another objective, a new target kind or pooling mode are list entries and
registrations, not code paths.

1. A target kind registered from outside t2t (here, in this file) is read from a recipe, validated, resolved into a
   manifest and built, with no change to t2t.
2. A three-stage recipe — data-driven Text2Token, model-derived Text2Token from it, then SimCSE from that — runs
   through the real `t2t pipeline`: its steps, shard directories, checkpoints and exports follow from the list,
   and each stage starts from the model its `start` names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import CORPUS

from t2t.config import ConfigError, load_config
from t2t.targets.kinds import TARGET_KINDS, TargetKind, TargetsSpec, register_target_kind
from t2t.targets.sparse import TargetBatch


@dataclass
class FirstTokensTargets(TargetsSpec):
    """A toy kind: uniform over the first `n` token ids of the text."""

    kind: str = "first-tokens"
    """The target kind."""
    n: int = 3
    """How many leading tokens."""


class FirstTokensWorker:
    def __init__(self, model_dir: str, spec: FirstTokensTargets, vocab_size: int, batch_size: int, embedder=None):
        from t2t.data.tokens import load_tokenizer

        self.tokenizer, self.n = load_tokenizer(model_dir), spec.n

    def reduce(self, pass_name: str, texts: list[str]):
        raise AssertionError("this kind has no corpus pass")

    def targets(self, texts: list[str], arrays: dict):
        rows = [sorted(set(ids[: self.n])) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        flat = np.array([i for r in rows for i in r], dtype=np.int64)
        return TargetBatch.pack(flat, np.ones(flat.size), lengths), dict(truncated=0)


class FirstTokens(TargetKind):
    name = "first-tokens"
    spec = FirstTokensTargets
    worker = f"{__name__}:FirstTokensWorker"

    def validate(self, spec: FirstTokensTargets, key: str) -> None:
        if spec.n < 1:
            raise ConfigError(f"{key}.n must be at least 1, got {spec.n}")

    def manifest_params(self, spec: FirstTokensTargets) -> dict:
        return dict(kind=self.name, n=spec.n)


@pytest.fixture
def first_tokens_kind():
    register_target_kind(FirstTokens())
    yield
    TARGET_KINDS.unregister("first-tokens")


def test_a_target_kind_registered_outside_t2t_is_a_recipe_entry(first_tokens_kind, tiny_model_dir, tmp_path):
    from t2t.data.target_job import TargetJob

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir)}, "data": {"corpus": str(CORPUS), "max_texts": 10},
        "stages": [{"name": "lead", "targets": {"kind": "first-tokens", "n": 2}, "steps": 1}]}))
    cfg = load_config(recipe)
    assert cfg.stage("lead").targets == FirstTokensTargets(n=2)
    with pytest.raises(ConfigError, match=r"stages\.lead\.targets\.n must be at least 1"):
        load_config(recipe, ["stages.lead.targets.n=0"])
    with pytest.raises(ConfigError, match=r"stages\.lead\.targets\.kind must be one of .*first-tokens"):
        load_config(recipe, ["stages.lead.targets.kind=last-tokens"])

    p = TargetJob.resolve(cfg, "lead")
    assert p.params["target"] == {"kind": "first-tokens", "n": 2} and p.params["embedding"] is None
    assert p.out == Path(cfg.data.shards_dir) / "lead"
    worker = p.kind.builder(str(tiny_model_dir), p.spec, p.params["vocab_size"], 8)
    batch, counts = worker.targets(["rivers flow to the sea", "a"], {})
    assert np.diff(batch.offsets).tolist()[0] == 2 and counts == {"truncated": 0}


def three_stages(tmp: Path, tiny_recipe: Path) -> Path:
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["run_dir"] = "runs/three"
    recipe["model"]["path"] = "runs/three/base"
    recipe["model"]["tiny"].update(tokenizer_corpus=str(CORPUS), vocab_size=1000, tokenizer_train_texts=2000,
                                   hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    recipe["model"]["pooling"] = "mean"  # said, not implied: the SimCSE stage embeds with it (LLM2Vec's pooling)
    recipe["data"].update(corpus=str(CORPUS), max_texts=400, shards_dir="shards/three", loader_workers=0)
    recipe["targets"].update(shard_size=100, workers=0)
    recipe["train"].update(micro_batch_size=8, save_every=50, nproc=1)
    recipe["eval"].update(tasks=["STSBenchmark"], workers=1, out_dir="runs/three/eval")
    recipe["stages"] = [
        {"name": "words", "start": "base", "objective": {"name": "t2t"}, "targets": {"kind": "data-driven"}, "steps": 3,
         "lr": 1.0e-3},
        {"name": "beyond", "start": "words", "objective": {"name": "t2t"},
         "targets": {"kind": "model-derived", "tau": 1.0e-4, "max_texts": 200}, "steps": 2, "lr": 1.0e-4},
        {"name": "contrast", "start": "beyond", "objective": {"name": "simcse"}, "targets": {"kind": "data-driven"},
         "steps": 2, "lr": 1.0e-5},
    ]
    path = tmp / "three.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_three_stages_run_through_the_pipeline(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    recipe = three_stages(tmp_path, repo / "recipes" / "tiny.yaml")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "t2t.cli", "pipeline", "--config", str(recipe),
                           "--until", "contrast:train"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    steps = ["base", "words:targets", "words:train", "beyond:targets", "beyond:train", "contrast:targets",
             "contrast:train"]
    for i, step in enumerate(steps, start=1):
        assert f"[{i}/9] {step}: done" in out, step
    assert "[8/9] eval" not in out  # --until stops after contrast:train
    assert "done up to contrast:train" in done.stdout and "report.md" not in done.stdout

    run, shards = tmp_path / "runs" / "three", tmp_path / "shards" / "three"
    for name in ("words", "beyond", "contrast"):
        info = json.loads((run / name / "model" / "t2t_train.json").read_text())
        assert info["stage"] == name and (run / name / "checkpoints").is_dir()
        assert json.loads((shards / name / "manifest.json").read_text())["stage"] == name
    # Each stage started from the model its `start` names: `beyond` derived its targets with `words`' export.
    beyond = json.loads((shards / "beyond" / "manifest.json").read_text())
    assert beyond["backbone"]["path"] == str(Path("runs/three/words/model"))
    assert beyond["params"]["target"]["tau"] == 1.0e-4 and beyond["samples"] == 200
    losses = {name: [json.loads(line)["loss"] for line in (run / name / "metrics.jsonl").open()]
              for name in ("words", "beyond", "contrast")}
    assert [len(v) for v in losses.values()] == [3, 2, 2]
    assert all(np.isfinite(v).all() for v in losses.values())
    state = json.loads((run / "pipeline.json").read_text())
    assert [k for k in state if k != "started"] == steps


def test_a_stage_list_names_its_start_and_steps(tmp_path):
    from t2t import run_paths
    from t2t.pipeline import step_names

    recipe = three_stages(tmp_path, Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml")
    cfg = load_config(recipe)
    assert step_names(cfg) == ["base", "words:targets", "words:train", "beyond:targets", "beyond:train",
                               "contrast:targets", "contrast:train", "eval", "report"]
    assert run_paths.for_stage(cfg, "words").model.path == "runs/three/base"
    assert run_paths.for_stage(cfg, "contrast").model == dataclasses.replace(
        cfg.model, path="runs/three/beyond/model", tiny=None, gguf="")
    assert run_paths.texts_limit(cfg, "beyond") == 200 and run_paths.texts_limit(cfg, "words") == 400
    with pytest.raises(ConfigError, match=r"stages\.words\.start is 'contrast', a later stage"):
        load_config(recipe, ["stages.words.start=contrast"])


def test_a_pooling_mode_registered_outside_t2t_is_a_recipe_entry(tiny_model_dir):
    import torch

    from t2t.model import from_config
    from t2t.pooling import POOLINGS, Pooling, register_pooling

    def max_over_tokens(hidden, mask):
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1)

    register_pooling(Pooling("max", max_over_tokens))
    try:
        cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.pooling=max"])
        assert cfg.model.template == "{text}"
        embedder = from_config(cfg.model)
        with torch.no_grad():
            h, z = embedder(**embedder.tokenize(["rivers flow to the sea", "a lake"]))
        mean = from_config(dataclasses.replace(cfg.model, pooling="mean"))
        with torch.no_grad():
            h_mean, _ = mean(**mean.tokenize(["rivers flow to the sea", "a lake"]))
        assert h.shape == h_mean.shape and torch.isfinite(h).all() and not torch.allclose(h, h_mean)
        assert (h >= h_mean - 1e-6).all()  # the max over tokens is at least their mean
    finally:
        POOLINGS.unregister("max")
    with pytest.raises(ConfigError, match=r"model\.pooling must be one of mean, last, eos, echo; got 'max'"):
        load_config(None, [f"model.path={tiny_model_dir}", "model.pooling=max"])
