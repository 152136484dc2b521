"""Ray driver for target precomputation: a corpus in, WebDataset target shards out (docs/DESIGN.md §1, §3).

    t2t targets --config recipes/demo.yaml --stage 1                 # local Ray, cfg.targets.workers CPUs
    t2t targets --config recipes/demo.yaml --stage 2 --ray-address 10.0.0.1:6379
    RAY_ADDRESS=10.0.0.1:6379 t2t targets --config R --stage 2       # the same, through the environment
    launchers/submit_targets.sh recipes/demo.yaml 1                  # `ray job submit` to a running cluster

The corpus is cut into chunks of `targets.shard_size` texts in a fixed order; chunk i becomes
shard `t2t-%06d.tar` % i. Workers compute the targets and write the shard atomically (so the
shard directory must be on storage the workers share, as the model and corpus are on a
cluster); the driver reads the corpus and appends each finished shard to `ledger.jsonl`, so a
rerun skips finished shards and a crash never leaves a partial one. Stage 1 runs as Ray CPU
tasks (IDF weighting adds a document-frequency pass first). Stage 2 runs as a pool of actors,
each loading the frozen model once (one per GPU on a cluster): pass 1 sums the logits of every
chunk into the background θ, pass 2 writes the targets. Pass-1 sums come back per chunk and
are checkpointed by the driver rather than accumulated inside a worker, so a worker that dies
loses nothing: its chunk is simply recomputed.

Each worker records its shard's byte size and sha256 (into the ledger, then the manifest); a
rerun checks every finished shard against them and recomputes, naming them, the ones that differ
(truncated, replaced, altered). One job at a time writes a shard directory: the driver holds an
exclusive `flock` on `<out>/targets.lock` for the whole job, and writes its PID and host into
it; a second job fails at once naming them. The kernel drops the lock when the driver exits,
however it dies, so a stale lock file blocks nothing. (On NFS, Linux maps flock onto NFS
byte-range locks, which other clients see.)

Workers that die are retried by Ray (`targets.max_retries`). For tests, the environment
variable T2T_FAULT_INJECT=PASS:INDEX:MARKER makes the worker that first takes chunk INDEX of
PASS (`shards`, `background` or `idf`) exit abruptly, once (MARKER records that it did).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

import t2t
from t2t.config import Config
from t2t.data.corpus import CorpusStats, corpus_files, iter_texts
from t2t.data.files import exclusive_lock, hash_into
from t2t.data.ledger import Ledger
from t2t.data.shards import (MANIFEST, MANIFEST_FORMAT, model_vocab_size, read_manifest, shard_name, shard_problem,
                             write_manifest)
from t2t.targets.stage1 import stopword_list, stopwords_hash
from t2t.targets.stage2 import EPSILON

log = logging.getLogger(__name__)

LEDGER = "ledger.jsonl"
LOCK_FILE = "targets.lock"
"""In the shard directory: `--overwrite` removes only the job's outputs (`_outputs`), never it or the directory."""
BACKGROUND_FILE = "background_theta.npy"
IDF_FILE = "idf.npy"
BACKGROUND_PARTIAL = "background_partial.npz"
IDF_PARTIAL = "idf_partial.npz"
FAULT_ENV = "T2T_FAULT_INJECT"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


# --------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """Everything a run decides before starting Ray."""

    cfg: Config
    stage: int
    corpus: Path
    out: Path
    model_dir: Path
    tokenizer_name: str
    params: dict
    corpus_listing: list[dict]
    """[{name, bytes}] of the corpus files."""
    revision_covers: str
    """Which backbone files `params["backbone_revision"]` hashes."""


def _default_corpus(cfg: Config, stage: int) -> str:
    if stage == 1:
        return cfg.data.stage1_corpus
    return cfg.data.stage2_corpus or cfg.data.stage1_corpus


def default_out(cfg: Config, stage: int) -> Path:
    """Where stage N's shards go by default: `<data.shards_dir>/stageN`."""
    return Path(cfg.data.shards_dir) / f"stage{stage}"


def _hash_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over (label, size, content) of each file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    for label, path in files:
        h.update(f"{label}\0{path.stat().st_size}\0".encode())
        hash_into(h, path)
    return h.hexdigest()[:24]


def corpus_hash(corpus: Path) -> tuple[str, list[dict]]:
    """(hash of the corpus files' names and contents, [{name, bytes}])."""
    files = corpus_files(corpus)
    labelled = [(f.name if corpus.is_file() else str(f.relative_to(corpus)), f) for f in files]
    return _hash_files(labelled), [{"name": label, "bytes": f.stat().st_size} for label, f in labelled]


