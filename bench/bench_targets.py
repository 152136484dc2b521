"""Target-precomputation benchmarks, each measured side by side in one run (results: bench/BENCHMARKS.md).

    .venv/bin/python bench/bench_targets.py                  # all four, ~3 min on 2 cores
    .venv/bin/python bench/bench_targets.py --only stage2    # one of: stage1, scaling, stage2, bytes

1. stage1   t2t's stage-1 builder (clean, stopwords, tokenize, drop, unique, pack), alone and with
            writing the shard, against the tokenizer's raw batch encoding of the same texts; one
            process, one thread, 20,000 corpus sentences in chunks of 2,000, alternating, CPU time
            (so other load on the machine does not skew it). Target ≥ 0.8.
2. scaling  `run_targets` stage 1 over the 60k-sentence corpus (30 shards of 2,000) with 2 Ray
            workers against 1, on one local Ray started once (num_cpus=2) and warmed up; wall
            clock, so it needs two idle cores: the load average is recorded, and so are the
            workers' own median CPU and wall seconds per shard (from the ledger), which show
            whether a shortfall is t2t serialising or other jobs taking the cores. Target ≥ 1.6×.
3. stage2   the stage-2 builder's two passes (pass 1: tokenize, `Embedder.forward`, background sums; pass 2
            on the pooled states pass 1 kept: head, fp64 target maths, sparsify, pack) on one thread,
            against a bare no-grad forward of the same backbone (decoder only) on the same, already
            tokenized batches; each pass alone reported too; CPU time. Target ≥ 0.9.
4. bytes    bytes per sample of real stage-1 and stage-2 shards (tar headers included) and of their
            payload (`txt` + `ids.npy` + `w.npy`).

Model: the demo recipe's backbone (4-layer Llama, d=256, 8k byte-level BPE), built under
runs/bench/demo-base on first use (shared with bench_train.py); max length 64, batch 64.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "bench"
RECIPE = REPO / "recipes" / "tiny.yaml"
CORPUS = REPO / "data" / "corpus" / "wiki_sentences_60k.txt.gz"


def demo_config(*extra: str):
    from t2t.config import load_config

    return load_config(RECIPE, [f"model.path={WORK / 'demo-base'}", f"data.shards_dir={WORK / 'targets'}",
                                f"run_dir={WORK / 'run'}", "model.max_length=64", "targets.batch_size=64",
                                "stages.stage1.targets.weighting=uniform",
                                "stages.stage1.targets.max_target_tokens=128", *extra])


def corpus_texts(n: int) -> list[str]:
    from t2t.data.corpus import iter_texts

    return [t.text for _, t in zip(range(n), iter_texts(CORPUS))]


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds of each function (one thread, so CPU time is its cost even on a busy machine),
    the functions alternating round by round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- 1. stage 1


def bench_stage1(scratch: Path) -> dict:
    from t2t.data.shards import write_shard
    from t2t.model import load_tokenizer, resolve_model_dir
    from t2t.targets.data_driven import DataDrivenBuilder

    torch.set_num_threads(1)
    cfg = demo_config()
    tok = load_tokenizer(resolve_model_dir(cfg.model))
    builder = DataDrivenBuilder(tok, cfg.stage("stage1").targets, len(tok))
    texts = corpus_texts(20_000)
    chunks = [texts[i:i + 2000] for i in range(0, len(texts), 2000)]
    keys = [f"k{i:06d}" for i in range(2000)]
    out = scratch / "stage1-writes"
    out.mkdir()

    def raw():
        for chunk in chunks:
            tok(chunk, add_special_tokens=False)

    def targets_only():
        for chunk in chunks:
            builder.targets(chunk)

    def targets_and_shard():
        for i, chunk in enumerate(chunks):
            batch, _ = builder.targets(chunk)
            write_shard(out / f"s{i}.tar", batch.samples(keys[:len(chunk)], chunk))

    targets_and_shard()  # imports and first-call costs out of the way
    t = best_of({"raw": raw, "targets": targets_only, "targets+shard": targets_and_shard}, repeats=3)
    n = len(texts)
    return {"texts": n, "raw_tokenizer_samples_per_s": n / t["raw"],
            "stage1_samples_per_s": n / t["targets"], "stage1_with_shard_write_samples_per_s": n / t["targets+shard"],
            "ratio": t["raw"] / t["targets+shard"], "ratio_without_write": t["raw"] / t["targets"], "target": 0.8}


# ----------------------------------------------------------------------------- 2. scaling


def bench_scaling(scratch: Path) -> dict:
    import ray

    from t2t.model import resolve_model_dir
    from t2t.jobs.targets import run_targets

    resolve_model_dir(demo_config().model)
    load_before = os.getloadavg()[0]  # wall-clock scaling needs two idle cores: the record says if it had them
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        root = scratch / "scaling"
        run_targets(demo_config("data.max_texts=4000", "targets.shard_size=1000"), "stage1", out=str(root / "warm"))
        seconds: dict[int, list[float]] = {1: [], 2: []}
        per_shard: dict[int, list[dict]] = {1: [], 2: []}  # the workers' own CPU and wall seconds per shard
        driver_cpu: dict[int, list[float]] = {1: [], 2: []}  # this process: reading, submitting, the ledger
        samples = 0
        for round_ in range(3):
            for workers in (1, 2):
                cfg = demo_config(f"targets.workers={workers}", "targets.shard_size=2000", "data.max_texts=0")
                start, start_cpu = time.perf_counter(), time.process_time()
                manifest = run_targets(cfg, "stage1", out=str(root / f"w{workers}-{round_}"))
                seconds[workers].append(time.perf_counter() - start)
                driver_cpu[workers].append(time.process_time() - start_cpu)
                samples = manifest["samples"]
                ledger = (root / f"w{workers}-{round_}" / "ledger.jsonl").read_text().splitlines()
                per_shard[workers] += [json.loads(line) for line in ledger]
                if (workers, round_) != (2, 0):  # keep one run for the bytes benchmark
                    shutil.rmtree(root / f"w{workers}-{round_}")
    finally:
        ray.shutdown()
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    shard_cpu = {w: statistics.median(e["cpu_s"] for e in per_shard[w]) for w in (1, 2)}
    shard_wall = {w: statistics.median(e["wall_s"] for e in per_shard[w]) for w in (1, 2)}
    return {"texts": samples, "shards": samples // 2000 + bool(samples % 2000),
            "one_worker_samples_per_s": samples / one, "two_workers_samples_per_s": samples / two,
            "speedup": one / two, "target": 1.6, "shard_cpu_s_one_two": [shard_cpu[1], shard_cpu[2]],
            "shard_wall_s_one_two": [shard_wall[1], shard_wall[2]],
            "driver_cpu_s_one_two": [statistics.median(driver_cpu[1]), statistics.median(driver_cpu[2])],
            "wall_s_one_two": [one, two], "shard_dir": str(root / "w2-0"),
            "load_average_before_after": [load_before, os.getloadavg()[0]]}


# ----------------------------------------------------------------------------- 3. stage 2


def bench_stage2() -> dict:
    torch.set_num_threads(1)  # one actor per core, as on a CPU Ray cluster
    return stage2_against_forward(demo_config(), 2048, repeats=3)


def stage2_against_forward(cfg, n_texts: int, repeats: int) -> dict:
    """Stage-2 targets (pass 1, then pass 2 on the states pass 1 kept) against a bare no-grad decoder forward on
    the builder's own batches; each pass alone too (pass 2 alone: a chunk whose pass 1 ran elsewhere)."""
    from t2t.model import from_config
    from t2t.targets.model_derived import ModelDerivedBuilder

    embedder = from_config(cfg.model).eval()
    builder = ModelDerivedBuilder(embedder, cfg.stage("stage2").targets, cfg.targets.batch_size)
    texts = corpus_texts(n_texts)
    total, count, _ = builder.background_sum(texts)
    theta = total / count
    # The builder's own batches (length-sorted), tokenized once for the bare forward.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    size = cfg.targets.batch_size
    batches = [embedder.tokenize([texts[i] for i in order[s:s + size]]) for s in range(0, len(texts), size)]
    decoder = embedder.lm.get_decoder()

    @torch.inference_mode()
    def bare():
        for b in batches:
            decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)

    def forget():
        builder.kept.clear()
        builder.kept_bytes = 0

    def pass1():
        forget()
        builder.background_sum(texts)

    def pass2_alone():
        forget()
        builder.targets(texts, theta)

    def both():
        pass1()
        builder.targets(texts, theta)

    bare()
    t = best_of({"bare": bare, "both": both, "pass1": pass1, "pass2_alone": pass2_alone}, repeats=repeats)
    n = len(texts)
    return {"texts": n, "vocab": int(theta.shape[0]), "batch_size": size, "max_length": cfg.model.max_length,
            "dtype": str(embedder.lm.dtype), "torch_threads": torch.get_num_threads(), "repeats": repeats,
            "cpu_s": t, "bare_forward_samples_per_s": n / t["bare"], "targets_samples_per_s": n / t["both"],
            "pass1_background_samples_per_s": n / t["pass1"],
            "pass2_alone_samples_per_s": n / t["pass2_alone"], "ratio": t["bare"] / t["both"],
            "ratio_pass1": t["bare"] / t["pass1"], "ratio_pass2_alone": t["bare"] / t["pass2_alone"], "target": 0.9}


