"""The per-rank training entry: parse config → build (shards, ZeRO-3 engine, reader) → train → checkpoint → export.

Each optimizer step takes `grad_accum_steps` micro-batches per rank. The per-text losses are
summed and divided by the number of counted texts in the whole global batch (one small
all-reduce before the forwards), so for `t2t` any split over ranks and micro-steps gives the
same gradient (for `simcse` the in-batch negatives make one micro-step, gathered over ranks,
the contrastive batch: see t2t/train/loss.py). A second all-reduce after the backwards carries
the loss, a non-finite flag, the token count and the stop flag: all ranks see the same values
and decide together.

Dropout (SimCSE's two views, LoRA's) draws from each rank's global RNG, which the checkpoint
stores and a resume restores, so a resumed run repeats the uninterrupted run's masks.

Stopping: SIGTERM, SIGUSR1 (Slurm's pre-timeout signal) or a first Ctrl-C on any rank makes
every rank finish the current step, checkpoint and return. A NaN/inf loss stops before the optimizer step, with
the weights of the last good checkpoint left untouched on disk.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from t2t.config import Config
from t2t.train import checkpoint
from t2t.train.loss import objective_for

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped without touching the last good checkpoint."""


class StopSignals:
    """Records SIGTERM/SIGUSR1/SIGINT instead of dying, so the loop can checkpoint and exit cleanly.

    A second Ctrl-C (SIGINT) interrupts at once, without the checkpoint.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class MetricsLog:
    """Rank 0's metrics.jsonl; on resume the lines after the resumed step (from the lost run) are dropped."""

    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class StepResult:
    """What one optimizer step did, identical on every rank (all-reduced)."""

    loss: float
    """Mean per-text loss over the counted texts of the global batch."""
    counted: int
    """Texts of the global batch the loss counted (t2t: non-empty targets; simcse: all)."""
    tokens: int
    """Non-pad input tokens of the global batch."""
    lr: float
    """Learning rate the step used."""
    stop: bool
    """Some rank received a stop signal."""
    flags: list[float]
    """The caller's extra per-rank values, summed over ranks."""


def train_step(engine, objective, micro_batches: list[dict], world_size: int, flags: list[float] = (),
               before_update: Callable[[], None] | None = None, stop_requested: bool = False) -> StepResult:
    """One optimizer step over this rank's micro-batches; raises TrainingDiverged before updating on NaN/inf.

    The per-text loss sums are scaled by (ranks × micro-steps) / (counted texts in the global
    batch), which DeepSpeed's averaging over ranks and micro-steps turns into the global mean.
    `before_update` runs after all backwards, before the optimizer step (tests read gradients there).
    """
    gas = len(micro_batches)
    (counted,) = all_reduce_sum([sum(objective.count(b) for b in micro_batches)], engine.device)
    scale = world_size * gas / max(counted, 1.0)
    loss_sum, tokens = 0.0, 0
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        parts = objective.loss(engine, batch)
        engine.backward(parts.total * scale)
        loss_sum += parts.total.item()
        tokens += int(batch["attention_mask"].sum())
        if i < gas - 1:
            engine.step()  # DeepSpeed counts micro-steps; it updates only at the accumulation boundary
    loss_sum, nonfinite, tokens, stops, *summed = all_reduce_sum(
        [loss_sum, float(not math.isfinite(loss_sum)), tokens, float(stop_requested), *flags], engine.device)
    if nonfinite:
        raise TrainingDiverged(f"the loss is {loss_sum / max(counted, 1.0)}")
    lr = engine.get_lr()[0]
    if before_update is not None:
        before_update()
    engine.step()
    return StepResult(loss=loss_sum / max(counted, 1.0), counted=int(counted), tokens=int(tokens), lr=lr,
                      stop=bool(stops), flags=summed)


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def rank0_first(fn):
    """Run `fn` on rank 0, then on the others (e.g. building a tiny model directory exactly once)."""
    rank = torch.distributed.get_rank()
    result = fn() if rank == 0 else None
    torch.distributed.barrier()
    return result if rank == 0 else fn()


def train(cfg: Config, stage: int, resume: str = "auto") -> Path | None:
    """Train one stage on this rank. Returns the export directory, or None when stopped by a signal."""
    from t2t.train.engine import init_distributed

    total = checkpoint.stage_steps(cfg, stage)
    objective = objective_for(cfg.train.objective, cfg.train)
    rank, world = init_distributed()
    try:
        return _train(cfg, stage, resume, total, objective, rank, world)
    finally:
        torch.distributed.destroy_process_group()


