"""The driver of target precomputation: a corpus in, a stage's WebDataset target shards out (docs/DESIGN.md §1, §3).

    t2t targets --config recipes/demo.yaml --stage stage1              # here (workers: 0), or a local Ray pool
    t2t targets --config recipes/demo.yaml --stage stage2 --ray-address 10.0.0.1:6379
    RAY_ADDRESS=10.0.0.1:6379 t2t targets --config R --stage stage2     # the same, through the environment
    launchers/submit_targets.sh recipes/demo.yaml stage1                # `ray job submit` to a running cluster

The corpus is cut into chunks of `targets.shard_size` texts in a fixed order; chunk i becomes shard
`t2t-%06d.tar` % i. A pool of `targets.workers` Ray actors (`t2t.jobs.target_workers`; with `workers: 0` on
one machine, one worker in this process instead: `targets_here`), each holding the stage's target kind's
builder (the tokenizer, or the frozen start model on its own GPU), first runs the kind's corpus passes (IDF,
background θ: per-chunk sums that the driver adds up in chunk order and checkpoints), then writes the shards
itself, atomically, so writing scales with the workers (the shard directory must be on storage the workers share,
as the model and corpus are on a cluster). The driver only reads the corpus and keeps the
books: each finished shard goes into `ledger.jsonl`, so a rerun skips finished shards and a crash never leaves a
partial one. Which kind computes what is the kind's business (`t2t.targets.kinds`); the manifest is
`t2t.data.manifest`'s.

One job at a time writes a shard directory: the driver holds an exclusive `flock` on `<out>/targets.lock` for
the whole job and writes its PID and host into it; a second job fails at once naming them. The kernel drops the
lock when the driver exits, however it dies, so a stale lock file blocks nothing. (On NFS, Linux maps flock onto
NFS byte-range locks, which other clients see.) Workers that die are restarted by Ray and their chunk retried
(`targets.max_retries`).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from t2t.config import Config
from t2t.data.corpus import CorpusStats, iter_texts
from t2t.data.files import atomic_path, exclusive_lock
from t2t.data.ledger import Ledger
from t2t.data.manifest import LEDGER, LOCK_FILE, write_manifest
from t2t.data.shards import shard_name
from t2t.data.target_job import (TargetJob, array_intact, finish_manifest, partial_file, prepare_out,
                                 restart_shards, start_manifest, write_array)
from t2t.errors import UserError
from t2t.jobs.session import automatic_stays_here, ray_session
from t2t.jobs.target_workers import LocalPool, ray_pool
from t2t.targets.kinds import target_kind

log = logging.getLogger(__name__)


def run_targets(cfg: Config, stage: str, corpus: str | None = None, out: str | None = None,
                ray_address: str | None = None, overwrite: bool = False) -> dict:
    """Precompute stage `stage`'s targets of `corpus` into shards under `out`; returns the manifest."""
    from t2t.model.io import resolve_model_dir
    from t2t.run_paths import for_stage

    resolve_model_dir(for_stage(cfg, stage).model)  # a tiny or GGUF backbone is built or converted once, here
    p = TargetJob.resolve(cfg, stage, corpus, out)
    if next(iter_texts(p.corpus), None) is None:
        raise UserError(f"corpus {p.corpus} holds no texts")
    p.out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(p.out / LOCK_FILE, f"shard directory {p.out}"):
        finished = prepare_out(p, overwrite)
        if finished is not None:
            log.info("%s already holds these %s targets (%d samples; %d shards match their recorded size "
                     "and sha256); nothing to do", p.out, stage, finished["samples"], len(finished["shards"]))
            return finished
        manifest = start_manifest(p)
        write_manifest(p.out, manifest)
        workers = cfg.targets.workers
        if targets_here(cfg, stage, ray_address):
            log.info("targets.workers 0 (automatic): one worker in this process (no Ray cluster named; on one "
                     "machine Ray's start-up did not pay for itself, bench/BENCHMARKS.md)")
            stats = _compute(p, manifest, Ledger(p.out / LEDGER), LocalPool(p))
        else:
            with ray_session(ray_address, workers or None):
                pool = ray_pool(p, workers or cluster_workers(worker_gpus(cfg, stage)))
                stats = _compute(p, manifest, Ledger(p.out / LEDGER), pool)
        return finish_manifest(p, manifest, stats)


def targets_here(cfg: Config, stage: str, ray_address: str | None) -> bool:
    """Whether stage `stage`'s target job computes in its own process: `targets.workers: 0` where
    `automatic_stays_here` says so; `workers: N` is a Ray pool of N. The one answer the job, the pipeline (which
    starts Ray for it otherwise) and a sweep (which leaves such a step no CPU of its own) all use."""
    return cfg.targets.workers == 0 and automatic_stays_here(ray_address, worker_gpus(cfg, stage))


def worker_gpus(cfg: Config, stage: str) -> float:
    """The GPUs each target worker of stage `stage` asks for: `targets.gpus_per_worker` for a kind that runs the
    model, none for one that only tokenizes."""
    runs_model = target_kind(cfg.stage(stage).targets.kind).runs_model
    return cfg.targets.gpus_per_worker if runs_model else 0.0


def cluster_workers(gpus_per_worker: float) -> int:
    """`targets.workers: 0` on a cluster: one actor per `gpus_per_worker` GPUs where they ask for GPUs, else one
    per CPU."""
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))


