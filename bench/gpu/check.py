"""t2t's GPU paths checked in one run on one H100/H200, against the same code on that machine's CPU (issue #24).

    bash bench/gpu/check.sh --prepare          # here, once: the wheels the GPU machine lacks, into .whl/
    bash bench/gpu/check.sh                    # there (device run, carry .whl): about 5 min, at most 8
    bash bench/gpu/check.sh --device cpu --smoke   # anywhere: the same code paths on CPU in a minute or two

The GPU machine has torch, transformers and peft but no deepspeed, webdataset, Ray or mteb, and takes at most
64 MiB per transfer (mteb alone needs 54 MB of polars). So nothing here uses Ray or mteb: targets are built in
this process, and STSBenchmark is scored with mteb's own STS measure (Spearman of the gold scores against the
cosine similarities), which `--device cpu` checks against `t2t eval` where mteb is installed.

No weights travel either: the model is a random Llama of SmolLM2-135M's shape (576 hidden, 30 layers, 9 heads,
1,536 intermediate; its key/value heads are not grouped, so it has 119M non-embedding parameters against
SmolLM2's 106M) with a BPE tokenizer trained on the repository's corpus (t2t.model.tiny), which serves for
MFU and for NCCL/ZeRO-3 correctness. Parts, all written to <out>/gpu_check.json:

1. peak   matmul FLOP/s on the device in the dtype it trains in (bf16 on a GPU; on a CPU bf16 where it is native,
          else fp32), timed as the trainer times it (`t2t.train.monitor.measure_peak_flops`: 8192³ on a GPU,
          1024³ on a CPU): the MFU denominator.
2. train  `t2t train --stage stage1` under torchrun, one rank, ds_configs/zero3_bf16.json (ZeRO-3; NCCL and bf16
          on the GPU), global batch 32 at max length 64, `--steps` steps on real stage-1 targets of 2,048 corpus
          texts; then the same steps on the CPU (gloo; bf16 where the CPU has it, else fp32). Passes if every
          step's loss agrees to 2 % (bf16 rounding, different kernels) and the device run's loss falls (not
          required of --smoke's 3 steps).
3. mfu    6 × non-embedding parameters × real tokens/s of the device run (steps 2 on) over part 1's peak,
          and the trainer's own MFU figure (the same measure, timed inside the run) from metrics.jsonl.
4. stage2 stage-2 targets (t2t.targets.model_derived.ModelDerivedBuilder, both passes) of 512 texts from the device-trained
          model, on the device in bf16 and on the CPU in fp32: texts/s, and how often the two agree on each text's
          top target token (passes at ≥ 0.9).
5. sts    STSBenchmark (1,379 pairs, data/eval/sts) embedded by the device-trained export on the device and on
          the CPU: Spearman × 100 of each (passes if they agree to 0.5) and texts/s.
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

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
CORPUS = REPO / "data" / "corpus" / "wiki_sentences_60k.txt.gz"
STS = REPO / "data" / "eval" / "sts" / "stsbenchmark_test.tsv"
SMOLLM2_SHAPE = dict(hidden_size=576, num_layers=30, num_heads=9, intermediate_size=1536, vocab_size=49152,
                     tokenizer_train_texts=60_000)
SMOKE_SHAPE = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=1000,
                   tokenizer_train_texts=2_000)
STAGE1_TARGETS = {"kind": "data-driven", "max_target_tokens": 128, "weighting": "uniform"}
STAGE2_TARGETS = {"kind": "model-derived", "tau": 1.0e-5, "delta": 1.0e-6, "top_k": 64}
GLOBAL_BATCH = 32


def recipe(out: Path, device: str, steps: int) -> dict:
    return {"name": f"gpu-check-{device}", "run_dir": str(out / f"run-{device}"), "seed": 0,
            "model": {"path": str(out / "model"), "pooling": "last", "max_length": 64, "dtype": "bfloat16"},
            "data": {"shards_dir": str(out / "shards"), "shuffle_buffer": 256, "loader_workers": 1},
            "targets": {"batch_size": 32},
            "train": {"ds_config": "ds_configs/zero3_bf16.json", "micro_batch_size": GLOBAL_BATCH,
                      "grad_accum_steps": 1, "save_every": steps + 1, "keep_checkpoints": 1, "nproc": 1},
            "stages": [{"name": "stage1", "start": "base", "targets": STAGE1_TARGETS, "steps": steps, "lr": 1.0e-4,
                        "schedule": "constant", "warmup_steps": 0},
                       {"name": "stage2", "start": "stage1", "targets": STAGE2_TARGETS, "steps": 10}]}


def load_recipe(out: Path, device: str, steps: int):
    from t2t.config import Config, from_dict, validate

    cfg = from_dict(Config, recipe(out, device, steps), prefix="")
    validate(cfg)
    return cfg


def corpus_texts(n: int) -> list[str]:
    from t2t.data.corpus import iter_texts

    return [t.text for _, t in zip(range(n), iter_texts(CORPUS))]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prepare(out: Path, shape: dict, texts: int) -> None:
    """The random SmolLM2-shaped model and stage-1 target shards for its tokenizer."""
    from bench_train import write_stage1_shards
    from t2t.config import TinyModelConfig
    from t2t.model.tiny import build_tiny
    from t2t.run_paths import shards_dir

    build_tiny(TinyModelConfig(tokenizer_corpus=str(CORPUS), **shape), out / "model")
    cfg = load_recipe(out, "cpu", 1)
    shards = shards_dir(cfg, "stage1")
    if not (shards / "manifest.json").exists():
        write_stage1_shards(out / "model", cfg.stage("stage1").targets, corpus_texts(texts), shards, 4)


def train(out: Path, device: str, steps: int) -> dict:
    """`t2t train --stage stage1` under torchrun with one rank on `device`; its metrics rows."""
    from t2t.run_paths import metrics_file

    cfg = load_recipe(out, device, steps)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    path = out / f"recipe-{device}.yaml"
    path.write_text(yaml.safe_dump(recipe(out, device, steps), sort_keys=False))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [
        os.environ.get("PYTHONPATH"), str(REPO)])))
    if device == "cpu":
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "t2t.cli", "train", "--stage", "stage1", "--resume", "never", "--config", str(path)]
    log = out / f"train-{device}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"training on {device} failed ({done.returncode}); the end of {log}:\n"
                         f"{log.read_text()[-4000:]}")
    rows = [json.loads(line) for line in metrics_file(cfg, "stage1").read_text().splitlines() if line]
    return {"wall_s": round(time.perf_counter() - start, 1), "rows": rows, "log": str(log)}


def throughput(rows: list[dict]) -> tuple[float, float]:
    """(samples/s, real tokens/s) over the steps after the first."""
    timed = [r for r in rows if r["step"] > 1] or rows
    seconds = sum(GLOBAL_BATCH / r["samples_per_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * GLOBAL_BATCH / r["samples_per_s"] for r in timed)
    return GLOBAL_BATCH * len(timed) / seconds, tokens / seconds


def compare_losses(dev: list[dict], cpu: list[dict], must_fall: bool) -> dict:
    a, b = [r["loss"] for r in dev], [r["loss"] for r in cpu]
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    falls = a[-1] < a[0]
    return {"device": a, "cpu": b, "max_rel_diff": worst, "falls": falls,
            "ok": len(a) == len(b) and worst <= 0.02 and (falls or not must_fall)}


def stage2(model_dir: Path, device: str, dtype: str, texts: list[str]) -> tuple[list[int], float]:
    """Both passes of stage-2 targets on `device`: each text's top target token and the texts/s."""
    from t2t.model.io import load
    from t2t.targets.kinds import ModelDerivedTargets
    from t2t.targets.model_derived import ModelDerivedBuilder

    embedder = load(model_dir, dtype).to(device)
    builder = ModelDerivedBuilder(embedder, ModelDerivedTargets(**{k: v for k, v in STAGE2_TARGETS.items() if k != "kind"}),
                            batch_size=64)
    start = time.perf_counter()
    total, count, _ = builder.background_sum(texts)
    batch, _ = builder.targets(texts, total / count)
    sync(device)
    seconds = time.perf_counter() - start
    top = [int(batch.ids[batch.offsets[i] + np.argmax(batch.w[batch.offsets[i]:batch.offsets[i + 1]])])
           for i in range(len(texts))]
    return top, len(texts) / seconds


