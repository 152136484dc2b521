"""What runs inside Ray workers for `t2t targets`: stage-1 tasks and the stage-2 model actor.

Workers write their shards themselves (atomically, see `t2t.data.shards.write_shard`) and return
the shard's ledger entry: index, samples, the file's byte size and sha256 (hashed as written, for
the manifest), empty targets, texts truncated, the worker's CPU and wall seconds on it, and for
stage 2 the dropped mass (max and sum) and texts cut by top_k. A retried chunk rewrites identical
bytes.

Stage-1 tasks are stateless, but each worker process keeps its `Stage1Builder` (tokenizer and
vocabulary mask) between tasks, since Ray reuses worker processes. A stage-2 actor loads the
frozen model once in `__init__`; Ray re-runs `__init__` when it restarts a dead actor, and no
result depends on state kept between calls, so a retried call returns what the first would have.
The driver is `t2t.precompute`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import ray

from t2t.config import ModelConfig, TargetsConfig
from t2t.data.shards import shard_name, write_shard_entry
from t2t.targets.sparse import TargetBatch
from t2t.targets.stage1 import Stage1Builder
from t2t.targets.stage2 import Stage2Builder

Fault = tuple[str, int, str] | None
"""(pass name, chunk index, marker file): die once on the first attempt at that chunk (tests only)."""


def maybe_die(fault: Fault, pass_name: str, index: int) -> None:
    """Exit this worker process abruptly if `fault` names this chunk and has not fired yet."""
    if fault is None or (fault[0], fault[1]) != (pass_name, index):
        return
    marker = Path(fault[2])
    if marker.exists():
        return
    marker.write_text(f"worker {os.getpid()} died on {pass_name} chunk {index}\n")
    os._exit(1)  # no cleanup, no exception: what a killed or OOM-ed worker looks like to Ray


_stage1_cache: dict[tuple, Stage1Builder] = {}


def _stage1_builder(model_dir: str, targets: TargetsConfig, vocab_size: int) -> Stage1Builder:
    from t2t.model import load_tokenizer

    key = (model_dir, repr(targets), vocab_size)
    if key not in _stage1_cache:
        _stage1_cache.clear()
        _stage1_cache[key] = Stage1Builder(load_tokenizer(model_dir), targets, vocab_size)
    return _stage1_cache[key]


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def write_targets(out: str, index: int, keys: list[str], texts: list[str], batch: TargetBatch,
                  started: tuple[float, float], **counts) -> dict:
    """Write shard `index` of `out`; returns its ledger entry (`started`: `clocks()` when the chunk began)."""
    shard = write_shard_entry(Path(out) / shard_name(index), batch.samples(keys, texts))
    cpu, wall = (now - then for now, then in zip(clocks(), started))
    return dict(index=index, samples=shard["samples"], bytes=shard["bytes"], sha256=shard["sha256"],
                empty=batch.empty_count, cpu_s=round(cpu, 3), wall_s=round(wall, 3), **counts)


@ray.remote
def stage1_shard(model_dir: str, targets: TargetsConfig, vocab_size: int, index: int, keys: list[str],
                 texts: list[str], idf: np.ndarray | None, out: str, fault: Fault) -> dict:
    """Compute and write the stage-1 shard of one chunk; returns its ledger entry."""
    maybe_die(fault, "shards", index)
    started = clocks()
    batch, truncated = _stage1_builder(model_dir, targets, vocab_size).targets(texts, idf)
    return write_targets(out, index, keys, texts, batch, started, truncated=truncated)


@ray.remote
def stage1_document_frequency(model_dir: str, targets: TargetsConfig, vocab_size: int, index: int,
                              texts: list[str], fault: Fault) -> tuple[np.ndarray, int]:
    """(document frequency over the vocabulary, texts counted) of one chunk, for IDF weighting."""
    maybe_die(fault, "idf", index)
    return _stage1_builder(model_dir, targets, vocab_size).document_frequency(texts)


@ray.remote
class Stage2Worker:
    """Holds the frozen model; computes background sums (pass 1) and sparse targets (pass 2) per chunk."""

    def __init__(self, model: ModelConfig, targets: TargetsConfig):
        import torch

        from t2t.model import from_config

        embedder = from_config(model)
        if ray.get_gpu_ids() and torch.cuda.is_available():
            embedder = embedder.to("cuda")
        self.builder = Stage2Builder(embedder, targets)

    def background(self, index: int, texts: list[str], fault: Fault) -> tuple[np.ndarray, int]:
        maybe_die(fault, "background", index)
        total, count, _ = self.builder.background_sum(texts)
        return total, count

    def shard(self, index: int, keys: list[str], texts: list[str], theta: np.ndarray, out: str,
              fault: Fault) -> dict:
        maybe_die(fault, "shards", index)
        started = clocks()
        batch, s = self.builder.targets(texts, theta)
        return write_targets(out, index, keys, texts, batch, started, truncated=s.truncated,
                             dropped_max=s.dropped_max, dropped_sum=s.dropped_sum, cut_by_top_k=s.cut_by_top_k)