def backbone_revision(model_dir: Path, with_weights: bool) -> tuple[str, str]:
    """(hash of the backbone's files, what it covers). Stage 1 depends only on config and tokenizer;
    stage 2 on the weights too (for a 7B model that is ~15 GB read, some seconds)."""
    names = ["config.json", *TOKENIZER_FILES]
    files = [(n, model_dir / n) for n in names if (model_dir / n).is_file()]
    if with_weights:
        files += [(f.name, f) for f in sorted(model_dir.iterdir()) if f.name.endswith(WEIGHT_SUFFIXES)]
    covers = "config, tokenizer" + (", weights" if with_weights else "")
    return _hash_files(files), covers


def plan(cfg: Config, stage: int, corpus: str | None = None, out: str | None = None) -> Plan:
    """Resolve paths, load the tokenizer and compute the params that decide the targets."""
    from t2t.model import load_tokenizer, resolve_model_dir, tokenizer_fingerprint

    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    corpus = corpus or _default_corpus(cfg, stage)
    if not corpus:
        raise ValueError(f"no corpus: set data.stage{stage}_corpus in the recipe or pass --corpus")
    corpus_sha, corpus_listing = corpus_hash(Path(corpus))
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir, cfg.model.padding_side)
    t, m = cfg.targets, cfg.model
    if stage == 1:
        words = stopword_list(t.stopwords)
        target = dict(kind="data-driven", stopwords=t.stopwords, stopwords_sha256=stopwords_hash(words),
                      max_target_tokens=t.max_target_tokens, weighting=t.weighting)
        embedding = None
    else:
        target = dict(kind="model-derived", tau=t.tau, delta=t.delta, top_k=t.top_k, epsilon=EPSILON)
        embedding = dict(pooling=m.pooling, prompt=m.template, attention=m.attention, max_length=m.max_length,
                         padding_side=m.padding_side, dtype=m.dtype)
    revision, covers = backbone_revision(model_dir, with_weights=stage == 2)
    params = dict(stage=stage, target=target,
                  tokenizer=dict(fingerprint=tokenizer_fingerprint(tokenizer), vocab_size=len(tokenizer)),
                  vocab_size=model_vocab_size(model_dir), backbone_revision=revision, embedding=embedding,
                  corpus_sha256=corpus_sha, max_texts=cfg.data.texts_limit(stage), shard_size=t.shard_size)
    params = json.loads(json.dumps(params))  # the form it has when read back from manifest.json
    return Plan(cfg, stage, Path(corpus), Path(out) if out else default_out(cfg, stage), model_dir,
                str(getattr(tokenizer, "name_or_path", model_dir)), params, corpus_listing, covers)


def is_complete(cfg: Config, stage: int, out: str | None = None) -> bool:
    """True only if `out` holds a finished job made with exactly the params `cfg` would use now.

    Every shard must be there with the byte size its manifest records (a cheap check; `run_targets`
    also compares checksums)."""
    out_dir = Path(out) if out else default_out(cfg, stage)
    try:
        manifest = read_manifest(out_dir)
    except ValueError:
        return False
    if not manifest.get("complete") or not (Path(cfg.model.path) / "config.json").is_file():
        return False
    try:
        params = plan(cfg, stage, out=str(out_dir)).params
    except ValueError:
        return False
    return manifest["params"] == params and all(shard_problem(out_dir, s, checksum=False) is None
                                                 for s in manifest["shards"])


# --------------------------------------------------------------------------- output directory and ledger


def _outputs(out: Path) -> list[Path]:
    names = {MANIFEST, LEDGER, BACKGROUND_FILE, IDF_FILE, BACKGROUND_PARTIAL, IDF_PARTIAL}
    return sorted(out.glob("t2t-*.tar")) + [out / n for n in sorted(names) if (out / n).exists()]


