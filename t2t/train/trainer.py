"""The per-rank training entry of one stage (by name): `train(cfg, stage)` runs a `TrainState` in three phases,
build (shards, ZeRO-3 engine, resumed checkpoint, reader) → run (optimizer steps, checkpoints, export) → close.

Each optimizer step takes `grad_accum_steps` micro-batches per rank. The per-text losses are
summed and divided by the number of counted texts in the whole global batch (one small
all-reduce before the forwards; a `sum` of objectives divides each part by its own count and adds them with their
weights, t2t/objectives/sum.py), so for `t2t` any split over ranks and micro-steps gives the
same gradient (for `simcse` the in-batch negatives make one micro-step, gathered over ranks,
the contrastive batch: see t2t/train/loss.py). A second all-reduce after the backwards carries
the loss, a non-finite flag, the token count and the stop flag: all ranks see the same values
and decide together.

Dropout (SimCSE's two views, LoRA's) draws from each rank's global RNG, which the checkpoint
stores and a resume restores, so a resumed run repeats the uninterrupted run's masks.

Stopping: SIGTERM, SIGUSR1 (Slurm's pre-timeout signal) or a first Ctrl-C on any rank makes
every rank finish the current step, checkpoint and return. A NaN/inf loss stops before the optimizer step, with
the weights of the last good checkpoint left untouched on disk. The loss is that of the weights *before* the
step's update, so before each checkpoint the updated weights get no-grad forwards of their own, on the step's
last micro-batch and on a fixed probe of random tokens (t2t/train/checks.py): if either shows them broken, the run
stops without saving them. A global gradient norm of exactly 0 for
`train.stop_after_zero_grad_steps` steps in a row (a collapsed model, which trains no further) stops the run too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from t2t import run_paths
from t2t.config import Config
from t2t.fingerprints import resume_identity
from t2t.train import checkpoint
from t2t.train.checks import all_reduce_sum, grad_norm_is_zero, probe_batch, problem_after_update, to_device
from t2t.train.export import export_checkpoint
from t2t.train.loss import objective_for
from t2t.train.monitor import MetricsLog, StepClock, mfu, run_dtype
from t2t.train.rank import PeerLost, lost_peer
from t2t.train.signals import STOP_SIGNALS, StopSignals  # noqa: F401 - StopSignals lives there (re-exported)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped without touching the last good checkpoint."""


class TrainingCollapsed(TrainingDiverged):
    """The global gradient norm was exactly 0 for `train.stop_after_zero_grad_steps` steps in a row."""


@dataclass
class StepResult:
    """What one optimizer step did, identical on every rank (all-reduced)."""

    loss: float
    """Mean per-text loss over the counted texts of the global batch; for a `sum`, Σ weight × each part's own mean."""
    counted: int | None
    """Texts of the global batch the loss counted (t2t: non-empty targets; simcse: all; mntp: masked tokens); None for
    a `sum`, whose parts count their own (`parts`)."""
    tokens: int
    """Non-pad input tokens of the global batch."""
    lr: float
    """Learning rate the step used."""
    stop: bool
    """Some rank received a stop signal."""
    flags: list[float]
    """The caller's extra per-rank values, summed over ranks."""
    parts: dict[str, tuple[float, int]] = field(default_factory=dict)
    """A `sum`'s parts by name: each one's own mean loss and its count over the global batch (empty otherwise)."""


