"""LLM2Vec's unsupervised recipe (recipes/llm2vec.yaml) end to end through the real `t2t pipeline`, on a tiny model:
MNTP with LoRA (bidirectional) → the adapters merged at export → SimCSE with new adapters on the merged model →
export → eval of the start and both stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import CORPUS

REPO = Path(__file__).resolve().parents[1]


def tiny_llm2vec(tmp: Path) -> Path:
    """recipes/llm2vec.yaml with its stage list, LoRA and objective settings kept, on a tiny random backbone."""
    recipe = yaml.safe_load((REPO / "recipes" / "llm2vec.yaml").read_text())
    tiny = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())["model"]["tiny"]
    tiny.update(tokenizer_corpus=str(CORPUS), vocab_size=1000, tokenizer_train_texts=2000, hidden_size=64,
                num_layers=2, num_heads=4, intermediate_size=128)
    recipe["model"].update(path="runs/llm2vec/base", gguf="", arch_config="", tiny=tiny, dtype="float32")
    recipe["data"].update(corpus=str(CORPUS), max_texts=200, loader_workers=0)
    recipe["targets"].update(shard_size=100, workers=0)
    recipe["train"].update(ds_config="ds_configs/zero3_cpu.json", micro_batch_size=8, nproc=1)
    recipe["eval"].update(tasks=["BIOSSES"], workers=1, dtype="float32")
    for stage in recipe["stages"]:
        stage.update(steps=3, lr=1.0e-3)
    path = tmp / "llm2vec.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_llm2vec_recipe_runs_through_the_pipeline(tmp_path):
    recipe = tiny_llm2vec(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "t2t.cli", "pipeline", "--config", str(recipe)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    steps = ["base", "mntp:targets", "mntp:train", "simcse:targets", "simcse:train", "eval", "report"]
    for i, step in enumerate(steps, start=1):
        assert f"[{i}/7] {step}: done" in out, step

    run = tmp_path / "runs" / "llm2vec"
    logs = {name: (run / "logs" / f"{name}-train.log").read_text() for name in ("mntp", "simcse")}
    assert "simcse: attention dropout 0.3" in logs["simcse"]
    for name in ("mntp", "simcse"):
        info = json.loads((run / name / "model" / "t2t_train.json").read_text())
        assert info["stage"] == name and info["lora"] is True  # adapters trained, merged into the export
        exported = json.loads((run / name / "model" / "t2t_config.json").read_text())
        assert exported["attention"] == "bidirectional" and exported["pooling"] == "mean"
        assert not list((run / name / "model").glob("adapter_*"))  # a plain model directory, no adapters left
        losses = [json.loads(line)["loss"] for line in (run / name / "metrics.jsonl").open()]
        assert len(losses) == 3 and np.isfinite(losses).all()
    # SimCSE started from the merged MNTP export.
    assert str(Path("runs/llm2vec/mntp/model")) in logs["simcse"]
    results = (run / "eval" / "results.json").read_text()
    report = (run / "report.md").read_text()
    for model in ("llm2vec-M0-start", "llm2vec-M1-mntp", "llm2vec-M2-simcse"):
        assert model in results and model in report, model
    assert "| mntp | base | mntp | — (reads tokens only) |" in report  # its targets were computed, not read