def _train(cfg: Config, stage: int, resume: str, total: int, objective, rank: int, world: int) -> Path | None:
    from tqdm.auto import tqdm

    from t2t.data.stream import TargetReader, open_stage_shards
    from t2t.model import load_tokenizer, resolve_model_dir, settings_from_config
    from t2t.train.engine import build_ds_config, build_engine

    model_dir = rank0_first(lambda: resolve_model_dir(cfg.model))
    settings = settings_from_config(cfg.model)
    tokenizer = load_tokenizer(model_dir, settings.padding_side)
    shards = open_stage_shards(Path(cfg.data.shards_dir) / f"stage{stage}", cfg.model, tokenizer,
                               cfg.data.on_bad_shard)
    ds = build_ds_config(cfg)

    torch.manual_seed(cfg.seed)  # identical on every rank: LoRA adapters start the same everywhere
    engine, _ = build_engine(cfg, getattr(cfg.train, f"stage{stage}"), model_dir, ds)
    objective.prepare(engine.module)
    engine.train()  # from_pretrained leaves the model in eval mode, where dropout (SimCSE's views, LoRA's) is off
    torch.manual_seed(cfg.seed + 1 + rank)  # dropout differs per rank
    ckpt_dir = checkpoint.checkpoints_dir(cfg, stage)
    recipe = checkpoint.recipe_identity(cfg, stage)
    client = checkpoint.resume(engine, ckpt_dir, resume, recipe)
    step = client["step"] if client else 0
    if client:
        checkpoint.set_rng_state(client["rng"][rank])
    reader = TargetReader(shards, tokenizer, settings, batch_size=cfg.train.micro_batch_size, seed=cfg.seed,
                          rank=rank, world_size=world, workers=cfg.data.loader_workers,
                          shuffle_buffer=cfg.data.shuffle_buffer, on_bad_shard=cfg.data.on_bad_shard,
                          state=client["data"][rank] if client else None)
    metrics = MetricsLog(checkpoint.stage_dir(cfg, stage) / "metrics.jsonl", step) if rank == 0 else None
    stop = StopSignals()
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world
    bar = tqdm(total=total, initial=step, desc=f"stage {stage}", disable=None if rank == 0 else True)
    saved = step if client else -1
    try:
        while step < total:
            started = time.perf_counter()
            # Starting the loader draws its worker seed from the global RNG; fenced off, dropout sees the
            # same random stream in a resumed run (restored RNG, new loader) as in the uninterrupted one.
            with torch.random.fork_rng(devices=[]):
                micro = [next(reader) for _ in range(cfg.train.grad_accum_steps)]
            try:
                result = train_step(engine, objective, micro, world,
                                    flags=[len(reader.skipped), sum(b["truncated"] for b in micro)],
                                    stop_requested=stop.received is not None)
            except TrainingDiverged as e:
                raise TrainingDiverged(
                    f"stage {stage} step {step + 1}: {e}; stopped before the optimizer step. The last good "
                    f"checkpoint is {checkpoint.latest_tag(ckpt_dir) or 'none'} in {ckpt_dir}; lower "
                    f"train.stage{stage}.lr and continue from it with --resume DIR, or check the shards") from None
            step += 1
            elapsed = time.perf_counter() - started
            if rank == 0:
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}")
                if step % cfg.train.log_every == 0 or step == total:
                    grad_norm = engine.get_global_grad_norm()
                    metrics.write(dict(step=step, loss=result.loss, lr=result.lr,
                                       grad_norm=None if grad_norm is None else float(grad_norm),
                                       samples_per_s=global_batch / elapsed, tokens_per_s=result.tokens / elapsed,
                                       texts_counted=result.counted, texts_truncated=int(result.flags[1]),
                                       skipped_shards=int(result.flags[0])))
            if step % cfg.train.save_every == 0 or step == total or result.stop:
                checkpoint.save(engine, ckpt_dir, step, reader.state_dict(), cfg.train.keep_checkpoints, recipe)
                saved = step
            if result.stop:
                log.warning("rank %d: stop signal received; checkpointed at step %d, exiting", rank, step)
                return None
        if saved != step:  # a run configured with 0 steps: its "final checkpoint" is the start
            checkpoint.save(engine, ckpt_dir, step, reader.state_dict(), cfg.train.keep_checkpoints, recipe)
        if rank == 0:
            checkpoint.export_checkpoint(cfg, stage)
        torch.distributed.barrier()
        return checkpoint.export_dir(cfg, stage)
    finally:
        stop.restore()
        bar.close()
        reader.close()