def _compute(p: TargetJob, manifest: dict, ledger: Ledger, pool) -> CorpusStats:
    """The kind's corpus passes (each skipped when its vector is on disk as recorded), then the shards, on `pool`
    (`t2t.jobs.target_workers`: Ray actors, or one worker in this process)."""
    arrays = {}
    for corpus_pass in p.kind.corpus_passes(p.spec):
        if not array_intact(p.out, manifest.get(corpus_pass.name)):
            total, texts = reduce_pass(corpus_pass.name, p, pool, lambda i, keys, chunk, name=corpus_pass.name:
                                       pool.submit("reduce", name, i, chunk))
            manifest[corpus_pass.name] = write_array(p.out, corpus_pass.file, corpus_pass.finish(total, texts), texts)
            restart_shards(p, manifest, ledger, corpus_pass.name)
        arrays[corpus_pass.name] = np.load(p.out / corpus_pass.file)
    arrays_ref = pool.put(arrays)
    out = str(p.out)
    return _shards_pass(p, ledger, pool, lambda i, keys, chunk: pool.submit("shard", i, keys, chunk, arrays_ref, out))


# --------------------------------------------------------------------------- passes over the corpus


def chunks(p: TargetJob, stats: CorpusStats) -> Iterator[tuple[int, list[str], list[str]]]:
    """(index, keys, texts) of each chunk of `shard_size` texts, in corpus order."""
    size = p.cfg.targets.shard_size
    keys: list[str] = []
    texts: list[str] = []
    index = 0
    for item in iter_texts(p.corpus, stats, p.max_texts):
        keys.append(item.key)
        texts.append(item.text)
        if len(texts) == size:
            yield index, keys, texts
            index, keys, texts = index + 1, [], []
    if texts:
        yield index, keys, texts


def run_pass(name: str, p: TargetJob, pool, submit: Callable, on_result: Callable, done: set[int],
             stats: CorpusStats, already: int = 0) -> None:
    """Run `submit(index, keys, texts)` (a worker call returning `(index, result)`) over every chunk not in `done`,
    through `pool`, at most one chunk per worker at a time: the driver reads the corpus only as fast as the
    workers take it. `on_result(index, result)` runs in the driver as each chunk finishes, in completion order,
    and returns the number of samples it accounts for (for the progress bar)."""
    bar = tqdm(desc=f"{p.stage} {name}", unit="sample", initial=already, dynamic_ncols=True)
    finished = len(done)

    def collect_one() -> None:
        nonlocal finished
        index, result = pool.get_next_unordered()
        bar.update(on_result(index, result))
        finished += 1
        bar.set_postfix(shards=finished)

    try:
        for index, keys, texts in chunks(p, stats):
            if index in done:
                continue
            while not pool.has_free():
                collect_one()
            submit(index, keys, texts)
        while pool.has_next():
            collect_one()
    finally:
        bar.close()


def _shards_pass(p: TargetJob, ledger: Ledger, pool, submit: Callable) -> CorpusStats:
    """The pass where workers write shards: those the ledger records and the disk holds are skipped; each
    finished one is recorded (with its counts, see `t2t.jobs.target_workers`) after the worker's rename."""
    done = {i for i in ledger.entries if (p.out / shard_name(i)).is_file()}

    def on_result(index: int, entry: dict) -> int:
        assert entry["index"] == index
        ledger.record(entry)
        return entry["samples"]

    stats = CorpusStats()
    run_pass("targets", p, pool, submit, on_result, done, stats,
             already=sum(ledger.entries[i]["samples"] for i in done))
    return stats


def reduce_pass(name: str, p: TargetJob, pool, submit: Callable) -> tuple[np.ndarray, int]:
    """Sum per-chunk (vector, count) results over the corpus in chunk order, whatever order the workers finish
    in: a float sum depends on its order, and θ (hence every model-derived target) must be the same bytes for the
    same corpus however many Ray workers computed it (one worker in this process computes with torch's threads, a
    Ray worker with one: the same θ to the 9th digit, not always the same bytes). The running sum over the finished
    prefix of chunks is checkpointed after each step (atomically), so a restarted job resumes the pass; chunks that
    finished ahead of an unfinished one wait in memory (one vector each) and are recomputed after a crash."""
    partial = p.out / partial_file(name)
    total, count, upto = None, 0, 0  # the sum over chunks [0, upto)
    if partial.is_file():
        with np.load(partial) as z:
            if "upto" in z.files:  # a partial of an older t2t (unordered sum) is not resumed
                total, count, upto = z["total"], int(z["count"]), int(z["upto"])
    ahead: dict[int, tuple[np.ndarray, int]] = {}

    def on_result(index: int, result: tuple[np.ndarray, int]) -> int:
        nonlocal total, count, upto
        ahead[index] = result
        if upto not in ahead:
            return result[1]
        while upto in ahead:
            part, n = ahead.pop(upto)
            total = part.astype(np.float64) if total is None else total + part
            count += n
            upto += 1
        with atomic_path(partial) as tmp, open(tmp, "wb") as f:
            np.savez(f, total=total, count=count, upto=upto)
        return result[1]

    run_pass(name, p, pool, submit, on_result, set(range(upto)), CorpusStats())
    assert not ahead, f"chunks {sorted(ahead)} finished but were never summed"
    return total, count

