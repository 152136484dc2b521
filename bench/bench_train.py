"""Training benchmarks, each measured side by side in one run (results: bench/BENCHMARKS.md).

    DS_ACCELERATOR=cpu .venv/bin/python bench/bench_train.py            # all three, ~3 min on 2 cores
    .venv/bin/python bench/bench_train.py --only loss                   # one of: step, loss, loader

1. step   t2t's training step (reader + `train_step`: global-count normalisation, two small
          all-reduces, NaN/stop checks) against a bare DeepSpeed ZeRO-3 loop (forward, sparse KL
          mean, backward, step) on the same engine, batches and config: the demo model, 2 ranks
          (torchrun, gloo), micro batch 32. Steps alternate bare / t2t. Target: overhead ≤ 10%.
2. loss   the sparse KL (hand-written backward) against the dense loss (a B × |V| target, then
          `kl_div(log_softmax(z))`) and against the same sparse formula through plain autograd,
          at B=64, |V|=128,256, K=64. Peak extra memory is peak RSS during forward+backward
          minus z and its gradient (which every loss needs), each variant in a fresh process
          with glibc's mmap threshold pinned so freed blocks return to the OS. Target: sparse
          ≤ 1/10 of the dense loss's extra memory.
3. loader the streaming reader's samples/s (one process: read, decode, shuffle, tokenize,
          collate) against the samples/s one rank of the demo training consumes (from 1).
          Target ≥ 10×.

Data: the demo recipe's tiny model (built under runs/bench/ on first use) and stage-1 targets
of the first 8,000 corpus sentences made with t2t.targets.data_driven, written as 4 shards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "bench"
RECIPE = REPO / "recipes" / "tiny.yaml"
OVERRIDES = [f"model.path={WORK / 'demo-base'}", f"data.shards_dir={WORK / 'shards'}", f"run_dir={WORK / 'run'}"]


def demo_config():
    from t2t.config import load_config

    return load_config(RECIPE, OVERRIDES)


# ----------------------------------------------------------------------------- data


def write_stage1_shards(model_dir: Path, targets_cfg, texts: list[str], out: Path, n_shards: int) -> None:
    """Real stage-1 targets of `texts` for the model's tokenizer, in `n_shards` equal shards with a manifest."""
    from t2t.data.manifest import MANIFEST_FORMAT, model_vocab_size, write_manifest
    from t2t.data.shards import shard_name, write_shard_entry
    from t2t.model import load_tokenizer, tokenizer_fingerprint
    from t2t.targets.data_driven import DataDrivenBuilder

    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model_dir)
    vocab = model_vocab_size(model_dir)
    builder = DataDrivenBuilder(tok, targets_cfg, vocab)
    per_shard = len(texts) // n_shards
    shards = []
    for s in range(n_shards):
        chunk = texts[s * per_shard:(s + 1) * per_shard]
        batch, _ = builder.targets(chunk)
        samples = [{"__key__": f"b{s}x{i:05d}", "txt": t, "ids.npy": batch.ids[batch.offsets[i]:batch.offsets[i + 1]],
                    "w.npy": batch.w[batch.offsets[i]:batch.offsets[i + 1]]} for i, t in enumerate(chunk)]
        shards.append(write_shard_entry(out / shard_name(s), samples))
    write_manifest(out, {"format": MANIFEST_FORMAT, "code_version": "bench", "complete": True, "stage": "stage1",
                         "params": {"vocab_size": vocab, "embedding": None,
                                    "tokenizer": {"fingerprint": tokenizer_fingerprint(tok), "vocab_size": len(tok)}},
                         "shards": shards, "samples": per_shard * n_shards})


def prepare() -> tuple[Path, list[str]]:
    """The demo model and 4 shards of real stage-1 targets (made once)."""
    from t2t.data.corpus import iter_texts
    from t2t.model import resolve_model_dir
    from t2t.run_paths import corpus_of, shards_dir

    cfg = demo_config()
    model_dir = resolve_model_dir(cfg.model)
    out = shards_dir(cfg, "stage1")
    if not (out / "manifest.json").exists():
        texts = [t.text for t in iter_texts(REPO / corpus_of(cfg, "stage1"), limit=8000)]
        write_stage1_shards(model_dir, cfg.stage("stage1").targets, texts, out, n_shards=4)
    return model_dir, sorted(str(p) for p in out.glob("t2t-*.tar"))


