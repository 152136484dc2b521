"""What computes a target job's chunks: Ray actors, or one worker in the driver's own process (the driver is
`t2t.jobs.targets`, which chooses).

Each worker builds its stage's target-kind builder once (`TargetKind.builder`: the tokenizer, or the frozen
start model on the GPU Ray gave it), then takes chunk after chunk: `reduce` returns a corpus pass's sum over a
chunk, `shard` computes the chunk's targets and writes the shard itself (atomically, see
`t2t.data.shards.write_shard_entry`), returning its ledger entry: index, samples, the file's byte size and sha256
(hashed as written, for the manifest), empty targets, the worker's CPU and wall seconds, and the kind's counts
(texts truncated; for model-derived targets the dropped mass and texts cut by top_k). Ray re-runs `__init__`
when it restarts a dead actor, and no result depends on state kept between calls, so a retried chunk returns
(and writes) what the first attempt would have.

Fault injection, for the worker-death tests only: with `T2T_FAULT_INJECT=PASS:INDEX:MARKER` in the driver's
environment, the worker that first takes chunk INDEX of PASS (`shards`, or a corpus pass: `background`, `idf`)
exits abruptly, once (MARKER records that it did). INDEX `*` is whatever chunk of PASS comes first, and a
`:hang` after MARKER makes the worker hang there instead of exiting (for a test that then kills its node). Set in
the environment of one node's `ray start` instead of the driver's, it reaches only that node's workers. It is
read here and nowhere else, and only Ray workers may die so: a worker in the driver's process refuses it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

import numpy as np

from t2t.data.shards import shard_name, write_shard_entry
from t2t.errors import UserError
from t2t.targets.kinds import target_kind

FAULT_ENV = "T2T_FAULT_INJECT"


class LocalPool:
    """One worker in this process, behind the part of Ray's `ActorPool` interface the driver uses: a chunk runs
    when it is submitted, and its result comes back next."""

    def __init__(self, p):
        if os.environ.get(FAULT_ENV):
            raise UserError(f"{FAULT_ENV} kills a Ray worker: set targets.workers to 1 or more to use it")
        self.worker = _new_worker(TargetWorker, p)
        self.results: deque = deque()

    def submit(self, method: str, *args) -> None:
        self.results.append(getattr(self.worker, method)(*args))

    def has_free(self) -> bool:
        return True

    def has_next(self) -> bool:
        return bool(self.results)

    def get_next_unordered(self):
        return self.results.popleft()

    def put(self, value):
        return value


def ray_pool(p, workers: int) -> "RayPool":
    """`workers` Ray actors of job `p`'s target kind (a `t2t.data.target_job.TargetJob`)."""
    import ray

    t = p.cfg.targets
    # Restarts bound the retries. Calls to a worker on a lost node fail at once until Ray declares the node dead
    # (its health checks: seconds), and each such failure would use up a bounded task retry before the worker is
    # restarted elsewhere; with unbounded task retries the chunk waits for the restarted worker instead.
    options = dict(num_cpus=1, num_gpus=t.gpus_per_worker if p.kind.runs_model else 0,
                   max_restarts=t.max_retries, max_task_retries=-1)
    if os.environ.get(FAULT_ENV):  # the tests' hook reaches the workers whatever Ray session they run in
        _fault(os.environ[FAULT_ENV])
        options["runtime_env"] = {"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}}
    actor = ray.remote(TargetWorker).options(**options)
    return RayPool([_new_worker(actor.remote, p) for _ in range(workers)])


class RayPool:
    """Ray actors in Ray's `ActorPool`: a chunk goes to whichever actor is free."""

    def __init__(self, actors: list):
        from ray.util import ActorPool

        self.pool = ActorPool(actors)

    def submit(self, method: str, *args) -> None:
        self.pool.submit(lambda actor, args: getattr(actor, method).remote(*args), args)

    def has_free(self) -> bool:
        return self.pool.has_free()

    def has_next(self) -> bool:
        return self.pool.has_next()

    def get_next_unordered(self):
        return self.pool.get_next_unordered()

    def put(self, value):
        import ray

        return ray.put(value)  # once in the object store, not once per chunk


def _new_worker(make, p):
    return make(p.kind.name, p.cfg.model, str(p.model_dir), p.spec, p.params["vocab_size"], p.cfg.targets.batch_size)


class TargetWorker:
    """One kind's builder, held for the whole job."""

    def __init__(self, kind: str, model_cfg, model_dir: str, spec, vocab_size: int, batch_size: int):
        kind = target_kind(kind)
        embedder = frozen_embedder(model_cfg) if kind.runs_model else None
        self.builder = kind.builder(model_dir, spec, vocab_size, batch_size, embedder)

    def reduce(self, pass_name: str, index: int, texts: list[str]) -> tuple[int, tuple[np.ndarray, int]]:
        """(index, (this chunk's sum for the corpus pass, texts counted))."""
        _maybe_die(pass_name, index)
        return index, self.builder.reduce(pass_name, texts)

    def shard(self, index: int, keys: list[str], texts: list[str], arrays: dict, out: str) -> tuple[int, dict]:
        """(index, ledger entry) of shard `index`, written to `out`."""
        _maybe_die("shards", index)
        started = _clocks()
        batch, counts = self.builder.targets(texts, arrays)
        shard = write_shard_entry(Path(out) / shard_name(index), batch.samples(keys, texts))
        cpu, wall = (now - then for now, then in zip(_clocks(), started))
        return index, dict(index=index, samples=shard["samples"], bytes=shard["bytes"], sha256=shard["sha256"],
                           empty=batch.empty_count, cpu_s=round(cpu, 3), wall_s=round(wall, 3), **counts)


def frozen_embedder(model_cfg):
    """The start model a kind that `runs_model` reads, onto the GPU Ray gave this worker, if any."""
    import sys

    import torch

    from t2t.model import from_config

    embedder = from_config(model_cfg)
    ray = sys.modules.get("ray")
    if torch.cuda.is_available() and ray is not None and ray.is_initialized() and ray.get_gpu_ids():
        embedder = embedder.to("cuda")
    return embedder


def _clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _fault(spec: str) -> tuple[str, int | None, str, bool]:
    """(pass, chunk index or None for any, marker file, hang instead of exiting)."""
    hang = spec.endswith(":hang")
    try:
        name, index, marker = spec.removesuffix(":hang").split(":", 2)
        return name, None if index == "*" else int(index), marker, hang
    except ValueError:
        raise UserError(f"{FAULT_ENV}={spec!r} must look like PASS:INDEX:MARKER_FILE[:hang]") from None


def _maybe_die(pass_name: str, index: int) -> None:
    """Exit this worker process abruptly (or hang) if the fault hook names this chunk and has not fired yet."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, at, marker, hang = _fault(spec)
    if name != pass_name or at not in (None, index) or Path(marker).exists():
        return
    Path(marker).write_text(f"worker {os.getpid()} on {os.uname().nodename} "
                            f"{'hung' if hang else 'died'} on {pass_name} chunk {index}\n")
    if hang:
        while True:
            time.sleep(60)  # until something kills it, or its node
    os._exit(1)  # no cleanup, no exception: what a killed or OOM-ed worker looks like to Ray