def train_step(engine, objective, micro_batches: list[dict], world_size: int, flags: list[float] = (),
               before_update: Callable[[], None] | None = None, stop_requested: bool = False,
               clock: StepClock | None = None) -> StepResult:
    """One optimizer step over this rank's micro-batches; raises TrainingDiverged before updating on NaN/inf.

    Each term of the objective (one, or a `sum`'s parts: `objective.terms`) has its per-text loss sum scaled by
    weight × (ranks × micro-steps) / (the texts it counted in the global batch), which DeepSpeed's averaging over
    ranks and micro-steps turns into weight × its global mean; one backward takes their sum.
    `before_update` runs after all backwards, before the optimizer step (tests read gradients there).
    `clock` (a `t2t.train.monitor.StepClock`) gets the seconds of each phase.
    """
    clock = clock or StepClock()
    gas = len(micro_batches)
    terms = objective.terms
    with clock.phase("comm_s"):  # one count per term, all in one all-reduce
        counted = all_reduce_sum([sum(term.count(b) for b in micro_batches) for term, _ in terms], engine.device)
    scales = [weight * (world_size * gas / max(n, 1.0)) for (_, weight), n in zip(terms, counted)]
    loss_sums, tokens = [0.0] * len(terms), 0
    for i, batch in enumerate(micro_batches):
        with clock.phase("compute_s"):
            batch = to_device(batch, engine.device)
            losses = [term.loss(engine, batch) for term, _ in terms]
            scaled = [parts.total * scale for parts, scale in zip(losses, scales)]
            engine.backward(sum(scaled[1:], scaled[0]))  # one term: its own scaled loss, as it is
            loss_sums = [acc + parts.total.item() for acc, parts in zip(loss_sums, losses)]
        tokens += int(batch["attention_mask"].sum())
        if i < gas - 1:
            with clock.phase("compute_s"):
                engine.step()  # DeepSpeed counts micro-steps; it updates only at the accumulation boundary
    n_terms = len(terms)
    with clock.phase("comm_s"):
        reduced = all_reduce_sum([*loss_sums, float(not all(map(math.isfinite, loss_sums))), tokens,
                                  float(stop_requested), *flags], engine.device)
    loss_sums, (nonfinite, tokens, stops, *summed) = reduced[:n_terms], reduced[n_terms:]
    means = [total / max(n, 1.0) for total, n in zip(loss_sums, counted)]
    loss = sum(weight * mean for (_, weight), mean in zip(terms, means))
    parts = {} if n_terms == 1 else {term.name: (mean, int(n)) for (term, _), mean, n in zip(terms, means, counted)}
    if nonfinite:
        each = f" ({', '.join(f'{name} {mean}' for name, (mean, _) in parts.items())})" if parts else ""
        raise TrainingDiverged(f"the loss is {loss}{each}")
    lr = engine.get_lr()[0]
    if before_update is not None:
        before_update()
    with clock.phase("optimizer_s"):
        engine.step()
    return StepResult(loss=loss, counted=int(counted[0]) if n_terms == 1 else None, tokens=int(tokens), lr=lr,
                      stop=bool(stops), flags=summed, parts=parts)


def apply_recipe_lr(engine, lr: float) -> None:
    """Make the recipe's peak `lr` the one that trains on after a resume.

    A checkpoint restores the optimizer's lr and the schedule's base lr with the rest of their state, so
    `--resume DIR` with a lowered stages.<name>.lr (the way on after a divergence) would train on with the
    old one. The schedule's shape is the recipe's already (LambdaLR does not save its lambdas); with an
    unchanged lr this recomputes the very values the schedule set."""
    schedule = engine.lr_scheduler
    schedule.base_lrs = [lr] * len(schedule.base_lrs)
    for group, factor in zip(schedule.optimizer.param_groups, schedule.lr_lambdas):
        group["lr"] = lr * factor(schedule.last_epoch)


