"""Every recipe (recipes/, and the quality study's in bench/quality/) loads and validates without any
weights, is written as a list of stages (the layout before is refused), and so are the `--set` overrides
its comments suggest; the files it names inside the repository exist; the cluster recipes match the reference setup of
docs/DESIGN.md §1.

    .venv/bin/pytest tests/test_recipes.py

(That every config field has a docstring is tests/test_config.py::test_every_field_has_a_docstring.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from t2t.config import PROMPT_EOL, ModelConfig, load_config
from t2t.config.load import check_old_layout
from t2t.targets.kinds import DataDrivenTargets, ModelDerivedTargets
from t2t.model.gguf import locate
from t2t.plan import load_arch, read_ds_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml")) + [REPO / "bench" / "quality" / "study.yaml",
                                                       REPO / "bench" / "quality" / "smollm2" / "text2token.yaml",
                                                       REPO / "bench" / "quality" / "v3" / "recipe.yaml"]
CLUSTER = {  # recipe -> (backbone directory name, parameters of the published architecture)
    "mistral-7b.yaml": ("Mistral-7B-Instruct-v0.2", 7_241_732_096),
    "llama3-8b.yaml": ("Meta-Llama-3-8B-Instruct", 8_030_261_248),
}


def test_the_recipes_are_there():
    assert {"demo.yaml", "tiny.yaml", "smollm2-lora.yaml", "llm2vec.yaml", *CLUSTER} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_validates_and_names_existing_files(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths are relative to the repository root
    cfg = load_config(recipe)
    read_ds_config(cfg.train.ds_config)  # exists, valid JSON, ZeRO stage 3
    if cfg.model.gguf:  # a pretrained GGUF the set-up installs
        locate(cfg.model.gguf)
    if cfg.model.tiny is not None:
        corpus = Path(cfg.model.tiny.tokenizer_corpus)
        if not corpus.is_relative_to(".."):  # study v1's corpus lay outside the repository
            assert corpus.exists(), corpus
    else:  # a real backbone: `t2t plan` must size it before the weights are downloaded
        assert cfg.model.arch_config and Path(cfg.model.arch_config).is_file()
    load_arch(cfg.model)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_is_a_stage_list(recipe, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(recipe)
    assert "stages:" in recipe.read_text()
    for key in re.findall(r"--set (\S+?)=", recipe.read_text()):  # what a comment tells the reader to override
        check_old_layout({}, f"{key}=1")
    assert cfg.stages and all(s.start == "base" or s.start in cfg.stage_names for s in cfg.stages)


@pytest.mark.parametrize("name", sorted(CLUSTER))
def test_cluster_recipe_is_the_reference_setup(name, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "recipes" / name)
    backbone, n_params = CLUSTER[name]
    m, t = cfg.model, cfg.train
    assert m.path == f"models/{backbone}" and m.tiny is None
    assert load_arch(ModelConfig(path="", arch_config=m.arch_config)).n_params == n_params
    assert (m.max_length, m.dtype, m.pooling, m.template, m.attention) == (128, "bfloat16", "last", PROMPT_EOL,
                                                                         "causal")
    assert (t.lora, t.train_embeddings, t.weight_decay, t.grad_clip) == (None, False, 0.0, 1.0)
    assert cfg.stage_names == ["stage1", "stage2"]
    s1, s2 = cfg.stages
    assert (s1.start, s2.start) == ("base", "stage1")
    assert (s1.objective.name, s2.objective.name) == ("t2t", "t2t")
    assert (s1.lr, s2.lr) == (5e-5, 5e-5)
    assert (s1.steps, s2.steps) == (10_000, 1_000)
    assert (s1.schedule, s2.schedule) == ("constant", "constant")
    assert s1.targets == DataDrivenTargets(weighting="uniform", max_target_tokens=128)  # stage 1 reads data.corpus
    assert cfg.data.corpus == "data/wikipedia/passages.jsonl.gz" and cfg.data.max_texts == 0
    assert s2.targets == ModelDerivedTargets(corpus="data/wikipedia/wiki1m_for_simcse.txt", tau=1e-5, delta=1e-6,
                                             top_k=64)
    assert cfg.eval.benchmark == "MTEB(eng, v2)"
    ds = json.loads(Path(t.ds_config).read_text())
    assert ds["bf16"]["enabled"] is True and read_ds_config(t.ds_config).param_bytes == 2
    assert not read_ds_config(t.ds_config).offload_optimizer  # 7-8B full training fits without offload
    assert cfg.targets.gpus_per_worker == 1.0 and cfg.eval.gpus_per_worker == 1.0