# ----------------------------------------------------------------------------- 4. bytes


def bench_bytes(scratch: Path, stage1_dir: str | None) -> dict:
    import tarfile

    from t2t.data.shards import write_shard
    from t2t.model import from_config
    from t2t.targets.model_derived import ModelDerivedBuilder

    def measure(paths: list[Path]) -> dict:
        total = payload = samples = 0
        for p in paths:
            total += p.stat().st_size
            with tarfile.open(p) as tar:
                members = tar.getmembers()
            payload += sum(m.size for m in members)
            samples += len(members) // 3
        return {"samples": samples, "bytes_per_sample": total / samples, "payload_bytes_per_sample": payload / samples}

    cfg = demo_config()
    if stage1_dir is None:
        from t2t.jobs.targets import run_targets

        stage1_dir = str(scratch / "bytes-stage1")
        run_targets(demo_config("data.max_texts=10000"), "stage1", out=stage1_dir)
    torch.set_num_threads(1)
    builder = ModelDerivedBuilder(from_config(cfg.model), cfg.stage("stage2").targets, cfg.targets.batch_size)
    texts = corpus_texts(2000)
    total, count, _ = builder.background_sum(texts)
    batch, _ = builder.targets(texts, total / count)
    stage2 = scratch / "bytes-stage2.tar"
    write_shard(stage2, batch.samples([f"k{i:06d}" for i in range(len(texts))], texts))
    return {"stage1": measure(sorted(Path(stage1_dir).glob("t2t-*.tar"))), "stage2": measure([stage2]),
            "stage2_ids_per_text": len(batch.ids) / len(batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["stage1", "scaling", "stage2", "bytes"])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="targets-", dir=WORK) as scratch:
        results = run(Path(scratch), args.only)
    (WORK / "targets.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {WORK / 'targets.json'}")


def run(scratch: Path, only: str | None) -> dict:
    results: dict = {}
    if only in (None, "stage1"):
        results["stage1"] = bench_stage1(scratch)
        print("stage1", json.dumps(results["stage1"], indent=1), flush=True)
    if only in (None, "scaling"):
        results["scaling"] = bench_scaling(scratch)
        print("scaling", json.dumps(results["scaling"], indent=1), flush=True)
    if only in (None, "stage2"):
        results["stage2"] = bench_stage2()
        print("stage2", json.dumps(results["stage2"], indent=1), flush=True)
    if only in (None, "bytes"):
        results["bytes"] = bench_bytes(scratch, results.get("scaling", {}).pop("shard_dir", None))
        print("bytes", json.dumps(results["bytes"], indent=1), flush=True)
    return results


if __name__ == "__main__":
    main()
