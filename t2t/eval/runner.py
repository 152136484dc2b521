"""The evaluation driver: resolve models and tasks, skip what is cached, dispatch the rest, write the tables.

    from t2t.eval import run_eval
    table = run_eval(["runs/demo/stage2/model"], tasks=["STSBenchmark", "SciFact"], workers=2)

A model directory is an exported stage (`<run_dir>/stage<N>/model`, e.g. runs/demo/stage2/model), the untrained
start (`<run_dir>/base_export`), a sentence-transformers directory or a TF-IDF baseline (see models.py).

Work is one (model, task) pair. Pairs whose mteb result JSON is already in `<out_dir>/results`
(same model name and content revision, same dataset revision, all splits present) are not run
again. The rest go, per model, largest task first, to `workers` workers that each load a model
once and pull the next pair when they finish one: a pool of Ray actors when `workers > 1`, when a
cluster is named (`ray_address`, or RAY_ADDRESS as `ray job submit` sets it) or when the caller is
already connected to Ray (see `t2t.jobs.session`: without a named cluster a private local Ray is
started); otherwise one worker in this process. `workers=0` chooses (`automatic_workers`): this
process on one machine, where Ray's start-up was measured not to pay, one worker per GPU or CPU on a
cluster. A task that fails (data unreachable offline, NaN embeddings, a worker that died twice) is
recorded with its error and the others still finish.
Only the driver writes the cache, each result as soon as it arrives, so an interrupted run keeps
everything finished so far.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from t2t.errors import UserError
from t2t.eval.models import ModelSpec, describe_model, load_encoder, model_meta
from t2t.eval.report import build_table, write_reports
from t2t.eval.tasks import LOCAL_TASKS, LocalTaskMixin, local_task
from t2t.identity import EmbeddingIdentity
from t2t.dtypes import usable_dtype
from t2t.jobs.session import automatic_stays_here

log = logging.getLogger(__name__)

# Environment a Ray worker must share with the driver (offline mode above all).
PROPAGATED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                  "HF_HOME", "HF_DATASETS_CACHE")


@dataclass(frozen=True)
class TaskSpec:
    """A task by name, rebuilt inside each worker (task objects with loaded data never travel)."""

    name: str
    source: str  # "local", "mteb" (an official task) or "benchmark"
    benchmark: str = ""
    data_dir: str | None = None
    max_samples: int = 0


def build_task(spec: TaskSpec):
    if spec.source == "local":
        return local_task(spec.name, spec.data_dir, spec.max_samples)
    import mteb

    if spec.source == "benchmark":
        task = next(t for t in mteb.get_benchmark(spec.benchmark).tasks if t.metadata.name == spec.name)
        return copy.deepcopy(task)  # the benchmark's own objects stay unloaded and unfiltered
    return mteb.get_task(spec.name)


def resolve_tasks(names: list[str] | None, benchmark: str = "", data_dir: str | None = None,
                  max_samples: int = 0) -> list[TaskSpec]:
    """Task specs for a benchmark, or for names (local tasks first, then official mteb tasks)."""
    import mteb

    if benchmark:
        try:
            bench = mteb.get_benchmark(benchmark)
        except KeyError as e:
            names_ = ", ".join(b.name for b in mteb.get_benchmarks())
            raise UserError(f"unknown benchmark {benchmark!r} ({e.args[0]}); available: {names_}") from None
        if names:
            log.info("benchmark %s replaces the task list %s", benchmark, names)
        return [TaskSpec(t.metadata.name, "benchmark", benchmark=benchmark) for t in bench.tasks]
    names = list(names or LOCAL_TASKS)
    specs, unknown = [], []
    for name in dict.fromkeys(names):
        if name in LOCAL_TASKS:
            local_dir = str(data_dir) if data_dir else None
            specs.append(TaskSpec(name, "local", data_dir=local_dir, max_samples=max_samples))
            continue
        try:
            mteb.get_task(name)
        except KeyError as e:
            unknown.append(f"{name!r} ({e.args[0]})")
            continue
        specs.append(TaskSpec(name, "mteb"))
    if unknown:
        raise UserError(f"unknown task {', '.join(unknown)}; local tasks: {', '.join(LOCAL_TASKS)}; "
                        "any official mteb task name also works where its data can be loaded")
    return specs


def task_cost(task) -> int:
    """How much text a task encodes (bytes or characters), to hand out the largest tasks first."""
    if isinstance(task, LocalTaskMixin):
        return task.cost()
    try:
        stats = task.metadata.descriptive_stats or {}
    except Exception:  # a task without shipped statistics is simply scheduled last
        return 0
    return sum(int(s.get("number_of_characters") or 100 * s.get("num_samples", 0) or 0)
               for s in stats.values() if isinstance(s, dict))


def _outcome(model: ModelSpec, task: TaskSpec, *, result=None, meta=None, error: str | None = None,
             seconds: float = 0.0) -> dict:
    """What a worker hands back for one pair: the TaskResult (and the model's meta) or the error."""
    return {"model": model.name, "task": task.name, "result": result, "meta": meta, "error": error, "seconds": seconds}


class EvalWorker:
    """Evaluates (model, task) pairs with mteb, loading each model once; in-process or as a Ray actor."""

    def __init__(self, batch_size: int, threads: int = 0, device: str | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.device = device
        self.spec: ModelSpec | None = None
        self.encoder = None

    def run(self, model: ModelSpec, task_spec: TaskSpec) -> dict:
        import mteb

        start = time.monotonic()
        result = error = task = None
        try:
            if self.spec != model:
                self.encoder, self.spec = None, None
                self.encoder = load_encoder(model, self.device)
                self.spec = model
            task = build_task(task_spec)
            try:
                task.load_data()
            except Exception as e:
                raise RuntimeError(f"data for task {task_spec.name} could not be loaded: "
                                   f"{type(e).__name__}: {e}") from e
            # numpy/scipy's BLAS threads spin against torch's own (a Banking77 run measured 217 s with them,
            # 6 s without); the classifiers and metrics mteb fits are small, one BLAS thread is plenty.
            with threadpool_limits(limits=1, user_api="blas"):
                evaluated = mteb.evaluate(self.encoder, task, cache=None, raise_error=True, co2_tracker=False,
                                          show_progress_bar=False, overwrite_strategy="always",
                                          encode_kwargs={"batch_size": self.batch_size, "show_progress_bar": False})
            result = evaluated.task_results[0]
        except Exception as e:
            log.warning("task %s failed on model %s:\n%s", task_spec.name, model.name, traceback.format_exc())
            error = f"{type(e).__name__}: {e}"
        finally:
            if task is not None and task.data_loaded:
                task.unload_data()
        meta = self.encoder.mteb_model_meta if self.encoder is not None else None
        return _outcome(model, task_spec, result=result, meta=meta, error=error, seconds=time.monotonic() - start)


def _use_ray(workers: int, ray_address: str | None) -> bool:
    """Ray for several workers, a named cluster, or a caller already connected to Ray; else this process."""
    ray = sys.modules.get("ray")
    connected = ray is not None and ray.is_initialized()
    return workers != 1 or bool(ray_address) or bool(os.environ.get("RAY_ADDRESS")) or connected


def automatic_workers(ray_address: str | None, gpus_per_worker: float) -> int:
    """`workers: 0`: one worker in this process on a single machine, else one Ray worker per GPU (or CPU) of the
    cluster.

    On one machine a Ray pool costs its start-up and a model load per worker and model. On 2 cores that was 12-70 s
    more than one worker in this process with both cores at every size measured, up to the demo's whole evaluation
    (bench/BENCHMARKS.md, `bench_smollm2.py --only evalpath`): Ray did not pay there, so it is used where a cluster
    is named (`--ray-address`, RAY_ADDRESS) or the workers ask for GPUs. `workers: N` chooses a local pool."""
    if automatic_stays_here(ray_address, gpus_per_worker):
        log.info("eval.workers 0 (automatic): one worker in this process (no Ray cluster named; on one machine Ray's "
                 "start-up did not pay for itself, bench/BENCHMARKS.md)")
        return 1
    return 0  # decided once Ray is up: `_with_ray` asks the cluster


def _in_process(todo, batch_size: int):
    worker = EvalWorker(batch_size)
    for model, task in todo:
        yield worker.run(model, task)


def _with_ray(todo, workers: int, batch_size: int, ray_address: str | None, gpus_per_worker: float,
              cpus_per_worker: int):
    """Run the pairs on a Ray `ActorPool`: an actor takes the next pair when it finishes one, outcomes come back as
    they finish. Ray restarts a dead actor and retries its pair once; an actor that dies again fails that pair
    alone and leaves the pool, and when no actor is left the pairs not yet run fail with that reason."""
    import ray
    from ray.util import ActorPool

    from t2t.jobs.session import ray_session

    with ray_session(ray_address, num_cpus=None):  # a local Ray gets all the machine's CPUs
        if workers == 0:  # automatic: one per GPU the workers ask for, else one per CPU of the cluster
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker > 0 else 0
            workers = max(1, gpus or int(resources.get("CPU", 1)))
            log.info("eval.workers 0 (automatic): %d Ray worker(s), one per %s of the cluster", workers,
                     "GPU" if gpus else "CPU")
        cpus = cpus_per_worker or max(1, int(ray.cluster_resources().get("CPU", 1) // workers))
        env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
        actor_cls = ray.remote(EvalWorker).options(
            # one restart per worker; unbounded task retries wait for it (see t2t.jobs.target_workers.ray_pool)
            num_cpus=cpus, num_gpus=gpus_per_worker, max_restarts=1, max_task_retries=-1,
            runtime_env={"env_vars": env} if env else None)
        actors = [actor_cls.remote(batch_size, threads=cpus) for _ in range(min(workers, len(todo)))]
        try:
            pool, running = ActorPool(actors), {}  # running: ObjectRef -> the pair an actor is working on

            def run(actor, pair):
                ref = actor.run.remote(*pair)
                running[ref] = pair
                return ref

            for pair in todo:
                pool.submit(run, pair)
            done = set()
            while pool.has_next():
                try:
                    outcome = pool.get_next_unordered()
                    ref = next(r for r, (m, t) in running.items()
                               if (m.name, t.name) == (outcome["model"], outcome["task"]))
                except ray.exceptions.RayError as e:
                    ref = _failed_ref(running, e)
                    outcome = _outcome(*running[ref], error=f"Ray worker failed: {type(e).__name__}: {e}")
                model, task = running.pop(ref)
                done.add((model.name, task.name))
                yield outcome
            # every actor died: ActorPool keeps the rest unsubmitted; fail them rather than wait forever
            for model, task in todo:
                if (model.name, task.name) not in done:
                    yield _outcome(model, task, error="no Ray worker left alive to run this task")
        finally:
            for actor in actors:
                ray.kill(actor)


def _failed_ref(running: dict, error) -> object:
    """The pair's ObjectRef whose failure `ActorPool.get_next_unordered` just raised (the pool does not say which):
    a finished one of `running` that fails with the same error. Equal errors are interchangeable."""
    import ray

    finished, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
    for ref in finished:
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayError as e:
            if type(e) is type(error) and str(e) == str(error):
                return ref
    raise RuntimeError(f"no running pair failed with the error ActorPool raised: {error}")


def load_cached(cache, meta, task):
    """The cached TaskResult of (model, task) if complete and made from the same data, else None."""
    from mteb.results import TaskResult

    path = cache.get_task_result_path(task.metadata.name, meta)
    if not path.is_file():
        return None
    try:
        result = TaskResult.from_disk(path)
    except Exception as e:  # e.g. a write cut short by a crash: run the task again
        log.warning("ignoring unreadable cached result %s (%s); the task runs again", path, e)
        return None
    if not result.is_mergeable(task) or result.get_missing_evaluations(task):
        return None
    return result


def main_score(result, task) -> float:
    """Mean main score over the task's evaluation splits and subsets, in points (x100) as MTEB reports it."""
    values = [entry["main_score"] for split in task.eval_splits for entry in result.scores.get(split, [])
              if entry.get("hf_subset", "default") in task.hf_subsets]
    if not values:
        raise ValueError(f"result of {task.metadata.name} has no scores for splits {list(task.eval_splits)}")
    return 100.0 * sum(values) / len(values)


def _save(cache, result, meta, task, batch_size: int) -> float:
    """Save a finished result in mteb's cache and return its main score as read back from disk.

    mteb rounds scores when it saves them, so reading back makes a rerun from the cache print the same numbers.
    """
    cache.save_to_cache(result, meta, encode_kwargs={"batch_size": batch_size})
    saved = load_cached(cache, meta, task)
    if saved is None:
        raise RuntimeError(f"the saved result {cache.get_task_result_path(task.metadata.name, meta)} "
                           "could not be read back")
    return main_score(saved, task)


def _unique_names(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Two directories with the same display name get their revision appended, so table columns stay distinct."""
    from dataclasses import replace

    counts: dict[str, int] = {}
    for s in specs:
        counts[s.name] = counts.get(s.name, 0) + 1
    return [replace(s, name=f"{s.name}@{s.revision[:8]}") if counts[s.name] > 1 else s for s in specs]


def run_eval(model_dirs: list[str], tasks: list[str] | None = None, benchmark: str = "", workers: int = 1,
             out_dir: str = "runs/eval", batch_size: int = 64, ray_address: str | None = None,
             names: list[str] | None = None, *, gpus_per_worker: float = 0.0, cpus_per_worker: int = 0,
             max_samples: int = 0, data_dir: str | None = None, dtype: str = "float32",
             settings: EmbeddingIdentity | None = None) -> dict:
    """Evaluate each model directory on the tasks (default: the six local ones) and write the tables.

    Writes mteb's per-task JSON under `<out_dir>/results` (reused on rerun) and `results.md`,
    `results.json`, `scores.png` in `out_dir`; returns the table (see `t2t.eval.report.build_table`).
    `max_samples` caps every local task at a seeded sample of that many rows per split (smoke tests;
    cached apart from full runs); `data_dir` replaces `data/eval` for the local tasks. t2t models encode in
    `dtype` (bfloat16 where the hardware has it, see `t2t.dtypes.usable_dtype`). `settings` (a recipe's model
    settings, `EmbeddingIdentity.of(cfg.model)`) embed the plain Hugging Face directories among them.
    """
    from mteb.cache import ResultCache

    if not model_dirs:
        raise UserError("no model directory given")
    if names and len(names) != len(model_dirs):
        raise UserError(f"got {len(names)} names for {len(model_dirs)} model directories")
    if workers < 0 or batch_size < 1 or max_samples < 0:
        raise UserError(f"workers must be >= 0 (0 = automatic), batch_size >= 1 and max_samples >= 0 "
                        f"(got {workers}, {batch_size}, {max_samples})")
    if workers == 0:
        workers = automatic_workers(ray_address, gpus_per_worker)
    task_specs = resolve_tasks(tasks, benchmark, data_dir, max_samples)
    dtype = usable_dtype(dtype)
    models = _unique_names([describe_model(d, n, max_samples, dtype, settings)
                            for d, n in zip(model_dirs, names or [None] * len(model_dirs))])
    task_objs = {t.name: build_task(t) for t in task_specs}
    out = Path(out_dir)
    cache = ResultCache(out)

    scores, errors, status, seconds = ({m.name: {} for m in models} for _ in range(4))
    todo = []
    for model in models:
        meta = model_meta(model)
        pending = []
        for spec in task_specs:
            cached = load_cached(cache, meta, task_objs[spec.name])
            if cached is None:
                pending.append(spec)
            else:
                scores[model.name][spec.name] = main_score(cached, task_objs[spec.name])
                status[model.name][spec.name] = "cached"
        todo += [(model, spec) for spec in sorted(pending, key=lambda s: -task_cost(task_objs[s.name]))]
    by_name = {m.name: m for m in models}

    total = len(models) * len(task_specs)
    log.info("%d of %d (model, task) pairs cached in %s; running %d with %s worker(s)",
             total - len(todo), total, out / "results", len(todo), workers or "the cluster's")
    outcomes = (_with_ray(todo, workers, batch_size, ray_address, gpus_per_worker, cpus_per_worker)
                if _use_ray(workers, ray_address) else _in_process(todo, batch_size))
    with tqdm(total=total, initial=total - len(todo), desc="eval tasks", unit="task") as bar:
        for o in outcomes:
            name, task, error = o["model"], o["task"], o["error"]
            seconds[name][task] = round(o["seconds"], 2)
            if error is None:
                try:
                    meta = o["meta"] or model_meta(by_name[name])
                    scores[name][task] = _save(cache, o["result"], meta, task_objs[task], batch_size)
                except (OSError, RuntimeError, ValueError, UserError) as e:
                    error = f"{type(e).__name__}: {e}"
            status[name][task] = "ran" if error is None else "failed"
            if error is not None:
                errors[name][task] = error
                log.error("%s on %s failed: %s", task, name, error)
            bar.set_postfix_str(f"{name}/{task}: {status[name][task]}")
            bar.update(1)

    table = build_table(models, [task_objs[t.name] for t in task_specs], scores, status, errors, seconds,
                        task_sources={t.name: t.source for t in task_specs}, max_samples=max_samples)
    write_reports(table, out)
    return table