# ----------------------------------------------------------------------------- 1. step overhead


def step_worker(out: str, steps: int, warmup: int) -> None:
    """One rank: alternate bare and t2t steps on one engine; rank 0 writes the timings."""
    from t2t.data.stream import TargetReader
    from t2t.identity import EmbeddingIdentity
    from t2t.model import load_tokenizer
    from t2t.run_paths import shards_dir
    from t2t.train.ds_config import build_ds_config
    from t2t.train.engine import build_engine, init_distributed
    from t2t.objectives import Text2TokenObjective
    from t2t.train.loss import objective_for, sparse_kl
    from t2t.train.trainer import train_step

    rank, world = init_distributed()
    cfg = demo_config()
    model_dir, shards = Path(cfg.model.path), sorted(str(p) for p in shards_dir(cfg, "stage1").glob("t2t-*.tar"))
    settings = EmbeddingIdentity.of(cfg.model)
    tok = load_tokenizer(model_dir, settings.padding_side)
    kw = dict(batch_size=cfg.train.micro_batch_size, rank=rank, world_size=world, shuffle_buffer=cfg.data.shuffle_buffer)
    bare_batches = [b for b, _ in zip(TargetReader(shards, tok, settings, seed=1, workers=0, **kw), range(steps + warmup))]
    reader = TargetReader(shards, tok, settings, seed=0, workers=cfg.data.loader_workers, **kw)
    engine, _ = build_engine(cfg, cfg.stage("stage1"), model_dir, build_ds_config(cfg))
    objective = objective_for(Text2TokenObjective())

    def bare(batch) -> None:
        _, z = engine(batch["input_ids"], batch["attention_mask"])
        loss = sparse_kl(z, batch["target_ids"], batch["target_w"], batch["target_mask"]).mean()
        engine.backward(loss)
        engine.step()

    def t2t() -> None:
        train_step(engine, objective, [next(reader)], world)

    times = {"bare": [], "t2t": []}
    for i in range(steps + warmup):
        for name, fn in (("bare", lambda: bare(bare_batches[i])), ("t2t", t2t)):
            torch.distributed.barrier()
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(json.dumps(dict(times=times, world=world, micro_batch=cfg.train.micro_batch_size,
                                             loader_workers=cfg.data.loader_workers)))
    torch.distributed.destroy_process_group()