def sts(model_dir: Path, device: str, dtype: str) -> tuple[float, float]:
    """STSBenchmark with mteb's measure: Spearman × 100 of the gold scores against the cosine similarities."""
    from scipy.stats import spearmanr

    from t2t.model.io import load

    rows = [line.rstrip("\n").split("\t") for line in STS.read_text(encoding="utf-8").splitlines()[1:]]
    embedder = load(model_dir, dtype).to(device)
    start = time.perf_counter()
    e1 = embedder.encode([r[0] for r in rows], batch_size=64, normalize=True)
    e2 = embedder.encode([r[1] for r in rows], batch_size=64, normalize=True)
    sync(device)
    seconds = time.perf_counter() - start
    cosine = (e1 * e2).sum(axis=1)
    return 100 * float(spearmanr([float(r[2]) for r in rows], cosine).statistic), 2 * len(rows) / seconds


def mteb_sts(model_dir: Path, out: Path) -> float | None:
    """`t2t eval` of the same export on STSBenchmark (CPU), where mteb is installed: the measure's cross-check."""
    try:
        import mteb  # noqa: F401
    except ImportError:
        return None
    cmd = [sys.executable, "-m", "t2t.cli", "eval", "--model", str(model_dir), "--tasks", "STSBenchmark",
           "--workers", "0", "--out", str(out / "eval")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    if done.returncode != 0:
        raise SystemExit(f"t2t eval failed: {done.stderr[-3000:]}")
    scores = json.loads((out / "eval" / "results.json").read_text())["scores"]
    return next(iter(scores.values()))["STSBenchmark"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "gpu"), help="working and result directory")
    p.add_argument("--results", default=None, help="also copy gpu_check.json and the training logs here "
                   "(check.sh: the device machine's $OUT)")
    p.add_argument("--device", default="cuda", help="the device checked against the CPU (default cuda)")
    p.add_argument("--steps", type=int, default=20, help="training steps on each device")
    p.add_argument("--smoke", action="store_true", help="a 2-layer model, 3 steps, 64 texts: checks the script")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu to check the script on CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = 3 if args.smoke else args.steps
    n_texts = 64 if args.smoke else 512
    import deepspeed
    import transformers

    # The GPU machine's own torch and transformers (2.11, 5.17), not the project's pins: recorded with the figures.
    result: dict = {"device": args.device, "smoke": args.smoke, "torch": torch.__version__,
                    "transformers": transformers.__version__, "deepspeed": deepspeed.__version__,
                    "name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "cpu_threads": torch.get_num_threads()}
    timer = time.perf_counter()

    def done(part: str) -> None:
        result.setdefault("seconds", {})[part] = round(time.perf_counter() - timer, 1)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
        if args.results:  # what comes back from the device machine, written after each part in case time runs out
            Path(args.results).mkdir(parents=True, exist_ok=True)
            for f in [out / "gpu_check.json", *out.glob("train-*.log")]:
                shutil.copy(f, Path(args.results) / f.name)
        print(f"{part}: done at {result['seconds'][part]} s", flush=True)

    from t2t.dtypes import usable_dtype

    # The dtype the device trains in: bf16 on a GPU, and on a CPU where it is native (else t2t trains in fp32).
    dtype = "bfloat16" if args.device.startswith("cuda") else usable_dtype("bfloat16")
    result["train_dtype"] = dtype
    from t2t.train.monitor import measure_peak_flops

    result["peak_flops"] = measure_peak_flops(getattr(torch, dtype), args.device)
    done("peak")
    prepare(out, SMOKE_SHAPE if args.smoke else SMOLLM2_SHAPE, 256 if args.smoke else 2048)
    done("prepare")
    dev, cpu = train(out, args.device, steps), train(out, "cpu", steps)
    losses = compare_losses(dev["rows"], cpu["rows"], must_fall=not args.smoke)
    result["train"] = {"losses": losses, "wall_s": [dev["wall_s"], cpu["wall_s"]]}
    done("train")

    from t2t.model.io import load_lm
    from t2t.run_paths import export_dir
    from t2t.train.monitor import non_embedding_params

    params = non_embedding_params(load_lm(out / "model"))
    samples_s, tokens_s = throughput(dev["rows"])
    result["mfu"] = {"non_embedding_params": params, "samples_per_s": samples_s, "tokens_per_s": tokens_s,
                     "mfu": 6 * params * tokens_s / result["peak_flops"],
                     "trainer_mfu": [r.get("mfu") for r in dev["rows"]][-1]}
    done("mfu")

    model = export_dir(load_recipe(out, args.device, steps), "stage1")
    texts = corpus_texts(n_texts)
    top_dev, speed_dev = stage2(model, args.device, "bfloat16", texts)
    top_cpu, speed_cpu = stage2(model, "cpu", "float32", texts)
    agree = float(np.mean([a == b for a, b in zip(top_dev, top_cpu)]))
    result["stage2"] = {"texts": n_texts, "texts_per_s": [speed_dev, speed_cpu], "top_token_agreement": agree,
                        "ok": agree >= 0.9}
    done("stage2")

    score_dev, speed_dev = sts(model, args.device, "bfloat16")
    score_cpu, speed_cpu = sts(model, "cpu", "float32")
    result["sts"] = {"spearman": [score_dev, score_cpu], "texts_per_s": [speed_dev, speed_cpu],
                     "ok": abs(score_dev - score_cpu) <= 0.5}
    if args.device == "cpu":  # the check's measure is mteb's: the same score as `t2t eval` (fp32 on the CPU)
        mteb_score = result["sts"]["t2t_eval"] = mteb_sts(model, out)
        result["sts"]["ok"] &= mteb_score is None or abs(mteb_score - score_cpu) < 0.01
    done("sts")
    result["ok"] = all(result[k]["ok"] for k in ("stage2", "sts")) and result["train"]["losses"]["ok"]
    done("all")
    print(json.dumps({k: v for k, v in result.items() if k != "train"}, indent=1))
    print("losses (device, cpu):", *zip(result["train"]["losses"]["device"], result["train"]["losses"]["cpu"]))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