def _param_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _param_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def prepare_out(p: Plan, overwrite: bool) -> dict | None:
    """The finished manifest if `p.out` already holds this exact job, every shard verified; otherwise get
    the directory ready.

    Shards of the same job are checked against their recorded size and sha256 (the manifest's when
    it is complete, else the ledger's); those that fail are removed, named in a warning, and redone.
    Shards of a different job (or of unknown provenance) are refused unless `overwrite`.
    The caller holds the directory's lock.
    """
    p.out.mkdir(parents=True, exist_ok=True)
    for stale in [*p.out.glob("t2t-*.tar.tmp*"), *p.out.glob("*.json*.tmp*"), *p.out.glob("*.np[yz].tmp*")]:
        stale.unlink()  # left by a process killed mid-write; never a finished file
    existing = _outputs(p.out)
    try:
        manifest = read_manifest(p.out)
    except ValueError as e:
        manifest, problem = None, str(e)
    if manifest is not None and manifest["params"] == p.params:
        ledger = Ledger(p.out / LEDGER)
        if manifest["complete"]:
            entries = dict(enumerate(manifest["shards"]))
        else:  # unfinished: resume from the ledger, redoing missing shards anyway
            entries = {i: dict(e, name=shard_name(i)) for i, e in ledger.entries.items()
                       if (p.out / shard_name(i)).is_file()}
        bad = {i: problem for i, e in sorted(entries.items()) if (problem := shard_problem(p.out, e)) is not None}
        if manifest["complete"] and not bad:
            return manifest
        _forget_shards(p, ledger, entries, bad)
        return None
    if not existing:
        return None
    if not overwrite:
        why = ("its manifest differs: " + "; ".join(_param_diff(manifest["params"], p.params))
               if manifest is not None else problem)
        raise ValueError(f"{p.out} already holds shards of another job ({why}); "
                         "pass --overwrite to replace them, or choose another --out")
    log.warning("--overwrite: removing %d files of another job from %s", len(existing), p.out)
    for f in existing:
        f.unlink()
    return None


def _forget_shards(p: Plan, ledger: Ledger, entries: dict[int, dict], bad: dict[int, str]) -> None:
    """Remove shards that failed verification and their ledger lines, so that the job recomputes them."""
    if not bad:
        return
    shown = list(bad.items())[:20]
    for i, problem in shown:
        log.warning("%s: recomputing %s: %s", p.out, entries[i]["name"], problem)
    if len(bad) > len(shown):
        log.warning("%s: recomputing %d more shard(s) that fail verification", p.out, len(bad) - len(shown))
    log.warning("%s: %d of %d finished shard(s) failed verification and will be recomputed", p.out, len(bad),
                len(entries))
    for i in bad:
        (p.out / entries[i]["name"]).unlink(missing_ok=True)
    ledger.forget(bad)


# --------------------------------------------------------------------------- scheduling


def chunks(p: Plan, stats: CorpusStats) -> Iterator[tuple[int, list[str], list[str]]]:
    """(index, keys, texts) of each chunk of `shard_size` texts, in corpus order."""
    size = p.cfg.targets.shard_size
    keys: list[str] = []
    texts: list[str] = []
    index = 0
    for item in iter_texts(p.corpus, stats, p.cfg.data.texts_limit(p.stage)):
        keys.append(item.key)
        texts.append(item.text)
        if len(texts) == size:
            yield index, keys, texts
            index, keys, texts = index + 1, [], []
    if texts:
        yield index, keys, texts


def run_pass(name: str, p: Plan, slots: list, submit: Callable, on_result: Callable, done: set[int],
             stats: CorpusStats, already: int = 0) -> None:
    """Run `submit(slot, index, keys, texts)` over every chunk not in `done`, at most one per slot at a time.

    Slots are actor handles (stage 2) or plain counters (stage 1 tasks). `on_result(index, result)`
    runs in the driver as each chunk finishes, in completion order, and returns the number of
    samples it accounts for (for the progress bar). The driver only reads the corpus and keeps
    the books: workers write the shards themselves, so writing scales with them.
    """
    import ray

    in_flight: dict = {}
    free = list(slots)
    bar = tqdm(desc=f"stage{p.stage} {name}", unit="sample", initial=already, dynamic_ncols=True)
    finished = [len(done)]

    def collect_one() -> None:
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        slot, index = in_flight.pop(ref)
        free.append(slot)
        bar.update(on_result(index, ray.get(ref)))
        finished[0] += 1
        bar.set_postfix(shards=finished[0])

    try:
        for index, keys, texts in chunks(p, stats):
            if index in done:
                continue
            while not free:
                collect_one()
            slot = free.pop()
            in_flight[submit(slot, index, keys, texts)] = (slot, index)
        while in_flight:
            collect_one()
    finally:
        bar.close()


def _fault() -> tuple[str, int, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        name, index, marker = spec.split(":", 2)
        return name, int(index), marker
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r} must look like PASS:INDEX:MARKER_FILE") from None


def _ray_address(ray_address: str | None) -> str | None:
    """The cluster to join (`--ray-address`, else RAY_ADDRESS), or None for a local Ray."""
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        raise ValueError(f"Ray address {address} is a dashboard (job API) address: submit with "
                         "launchers/submit_targets.sh, or give the cluster's GCS address (HOST:6379)")
    return address