def bench_step(steps: int, warmup: int) -> dict:
    out = WORK / "step_times.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--step-worker", str(out), "--steps", str(steps), "--warmup", str(warmup)]
    subprocess.run(cmd, env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    r = json.loads(out.read_text())
    bare, t2t = statistics.median(r["times"]["bare"]), statistics.median(r["times"]["t2t"])
    return dict(bare_s=bare, t2t_s=t2t, overhead=t2t / bare - 1, steps=steps, world=r["world"],
                micro_batch=r["micro_batch"], loader_workers=r["loader_workers"],
                rank_samples_per_s=r["micro_batch"] / t2t)


# ----------------------------------------------------------------------------- 2. sparse vs dense loss


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def loss_worker(variant: str, batch: int, vocab: int, k: int) -> None:
    """In a fresh process: time and peak extra memory of one loss's forward + backward."""
    import torch.nn.functional as F

    from t2t.train.loss import sparse_kl

    torch.manual_seed(0)
    z = torch.randn(batch, vocab, requires_grad=True)
    ids = torch.stack([torch.randperm(vocab)[:k].sort().values for _ in range(batch)])
    w = torch.rand(batch, k) + 0.01
    w /= w.sum(dim=1, keepdim=True)
    mask = torch.ones(batch, k, dtype=torch.bool)

    def sparse():
        return sparse_kl(z, ids, w, mask).mean()

    def sparse_autograd():  # the same formula without the hand-written backward
        picked = z.gather(1, ids)
        return (torch.special.xlogy(w, w).sum(1) - (w * picked).sum(1) + w.sum(1) * torch.logsumexp(z, 1)).mean()

    def dense():
        target = torch.zeros(batch, vocab).scatter_(1, ids, w)
        return F.kl_div(F.log_softmax(z, dim=-1), target, reduction="batchmean")

    fn = dict(sparse=sparse, sparse_autograd=sparse_autograd, dense=dense)[variant]
    times = []
    for _ in range(7):
        z.grad = None
        start = time.perf_counter()
        fn().backward()
        times.append(time.perf_counter() - start)
    z.grad = None
    grad_kb = batch * vocab * 4 / 1024
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    fn().backward()
    extra_kb = _rss_kb("VmHWM") - base - grad_kb
    print(json.dumps(dict(variant=variant, time_s=statistics.median(times[2:]), extra_mb=extra_kb / 1024,
                          grad_mb=grad_kb / 1024)))


def bench_loss(batch: int, vocab: int, k: int) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    rows = []
    for variant in ("sparse", "sparse_autograd", "dense"):
        out = subprocess.run([sys.executable, __file__, "--loss-worker", variant, str(batch), str(vocab), str(k)],
                             env=env, check=True, capture_output=True, text=True, cwd=REPO).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


# ----------------------------------------------------------------------------- 3. loader headroom


def bench_loader(samples: int) -> dict:
    from t2t.data.stream import TargetReader
    from t2t.identity import EmbeddingIdentity
    from t2t.model import load_tokenizer
    from t2t.run_paths import shards_dir

    cfg = demo_config()
    settings = EmbeddingIdentity.of(cfg.model)
    tok = load_tokenizer(cfg.model.path, settings.padding_side)
    shards = sorted(str(p) for p in shards_dir(cfg, "stage1").glob("t2t-*.tar"))
    reader = TargetReader(shards, tok, settings, batch_size=cfg.train.micro_batch_size, seed=0, rank=0,
                          world_size=1, workers=0, shuffle_buffer=cfg.data.shuffle_buffer)
    next(reader)  # fills the shuffle buffer
    n = samples // cfg.train.micro_batch_size
    start = time.perf_counter()
    for _ in range(n):
        next(reader)
    return dict(samples_per_s=n * cfg.train.micro_batch_size / (time.perf_counter() - start))


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("step", "loss", "loader"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--step-worker", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--loss-worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step_worker:
        return step_worker(args.step_worker, args.steps, args.warmup)
    if args.loss_worker:
        variant, b, v, k = args.loss_worker
        return loss_worker(variant, int(b), int(v), int(k))

    results = {}
    if args.only in (None, "step", "loader"):
        prepare()
    if args.only in (None, "step", "loader"):
        results["step"] = step = bench_step(args.steps, args.warmup)
        print(f"step: bare ZeRO-3 {step['bare_s'] * 1e3:.1f} ms, t2t {step['t2t_s'] * 1e3:.1f} ms "
              f"(median of {step['steps']}, 2 ranks, micro batch {step['micro_batch']}): "
              f"overhead {100 * step['overhead']:+.1f}% (target <= +10%)")
    if args.only in (None, "loss"):
        results["loss"] = rows = bench_loss(64, 128_256, 64)
        by = {r["variant"]: r for r in rows}
        for r in rows:
            print(f"loss {r['variant']:>15}: {r['time_s'] * 1e3:7.1f} ms fwd+bwd, extra memory {r['extra_mb']:7.2f} MB "
                  f"(z and its gradient: {r['grad_mb']:.1f} MB each)")
        print(f"loss: sparse extra memory / dense = {by['sparse']['extra_mb'] / by['dense']['extra_mb']:.3f} "
              f"(target <= 0.1)")
    if args.only in (None, "loader"):
        results["loader"] = loader = bench_loader(4000)
        ratio = loader["samples_per_s"] / results["step"]["rank_samples_per_s"]
        print(f"loader: {loader['samples_per_s']:.0f} samples/s in one process; one demo rank consumes "
              f"{results['step']['rank_samples_per_s']:.0f} samples/s: headroom {ratio:.1f}x (target >= 10x)")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results_train.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
