"""Evaluation benchmarks, each measured side by side in one run (results: bench/BENCHMARKS.md).

    .venv/bin/python bench/bench_eval.py                     # both
    .venv/bin/python bench/bench_eval.py --only encode       # one of: scaling, encode
    .venv/bin/python bench/bench_eval.py --only scaling --max-samples 1500 --repeats 3   # capped, alternating

1. scaling  `run_eval` on the six local tasks (full data unless --max-samples) with 2 Ray workers
            against 1, each worker one CPU slot (one torch thread), as each gets one GPU on a
            cluster; one local Ray started once (num_cpus=2); fresh output directories, so nothing
            is cached; wall clock from the call to the written tables, worker start-up included.
            With --repeats N the 1- and 2-worker runs alternate N times and the medians are compared.
            Also, for reference, the default laptop path: one worker in this process with torch's
            default threads. The scores of the runs must agree. Target ≥ 1.6×.
2. encode   `Embedder.encode` (length-sorted batches) against the same calls on consecutive,
            unsorted batches, on the 2,758 STSBenchmark test sentences, batch 64, one thread,
            CPU time, best of 3 alternating. Target ≥ 1.3×.

Model: the demo recipe's backbone (4-layer Llama, d=256, 8k byte-level BPE, max length 64), random
weights (timing only), built under runs/bench/demo-base on first use and exported (t2t export
layout, so the t2t encoder path is the one measured) to runs/bench/eval/demo-export.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "bench" / "eval"


def demo_export() -> Path:
    from t2t.config import load_config
    from t2t.model import export, from_config

    out = WORK / "demo-export"
    if not (out / "t2t_config.json").is_file():
        model_cfg = load_config(REPO / "recipes" / "tiny.yaml", [f"model.path={WORK.parent / 'demo-base'}"]).model
        export(from_config(model_cfg), out)
    return out


def timed_run(model: Path, out: Path, **kw) -> tuple[float, dict]:
    from t2t.eval import run_eval

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    table = run_eval([str(model)], out_dir=str(out), batch_size=64, **kw)
    return time.perf_counter() - start, table


def bench_scaling(model: Path, max_samples: int, repeats: int, in_process_reference: bool = True) -> dict:
    import ray

    load_before = os.getloadavg()[0]
    in_process_s, in_process = (timed_run(model, WORK / "out-inprocess", max_samples=max_samples)
                                if in_process_reference else (None, None))
    runs = {1: [], 2: []}
    tables = {}
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        for _ in range(repeats):  # alternating, so a change in the machine's other load hits both
            for workers in (1, 2):
                seconds, tables[workers] = timed_run(model, WORK / f"out-ray{workers}", workers=workers,
                                                     cpus_per_worker=1, max_samples=max_samples)
                runs[workers].append(seconds)
    finally:
        ray.shutdown()
    name = tables[1]["models"][0]["name"]
    for table in (in_process, tables[1], tables[2]):
        assert table is None or not table["errors"][name], table["errors"]
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    diffs = [abs(tables[1]["scores"][name][t] - tables[2]["scores"][name][t]) for t in tables[1]["scores"][name]]
    return {"max_samples": max_samples, "repeats": repeats, "load_before": load_before,
            "load_after": os.getloadavg()[0], "in_process_2_threads_s": in_process_s,
            "ray_1_worker_s": runs[1], "ray_2_workers_s": runs[2], "speedup_2_vs_1": one / two,
            "speedup_2_vs_in_process": in_process_s / two if in_process else None,
            "task_seconds": {"in_process": in_process["seconds"][name] if in_process else None,
                             "ray_1": tables[1]["seconds"][name],
                             "ray_2": tables[2]["seconds"][name]},
            "max_score_diff_1_vs_2": max(diffs), "scores": tables[2]["scores"][name]}


def bench_encode(model: Path, repeats: int = 3) -> dict:
    import numpy as np
    import torch

    from t2t.eval.tasks import DEFAULT_DATA_DIR, read_tsv
    from t2t.model import load

    torch.set_num_threads(1)
    rows = read_tsv(DEFAULT_DATA_DIR / "sts" / "stsbenchmark_test.tsv", ("sentence1", "sentence2", "score"))
    texts = [r[0] for r in rows] + [r[1] for r in rows]
    embedder = load(model)
    batch = 64

    def unsorted() -> np.ndarray:  # the same code path, one call per consecutive batch: no reordering
        return np.concatenate([embedder.encode(texts[i:i + batch], batch_size=batch, show_progress=False)
                               for i in range(0, len(texts), batch)])

    def sorted_() -> np.ndarray:
        return embedder.encode(texts, batch_size=batch, show_progress=False)

    times = {"sorted": [], "unsorted": []}
    outputs = {}
    for _ in range(repeats):
        for label, fn in (("unsorted", unsorted), ("sorted", sorted_)):
            start = time.process_time()
            outputs[label] = fn()
            times[label].append(time.process_time() - start)
    best = {k: min(v) for k, v in times.items()}
    return {"texts": len(texts), "batch_size": batch, "cpu_s": best, "speedup": best["unsorted"] / best["sorted"],
            "max_abs_diff": float(np.abs(outputs["sorted"] - outputs["unsorted"]).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["scaling", "encode"])
    ap.add_argument("--max-samples", type=int, default=0, help="cap the local tasks (default: full data)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating 1- and 2-worker runs (median reported)")
    ap.add_argument("--skip-in-process", action="store_true", help="leave out the in-process reference run")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = demo_export()
    out = WORK / "results_eval.json"
    results = json.loads(out.read_text()) if out.is_file() else {}  # --only keeps the other's last figures
    if args.only in (None, "encode"):
        results["encode"] = bench_encode(model)
        print(json.dumps(results["encode"], indent=2), flush=True)
    if args.only in (None, "scaling"):
        results["scaling"] = bench_scaling(model, args.max_samples, args.repeats, not args.skip_in_process)
        print(json.dumps(results["scaling"], indent=2), flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