def _init_ray(workers_wanted: int, address: str | None) -> bool:
    """Join the cluster at `address` or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # "local" explicitly: with no address, ray.init would join a cluster that `ray start` left on this machine.
        ray.init(address="local", num_cpus=workers_wanted, include_dashboard=False, logging_level=logging.WARNING)
    return True


# --------------------------------------------------------------------------- the job


def run_targets(cfg: Config, stage: int, corpus: str | None = None, out: str | None = None,
                ray_address: str | None = None, overwrite: bool = False) -> dict:
    """Precompute stage-`stage` targets of `corpus` into shards under `out`; returns the manifest."""
    import ray

    address, fault = _ray_address(ray_address), _fault()
    p = plan(cfg, stage, corpus, out)
    if next(iter_texts(p.corpus), None) is None:
        raise ValueError(f"corpus {p.corpus} holds no texts")
    p.out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(p.out / LOCK_FILE, f"shard directory {p.out}"):
        finished = prepare_out(p, overwrite)
        if finished is not None:
            log.info("%s already holds these stage-%d targets (%d samples; %d shards match their recorded size "
                     "and sha256); nothing to do", p.out, stage, finished["samples"], len(finished["shards"]))
            return finished
        manifest = _start_manifest(p)
        write_manifest(p.out, manifest)
        started = _init_ray(cfg.targets.workers, address)
        try:
            run_stage = _stage1 if stage == 1 else _stage2
            stats = run_stage(p, manifest, Ledger(p.out / LEDGER), fault)
        finally:
            if started:
                ray.shutdown()
        return _finish_manifest(p, manifest, stats)


def _start_manifest(p: Plan) -> dict:
    old = None
    try:
        old = read_manifest(p.out)
    except ValueError:
        pass
    resumed = old if old is not None and old["params"] == p.params else {}
    return dict(format=MANIFEST_FORMAT, code_version=t2t.__version__, complete=False, stage=p.stage,
                params=p.params, tokenizer_name=p.tokenizer_name,
                backbone=dict(path=str(p.model_dir), revision_covers=p.revision_covers),
                corpus=dict(path=str(p.corpus), files=p.corpus_listing, counters=None),
                background=resumed.get("background"), idf=resumed.get("idf"), dropped_mass=None,
                shards=[], samples=0, empty_targets=0)


def _finish_manifest(p: Plan, manifest: dict, stats: CorpusStats) -> dict:
    ledger = Ledger(p.out / LEDGER)
    indices = sorted(ledger.entries)
    assert indices == list(range(len(indices))), f"ledger of {p.out} has gaps: {indices}"
    entries = [ledger.entries[i] for i in indices]
    stats.truncated = sum(e["truncated"] for e in entries)
    shards = [dict(name=shard_name(e["index"]), samples=e["samples"], bytes=e["bytes"], sha256=e["sha256"])
              for e in entries]
    manifest.update(complete=True, shards=shards,
                    samples=sum(e["samples"] for e in entries), empty_targets=sum(e["empty"] for e in entries))
    manifest["corpus"]["counters"] = stats.as_dict()
    if p.stage == 2:
        texts = max(manifest["samples"], 1)
        manifest["dropped_mass"] = dict(
            bound=max(e["dropped_max"] for e in entries),
            delta_bound=(p.params["vocab_size"] - 1) * p.params["target"]["delta"],
            mean=sum(e["dropped_sum"] for e in entries) / texts,
            texts_cut_by_top_k=sum(e["cut_by_top_k"] for e in entries))
    write_manifest(p.out, manifest)
    c = stats.as_dict()
    log.info("stage %d targets: %d samples in %d shards at %s; texts read %d, skipped empty %d, invalid UTF-8 "
             "replaced %d, truncated %d; empty targets %d", p.stage, manifest["samples"], len(entries), p.out,
             c["read"], c["skipped_empty"], c["invalid_utf8"], c["truncated"], manifest["empty_targets"])
    return manifest


def _stage1(p: Plan, manifest: dict, ledger: Ledger, fault) -> CorpusStats:
    """Stage 1 as Ray CPU tasks: an optional document-frequency pass for IDF, then the shards."""
    import ray

    from t2t.targets import workers
    from t2t.targets.stage1 import idf_weights

    t = p.cfg.targets
    task = dict(num_cpus=1, max_retries=t.max_retries)
    common = (str(p.model_dir), t, p.params["vocab_size"])
    slots = list(range(t.workers))
    idf_ref = None
    if t.weighting == "idf":
        if not _array_intact(p.out, manifest.get("idf")):
            df, texts = reduce_pass("idf", p, slots, IDF_PARTIAL, lambda _, i, keys, chunk: (
                workers.stage1_document_frequency.options(**task).remote(*common, i, chunk, fault)))
            manifest["idf"] = write_array(p.out, IDF_FILE, idf_weights(df, texts), texts)
            _restart_shards(p, manifest, ledger, IDF_PARTIAL)
        idf_ref = ray.put(np.load(p.out / IDF_FILE))

    out = str(p.out)
    return _shards_pass(p, ledger, slots, lambda _, i, keys, chunk: (
        workers.stage1_shard.options(**task).remote(*common, i, keys, chunk, idf_ref, out, fault)))


def _stage2(p: Plan, manifest: dict, ledger: Ledger, fault) -> CorpusStats:
    """Stage 2 as a pool of model actors: the background θ (pass 1), then the shards (pass 2)."""
    import ray

    from t2t.targets import workers

    t = p.cfg.targets
    actor = workers.Stage2Worker.options(num_cpus=1, num_gpus=t.gpus_per_worker, max_restarts=t.max_retries,
                                         max_task_retries=t.max_retries)
    actors = [actor.remote(p.cfg.model, t) for _ in range(t.workers)]
    if not _array_intact(p.out, manifest.get("background")):
        total, texts = reduce_pass("background", p, actors, BACKGROUND_PARTIAL,
                                   lambda a, i, keys, chunk: a.background.remote(i, chunk, fault))
        manifest["background"] = write_array(p.out, BACKGROUND_FILE, total / texts, texts)
        _restart_shards(p, manifest, ledger, BACKGROUND_PARTIAL)
    theta_ref = ray.put(np.load(p.out / BACKGROUND_FILE))

    out = str(p.out)
    return _shards_pass(p, ledger, actors, lambda a, i, keys, chunk: a.shard.remote(i, keys, chunk, theta_ref, out,
                                                                                    fault))


def _shards_pass(p: Plan, ledger: Ledger, slots: list, submit: Callable) -> CorpusStats:
    """The pass where workers write shards: those the ledger records and the disk holds are skipped; each
    finished one is recorded (with its counts, see `t2t.targets.workers`) after the worker's atomic rename."""
    done = {i for i in ledger.entries if (p.out / shard_name(i)).is_file()}

    def on_result(index: int, entry: dict) -> int:
        assert entry["index"] == index
        ledger.record(entry)
        return entry["samples"]

    stats = CorpusStats()
    run_pass("targets", p, slots, submit, on_result, done, stats,
             already=sum(ledger.entries[i]["samples"] for i in done))
    return stats


