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
the weights of the last good checkpoint left untouched on disk. The loss is that of the weights *before* the
step's update, so before each checkpoint the updated weights get a no-grad forward of their own on the step's
last micro-batch: if it is not finite the run stops without saving them, and every checkpoint on disk is one
whose export embeds to finite vectors. A global gradient norm of exactly 0 for
`train.stop_after_zero_grad_steps` steps in a row (a collapsed model, which trains no further) stops the run too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from t2t.config import Config
from t2t.train import checkpoint
from t2t.train.loss import objective_for
from t2t.train.signals import STOP_SIGNALS, StopSignals  # noqa: F401 - StopSignals lives there (re-exported)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped without touching the last good checkpoint."""


class TrainingCollapsed(TrainingDiverged):
    """The global gradient norm was exactly 0 for `train.stop_after_zero_grad_steps` steps in a row."""


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
        batch = to_device(batch, engine.device)
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


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def outputs_are_finite(engine, objective, batch: dict) -> bool:
    """Whether the weights as they are now give a finite loss and finite outputs on `batch`, on every rank.

    `train_step` checks the loss of the weights before its update, so the update that blows up would
    otherwise be checkpointed. No grad and eval mode (no dropout), the RNG fenced off: the training that
    follows is bit-identical to a run without this check. Collective: under ZeRO-3 the forward gathers the
    parameters from every rank."""
    outputs = []

    def model(*args):
        out = engine(*args)
        outputs.extend(out if isinstance(out, (tuple, list)) else [out])
        return out

    engine.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            parts = objective.loss(model, to_device(batch, engine.device))
            bad = sum(not bool(torch.isfinite(t).all()) for t in (parts.total, *outputs) if t is not None)
    finally:
        engine.train()
    (bad,) = all_reduce_sum([float(bad)], engine.device)
    return bad == 0


def grad_norm_is_zero(engine) -> bool:
    """Whether the last optimizer step's global gradient norm was exactly 0, decided alike on every rank.

    The norm is already global (DeepSpeed all-reduces it), but a rank that saw otherwise must not stop alone."""
    norm = engine.get_global_grad_norm()
    zero = norm is not None and float(norm) == 0.0
    (zeros,) = all_reduce_sum([float(zero)], engine.device)
    return zeros == torch.distributed.get_world_size()


def apply_recipe_lr(engine, lr: float) -> None:
    """Make the recipe's peak `lr` the one that trains on after a resume.

    A checkpoint restores the optimizer's lr and the schedule's base lr with the rest of their state, so
    `--resume DIR` with a lowered train.stageN.lr (the way on after a divergence) would train on with the
    old one. The schedule's shape is the recipe's already (LambdaLR does not save its lambdas); with an
    unchanged lr this recomputes the very values the schedule set."""
    schedule = engine.lr_scheduler
    schedule.base_lrs = [lr] * len(schedule.base_lrs)
    for group, factor in zip(schedule.optimizer.param_groups, schedule.lr_lambdas):
        group["lr"] = lr * factor(schedule.last_epoch)


def continue_hint(stage: int, ckpt_dir: Path, good: str | None) -> str:
    """Where to go on from after a stop: the good checkpoint `good`, or the start."""
    if good is None:
        return f"no good checkpoint is kept in {ckpt_dir}; lower train.stage{stage}.lr and start the stage over"
    return (f"the newest good checkpoint is {good} in {ckpt_dir}; lower train.stage{stage}.lr and continue "
            f"from it with --resume {ckpt_dir / good}")


def newest_tag_before(ckpt_dir: Path, step: int) -> str | None:
    """The newest complete checkpoint saved before `step`."""
    return next((t for t in reversed(checkpoint.complete_tags(ckpt_dir)) if checkpoint.step_of(t) < step), None)


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
        apply_recipe_lr(engine, getattr(cfg.train, f"stage{stage}").lr)
    reader = TargetReader(shards, tokenizer, settings, batch_size=cfg.train.micro_batch_size, seed=cfg.seed,
                          rank=rank, world_size=world, workers=cfg.data.loader_workers,
                          shuffle_buffer=cfg.data.shuffle_buffer, on_bad_shard=cfg.data.on_bad_shard,
                          state=client["data"][rank] if client else None)
    metrics = MetricsLog(checkpoint.stage_dir(cfg, stage) / "metrics.jsonl", step) if rank == 0 else None
    stop = StopSignals()
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world
    bar = tqdm(total=total, initial=step, desc=f"stage {stage}", disable=None if rank == 0 else True)
    saved = step if client else -1
    collapse_after, zero_grad_steps = cfg.train.stop_after_zero_grad_steps, 0
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
                    f"stage {stage} step {step + 1}: {e}; stopped before the optimizer step: "
                    f"{continue_hint(stage, ckpt_dir, checkpoint.latest_tag(ckpt_dir))}, or check the shards") from None
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
            zero_grad_steps = zero_grad_steps + 1 if collapse_after and grad_norm_is_zero(engine) else 0
            if collapse_after and zero_grad_steps >= collapse_after:
                first = step - zero_grad_steps + 1  # its norm is that of the weights after step first - 1
                cause = f"the update of step {first - 1} collapsed the model" if first > 1 else "nothing trains"
                raise TrainingCollapsed(
                    f"stage {stage} step {step}: the gradient norm was exactly 0 for {zero_grad_steps} steps in a "
                    f"row (steps {first}-{step}): {cause}, so the run stopped without checkpointing it; "
                    f"{continue_hint(stage, ckpt_dir, newest_tag_before(ckpt_dir, first - 1))}")
            if step % cfg.train.save_every == 0 or step == total or result.stop:
                if not outputs_are_finite(engine, objective, micro[-1]):
                    raise TrainingDiverged(
                        f"stage {stage} step {step}: the weights after its optimizer step give a non-finite loss or "
                        f"output, so step {step} was NOT checkpointed; "
                        f"{continue_hint(stage, ckpt_dir, checkpoint.latest_tag(ckpt_dir))}, or check the shards")
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
