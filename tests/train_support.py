"""Helpers for the training tests: small target shards for a tiny model, recipes, multi-rank launches.

Targets are the text's own unique token ids, uniform (stage-1-like, so a model can learn them);
every 7th text gets an empty target, which the loss must leave out of the mean.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "corpus" / "wiki_sentences_60k.txt.gz"


def corpus_lines(n: int, skip: int = 0) -> list[str]:
    out = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= skip and line.strip():
                out.append(line.strip())
            if len(out) >= n:
                break
    return out


def write_stage_shards(model_dir: Path, out_dir: Path, n_shards: int = 4, per_shard: int = 24,
                       stage: str = "stage1") -> Path:
    """Shards + a complete manifest for stage `stage` in `out_dir` that fit the tiny model in `model_dir` (with
    each shard's sample count, byte size and sha256, as `t2t targets` records them)."""
    from t2t.data.shards import shard_name, write_shard_entry
    from t2t.data.manifest import MANIFEST_FORMAT, model_vocab_size, write_manifest
    from t2t.model import load_tokenizer, tokenizer_fingerprint

    tok = load_tokenizer(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = corpus_lines(n_shards * per_shard)
    special = set(tok.all_special_ids)
    shards, empty = [], 0
    for s in range(n_shards):
        samples = []
        for j, text in enumerate(texts[s * per_shard:(s + 1) * per_shard]):
            index = s * per_shard + j
            ids = np.array(sorted({i for i in tok(text)["input_ids"] if i not in special}), dtype=np.int32)
            if index % 7 == 3:
                ids = ids[:0]
                empty += 1
            w = np.full(len(ids), 1.0 / max(len(ids), 1), dtype=np.float16)
            samples.append({"__key__": f"k{index:06d}", "txt": text, "ids.npy": ids, "w.npy": w})
        shards.append(write_shard_entry(out_dir / shard_name(s), samples))
    manifest = {
        "format": MANIFEST_FORMAT, "code_version": "test", "complete": True, "stage": stage,
        "params": {"vocab_size": model_vocab_size(model_dir),
                   "tokenizer": {"fingerprint": tokenizer_fingerprint(tok), "vocab_size": len(tok)},
                   "embedding": None},
        "shards": shards, "samples": n_shards * per_shard, "empty_targets": empty,
    }
    write_manifest(out_dir, manifest)
    return out_dir


def write_recipe(path: Path, model_dir: Path, shards_root: Path, run_dir: Path, **train) -> Path:
    """A recipe training the tiny model on `shards_root/stage1` with DeepSpeed's CPU config: Text2Token's two
    stages, `stage1` taking its settings from `stage1=dict(...)`, the other keywords going to `train`."""
    stage1 = dict(steps=6, lr=3.0e-3, schedule="constant")
    stage1.update(train.pop("stage1", {}))
    recipe = {
        "name": "test", "run_dir": str(run_dir), "seed": 0,
        "model": {"path": str(model_dir), "pooling": "mean", "max_length": 32},
        "data": {"shards_dir": str(shards_root), "shuffle_buffer": 16, "loader_workers": 0},
        "train": {"ds_config": str(REPO / "ds_configs" / "zero3_cpu.json"), "micro_batch_size": 4,
                  "grad_accum_steps": 1, "save_every": 2, "keep_checkpoints": 2, **train},
        "stages": [dict(name="stage1", start="base", targets={"kind": "data-driven"}, **stage1),
                   dict(name="stage2", start="stage1", targets={"kind": "model-derived"}, steps=50)],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def rank_env(**extra) -> dict:
    """Environment for launched ranks: offline, CPU DeepSpeed, one thread each (2 cores shared)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def torchrun(nproc: int, args: list[str], log: Path, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """`nproc` ranks of `python ...args` started as `t2t train` starts them (`rank_launcher`: `torchrun --standalone`,
    or for one rank the interpreter itself, which saves torchrun's own start-up); output to `log`; raises with the
    log on failure."""
    from t2t.train.launch import rank_launcher

    env = rank_env()
    cmd = rank_launcher(nproc, env) + list(args)
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=REPO, **popen)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    return done


def metrics(run_dir: Path, stage: str = "stage1") -> list[dict]:
    path = run_dir / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