def reduce_pass(name: str, p: Plan, slots: list, partial_file: str, submit: Callable) -> tuple[np.ndarray, int]:
    """Sum per-chunk (vector, count) results over the corpus in chunk order, whatever order the workers finish
    in: a float sum depends on its order, and θ (hence every stage-2 target) must be the same bytes for the
    same corpus however many workers computed it. The running sum over the finished prefix of chunks is
    checkpointed after each step (atomically), so a restarted job resumes the pass; chunks that finished
    ahead of an unfinished one wait in memory (one vector each) and are recomputed after a crash."""
    partial = p.out / partial_file
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
        tmp = partial.with_name(f"{partial.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, total=total, count=count, upto=upto)
        os.replace(tmp, partial)
        return result[1]

    run_pass(name, p, slots, submit, on_result, set(range(upto)), CorpusStats())
    assert not ahead, f"chunks {sorted(ahead)} finished but were never summed"
    return total, count


def _array_intact(out: Path, entry: dict | None) -> bool:
    """True if the manifest entry of θ / IDF names a file that is there with the recorded hash."""
    if not entry or not (out / entry["file"]).is_file():
        return False
    return _hash_files([(entry["file"], out / entry["file"])]) == entry["sha256"]


def _restart_shards(p: Plan, manifest: dict, ledger: Ledger, partial_file: str) -> None:
    """A new θ / IDF invalidates every shard made with the old one: forget them, then record the new file."""
    for i in list(ledger.entries):
        (p.out / shard_name(i)).unlink(missing_ok=True)
    ledger.entries.clear()
    ledger.path.unlink(missing_ok=True)
    write_manifest(p.out, manifest)
    (p.out / partial_file).unlink(missing_ok=True)


def write_array(out: Path, name: str, array: np.ndarray, texts: int) -> dict:
    """Save a float64 vector (θ or IDF) atomically next to the shards; returns its manifest entry."""
    path = out / name
    tmp = path.with_name(f"{name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array.astype(np.float64), allow_pickle=False)
    os.replace(tmp, path)
    return dict(file=name, sha256=_hash_files([(name, path)]), texts=texts)