def continue_hint(stage: str, ckpt_dir: Path, good: str | None) -> str:
    """Where to go on from after a stop: the good checkpoint `good`, or the start."""
    if good is None:
        return f"no good checkpoint is kept in {ckpt_dir}; lower stages.{stage}.lr and start the stage over"
    return (f"the newest good checkpoint is {good} in {ckpt_dir}; lower stages.{stage}.lr and continue "
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


def train(cfg: Config, stage: str, resume: str = "auto") -> Path | None:
    """Train stage `stage` (a name) on this rank, from the model it starts from (`run_paths.for_stage`).
    Returns the export directory, or None when stopped by a signal."""
    from t2t.train.engine import init_distributed

    run_paths.check_start_attention(cfg, stage)
    cfg = run_paths.for_stage(cfg, stage)
    objective = objective_for(cfg.stage(stage).objective, cfg.seed)
    rank, world = init_distributed()
    state = None
    try:
        state = TrainState.build(cfg, stage, resume, objective, rank, world)
        try:
            return state.run()
        finally:
            state.close()
    except Exception as e:  # noqa: BLE001 - only a lost peer is named here; anything else goes on as it is
        cause = lost_peer(e)
        if cause is None:
            raise
        raise PeerLost(cause, None if state is None else state.step) from e
    finally:
        torch.distributed.destroy_process_group()


@dataclass
class TrainState:
    """One rank's run of one stage, in three phases: `build` (tokenizer, shards, ZeRO-3 engine, the resumed
    checkpoint, the data reader), `run` (`advance` one optimizer step at a time until the stage's last step, a
    stop signal or a fault, then the final checkpoint and the export) and `close`.

    `step` is the last finished optimizer step: a lost peer is reported after it (`t2t.train.rank.PeerLost`)."""

    cfg: Config
    """The recipe as the stage runs it (`run_paths.for_stage`)."""
    stage: str
    rank: int
    world: int
    total: int
    """The stage's optimizer steps."""
    engine: Any
    objective: Any
    reader: Any
    """The rank's `TargetReader`."""
    ckpt_dir: Path
    recipe: dict
    """What the stage trains (`t2t.fingerprints.resume_identity`), stored with every checkpoint."""
    metrics: MetricsLog | None
    """Rank 0's metrics.jsonl (None on the other ranks)."""
    stop: StopSignals
    bar: Any
    step: int
    """Optimizer steps finished (at the start: those of the resumed checkpoint)."""
    saved: int
    """The step of the newest checkpoint written or resumed from (-1: none)."""
    model_params: int = 0
    """The backbone's non-embedding parameters (MFU counts 6 training FLOPs each per real token)."""
    peak_flops: float | None = None
    """One rank's matmul peak (`train.peak_flops`, or timed at the start); None: unknown. MFU is against it × ranks."""
    zero_grad_steps: int = 0
    """Steps in a row whose global gradient norm was exactly 0."""
    probe: dict | None = None
    """The fixed random-token batch every checkpoint's weights are checked on (`checks.probe_batch`)."""

    @classmethod
    def build(cls, cfg: Config, stage: str, resume: str, objective, rank: int, world: int) -> "TrainState":
        """Everything a rank trains with, the checkpoint `resume` names (see `checkpoint.resume`) loaded."""
        from tqdm.auto import tqdm

        from t2t.data.stream import TargetReader, open_stage_shards
        from t2t.identity import EmbeddingIdentity
        from t2t.model import load_tokenizer, resolve_model_dir
        from t2t.train.ds_config import build_ds_config
        from t2t.train.engine import build_engine, resident_on_one_rank
        from t2t.train.monitor import add_monitors, comms_logging, measure_peak_flops, non_embedding_params

        own = cfg.stage(stage)
        model_dir = rank0_first(lambda: resolve_model_dir(cfg.model))
        if rank == 0:
            log.info("%s: trains %s (start: %s) with the %s objective", stage, model_dir, own.start, own.objective.name)
        settings = EmbeddingIdentity.of(cfg.model)
        tokenizer = load_tokenizer(model_dir, settings.padding_side)
        shards = open_stage_shards(run_paths.shards_dir(cfg, stage), cfg.model, tokenizer, cfg.data.on_bad_shard)
        ds = build_ds_config(cfg)
        ds = add_monitors(ds, cfg.train.monitors, run_paths.stage_dir(cfg, stage) / "monitor", stage)
        ds = comms_logging(resident_on_one_rank(ds, world), world)

        torch.manual_seed(cfg.seed)  # identical on every rank: LoRA adapters start the same everywhere
        engine, _ = build_engine(cfg, own, model_dir, ds)
        objective.prepare(engine.module)
        engine.train()  # from_pretrained leaves the model in eval mode, where dropout (SimCSE's views, LoRA's) is off
        torch.manual_seed(cfg.seed + 1 + rank)  # dropout differs per rank
        ckpt_dir = run_paths.checkpoints_dir(cfg, stage)
        recipe = resume_identity(cfg, stage)
        client = checkpoint.resume(engine, ckpt_dir, resume, recipe)
        step = client["step"] if client else 0
        if client:
            checkpoint.set_rng_state(client["rng"][rank])
            apply_recipe_lr(engine, own.lr)
        reader = TargetReader(shards, tokenizer, settings, batch_size=cfg.train.micro_batch_size, seed=cfg.seed,
                              rank=rank, world_size=world, workers=cfg.data.loader_workers,
                              shuffle_buffer=cfg.data.shuffle_buffer, on_bad_shard=cfg.data.on_bad_shard,
                              length_group=cfg.data.length_group, state=client["data"][rank] if client else None)
        metrics = MetricsLog(run_paths.metrics_file(cfg, stage), step) if rank == 0 else None
        peak = cfg.train.peak_flops or None
        if rank == 0 and peak is None:
            peak = measure_peak_flops(run_dtype(ds), engine.device)
            log.info("%s: matmul peak %s (MFU is measured against it)", stage,
                     "unknown" if peak is None else f"{peak / 1e9:.0f} GFLOP/s")
        stop = StopSignals()
        bar = tqdm(total=own.steps, initial=step, desc=stage, disable=None if rank == 0 else True)
        return cls(cfg=cfg, stage=stage, rank=rank, world=world, total=own.steps, engine=engine, objective=objective,
                   reader=reader, ckpt_dir=ckpt_dir, recipe=recipe, metrics=metrics, stop=stop, bar=bar, step=step,
                   saved=step if client else -1, model_params=non_embedding_params(engine.module.lm),
                   peak_flops=peak, probe=probe_batch(min(len(tokenizer), engine.module.lm.config.vocab_size),
                                                      settings.max_length, cfg.seed))

    def run(self) -> Path | None:
        """Train to the stage's last step and export; None when a stop signal ended the run (checkpointed)."""
        while self.step < self.total:
            if self.advance():
                return None
        return self.finish()

    def advance(self) -> bool:
        """One optimizer step, its metrics line, the collapse check and, when due, a checkpoint. True when a stop
        signal reached some rank: the step is checkpointed and the run ends."""
        train = self.cfg.train
        started = time.perf_counter()
        clock = StepClock()
        # Starting the loader draws its worker seed from the global RNG; fenced off, dropout sees the
        # same random stream in a resumed run (restored RNG, new loader) as in the uninterrupted one.
        with torch.random.fork_rng(devices=[]), clock.phase("data_wait_s"):
            micro = [self.objective.prepare_batch(next(self.reader)) for _ in range(train.grad_accum_steps)]
        try:
            result = train_step(self.engine, self.objective, micro, self.world,
                                flags=[len(self.reader.skipped), sum(b["truncated"] for b in micro)],
                                stop_requested=self.stop.received is not None, clock=clock)
        except TrainingDiverged as e:
            raise TrainingDiverged(
                f"{self.stage} step {self.step + 1}: {e}; stopped before the optimizer step: "
                f"{self.continue_hint(checkpoint.latest_tag(self.ckpt_dir))}, or check the shards") from None
        self.step += 1
        elapsed = time.perf_counter() - started
        if self.rank == 0:
            self.log_step(result, elapsed, clock.seconds)
        self.check_collapse()
        if self.step % train.save_every == 0 or self.step == self.total or result.stop:
            self.save_checked(micro[-1])
        if result.stop:
            log.warning("rank %d: stop signal received; checkpointed at step %d, exiting", self.rank, self.step)
            return True
        return False

    def log_step(self, result: StepResult, elapsed: float, phases: dict[str, float]) -> None:
        """Rank 0: the progress bar and, every `train.log_every` steps and at the last, a metrics line, in
        metrics.jsonl and through DeepSpeed's monitor (t2t/train/monitor.py)."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}")
        if self.step % self.cfg.train.log_every == 0 or self.step == self.total:
            grad_norm = self.engine.get_global_grad_norm()
            global_batch = self.cfg.train.micro_batch_size * self.cfg.train.grad_accum_steps * self.world
            tokens_per_s = result.tokens / elapsed
            each = {f"loss_{name}": loss for name, (loss, _) in result.parts.items()}  # a `sum`'s parts
            each.update({f"texts_counted_{name}": counted for name, (_, counted) in result.parts.items()})
            record = dict(step=self.step, loss=result.loss, **each, lr=result.lr,
                          grad_norm=None if grad_norm is None else float(grad_norm),
                          samples_per_s=global_batch / elapsed, tokens_per_s=tokens_per_s,
                          mfu=mfu(self.model_params, tokens_per_s, self.peak_flops and self.peak_flops * self.world),
                          step_s=elapsed, **{k: round(v, 6) for k, v in phases.items()},
                          texts_counted=result.counted, texts_truncated=int(result.flags[1]),
                          skipped_shards=int(result.flags[0]))
            self.metrics.write(record)
            if self.engine.monitor.enabled:
                self.engine.monitor.write_events([(f"t2t/{k}", v, self.step) for k, v in record.items()
                                                  if k != "step" and isinstance(v, (int, float))])

    def check_collapse(self) -> None:
        """Raise TrainingCollapsed after `train.stop_after_zero_grad_steps` steps in a row with a zero gradient."""
        collapse_after = self.cfg.train.stop_after_zero_grad_steps
        self.zero_grad_steps = self.zero_grad_steps + 1 if collapse_after and grad_norm_is_zero(self.engine) else 0
        if collapse_after and self.zero_grad_steps >= collapse_after:
            step = self.step
            first = step - self.zero_grad_steps + 1  # its norm is that of the weights after step first - 1
            cause = f"the update of step {first - 1} collapsed the model" if first > 1 else "nothing trains"
            raise TrainingCollapsed(
                f"{self.stage} step {step}: the gradient norm was exactly 0 for {self.zero_grad_steps} steps in a "
                f"row (steps {first}-{step}): {cause}, so the run stopped without checkpointing it; "
                f"{self.continue_hint(newest_tag_before(self.ckpt_dir, first - 1))}")

    def save_checked(self, batch: dict) -> None:
        """Checkpoint the current weights, once forwards on `batch` and the probe show them good (else
        TrainingDiverged)."""
        problem = problem_after_update(self.engine, self.objective, batch, self.probe)
        if problem:
            raise TrainingDiverged(
                f"{self.stage} step {self.step}: the weights after its optimizer step {problem}, so step "
                f"{self.step} was NOT checkpointed; "
                f"{self.continue_hint(checkpoint.latest_tag(self.ckpt_dir))}, or check the shards")
        self.save()

    def save(self) -> None:
        checkpoint.save(self.engine, self.ckpt_dir, self.step, self.reader.state_dict(),
                        self.cfg.train.keep_checkpoints, self.recipe)
        self.saved = self.step

    def finish(self) -> Path:
        """The final checkpoint (unless the last step saved it) and rank 0's export; returns the export directory."""
        if self.saved != self.step:  # a run configured with 0 steps: its "final checkpoint" is the start
            self.save()
        if self.rank == 0:
            export_checkpoint(self.cfg, self.stage)
        torch.distributed.barrier()
        return run_paths.export_dir(self.cfg, self.stage)

    def continue_hint(self, good: str | None) -> str:
        return continue_hint(self.stage, self.ckpt_dir, good)

    def close(self) -> None:
        """Restore the signal handlers, close the progress bar and stop the reader's loader processes."""
        self.stop.restore()
        self.bar.close()
        self.reader.close()
