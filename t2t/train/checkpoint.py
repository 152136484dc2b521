"""Checkpoints (DeepSpeed's own, with t2t client state), rotation, resume, and export to a model directory.

Layout of a stage, `<run_dir>/stage{N}/`:

    checkpoints/step00000100/   a DeepSpeed ZeRO-3 checkpoint (one shard file per rank)
    checkpoints/latest          DeepSpeed's pointer to the newest complete one
    metrics.jsonl               rank 0's per-step metrics
    model/                      the final export (`t2t.model.export` format) + t2t_train.json

The client state holds the step, every rank's data-stream position and every rank's RNG
states. DeepSpeed writes it into rank 0's model-states file, so the per-rank values are
gathered into lists indexed by rank.

Export (`t2t export`, and the trainer at its end) consolidates the fp32 master weights of a
checkpoint with DeepSpeed's `zero_to_fp32` reader (lazily, one tensor at a time), copies the trained
ones into the fp32 start model, merges LoRA adapters if any, and writes the model directory.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from t2t.config import Config

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^step(\d{8})$")
TRAIN_INFO = "t2t_train.json"


# ----------------------------------------------------------------------------- paths


def stage_dir(cfg: Config, stage: int) -> Path:
    return Path(cfg.run_dir) / f"stage{stage}"


def checkpoints_dir(cfg: Config, stage: int) -> Path:
    return stage_dir(cfg, stage) / "checkpoints"


def export_dir(cfg: Config, stage: int) -> Path:
    return stage_dir(cfg, stage) / "model"


def stage_steps(cfg: Config, stage: int) -> int:
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return getattr(cfg.train, f"stage{stage}").steps


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int:
    m = TAG_RE.match(tag)
    if not m:
        raise ValueError(f"{tag!r} is not a t2t checkpoint tag (stepNNNNNNNN)")
    return int(m.group(1))


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed's `latest` file names (written only after a checkpoint is complete)."""
    f = ckpt_dir / "latest"
    return f.read_text().strip() if f.is_file() else None


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints dir, tag) from a checkpoints dir (its newest) or from one tag directory."""
    p = Path(path)
    if (p / "latest").is_file():
        return p, latest_tag(p)
    if p.is_dir() and TAG_RE.match(p.name):
        return p.parent, p.name
    raise ValueError(f"{p} is neither a checkpoints directory (with a 'latest' file) nor a stepNNNNNNNN checkpoint")


# ----------------------------------------------------------------------------- client state


def rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather(obj) -> list:
    """Every rank's `obj`, indexed by rank (on every rank)."""
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- save / resume


# Fields a resumed stage may change: how far it trains, how it checkpoints and logs, not what it trains.
RESUMABLE = {"save_every", "keep_checkpoints", "log_every", "nproc"}


def recipe_identity(cfg: Config, stage: int) -> dict:
    """The recipe fields that decide what stage `stage` trains, flattened to `section.key`. A checkpoint
    resumes only under the same ones (its step count may grow)."""
    from t2t.config import to_dict

    d = to_dict(cfg)
    train = {k: v for k, v in d["train"].items() if k not in RESUMABLE and not k.startswith("stage")}
    train[f"stage{stage}"] = {k: v for k, v in d["train"][f"stage{stage}"].items() if k != "steps"}
    flat = {"seed": d["seed"]}
    for section, values in (("model", d["model"]), ("data", d["data"]), ("train", train)):
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    return flat


def recipe_changes(saved: dict, now: dict) -> list[str]:
    """`key: saved → now` for every field that differs."""
    return [f"{k}: {saved.get(k)!r} → {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def save(engine, ckpt_dir: Path, step: int, data_state: dict, keep: int, recipe: dict | None = None) -> Path:
    """Save a checkpoint on all ranks (collective), then rotate: keep the newest `keep` complete ones.

    `recipe` (see `recipe_identity`) is stored with it, so a resume under a changed recipe is caught."""
    client = dict(step=step, data=gather(data_state), rng=gather(rng_state()), recipe=recipe)
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=dict(t2t=client))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        rotate(ckpt_dir, keep)
    torch.distributed.barrier()
    return ckpt_dir / tag


def rotate(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints up to `latest` (and any unfinished newer ones)."""
    newest = latest_tag(ckpt_dir)
    if newest is None:
        return
    limit = step_of(newest)
    tags = sorted((p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name)), key=step_of)
    kept = [t for t in tags if step_of(t) <= limit][-keep:]
    for t in tags:
        if t not in kept:
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)
            log.info("removed old checkpoint %s", ckpt_dir / t)


def resume(engine, ckpt_dir: Path, mode: str, recipe: dict | None = None) -> dict | None:
    """Load a checkpoint into the engine per `--resume` (auto|never|DIR); returns t2t's client state or None.

    With `auto`, a checkpoint written under another `recipe` (see `recipe_identity`) is refused, naming what
    changed: resuming it would silently mix two runs. An explicit DIR is the user's choice (e.g. the last good
    checkpoint with a lower lr after a divergence): the differences are logged."""
    if mode == "never":
        if latest_tag(ckpt_dir) is not None:
            raise ValueError(f"{ckpt_dir} already holds checkpoints and --resume never was given: "
                             "remove them, or resume with --resume auto")
        return None
    if mode == "auto":
        if latest_tag(ckpt_dir) is None:
            return None
        load_dir, tag = ckpt_dir, latest_tag(ckpt_dir)
    else:
        load_dir, tag = resolve_checkpoint(mode)
    path, client = engine.load_checkpoint(str(load_dir), tag=tag)
    if path is None or not client or "t2t" not in client:
        raise ValueError(f"{load_dir / tag}: not a loadable t2t checkpoint")
    state = client["t2t"]
    changes = recipe_changes(state.get("recipe") or {}, recipe) if recipe is not None and state.get("recipe") else []
    if changes and mode == "auto":
        raise ValueError(f"{load_dir / tag} was written under a different recipe ({'; '.join(changes)}); resuming "
                         f"it would mix two runs. Restore those values to resume, or remove {load_dir} to start "
                         f"the stage over (or name the checkpoint with --resume DIR to continue from it anyway)")
    if changes:
        log.warning("resuming %s under a changed recipe: %s", load_dir / tag, "; ".join(changes))
    log.info("resumed from %s at step %d", load_dir / tag, state["step"])
    return state


# ----------------------------------------------------------------------------- export


def export_checkpoint(cfg: Config, stage: int, checkpoint: str | Path | None = None,
                      out: str | Path | None = None) -> Path:
    """Consolidate a ZeRO-3 checkpoint (default: the stage's newest) into a model directory (default: stage/model)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from t2t.model import Embedder, export, load_lm, load_tokenizer, resolve_model_dir, settings_from_config
    from t2t.train.engine import apply_trainable_policy, trainable_names

    load_dir, tag = resolve_checkpoint(checkpoint if checkpoint is not None else checkpoints_dir(cfg, stage))
    out = Path(out) if out is not None else export_dir(cfg, stage)
    model_dir = resolve_model_dir(cfg.model)
    lazy = get_fp32_state_dict_from_zero_checkpoint(str(load_dir), tag=tag, lazy_mode=True)
    # Exports are fp32. Only the weights that trained come from the checkpoint's fp32 master copy; the
    # frozen ones (LM head, embeddings, a LoRA base) come from the start model, untouched by any bf16 cast.
    lm = apply_trainable_policy(load_lm(model_dir, "float32"), cfg)
    params = dict(lm.named_parameters())
    names = {k.removeprefix("lm."): k for k in lazy}
    trained = trainable_names(lm)
    missing = sorted(set(trained) - set(names))
    if missing:
        raise ValueError(f"{load_dir / tag} does not fit the model in {model_dir} (train.lora and "
                         f"train.train_embeddings set the same?): missing {missing[:5]}")
    with torch.no_grad():
        for name in trained:
            params[name].copy_(lazy[names[name]].contiguous())
    if cfg.train.lora is not None:
        lm = lm.merge_and_unload()
    settings = settings_from_config(cfg.model)
    export(Embedder(lm, load_tokenizer(model_dir, settings.padding_side), settings), out)
    info = dict(stage=stage, steps=step_of(tag), checkpoint=str(load_dir / tag), lora=cfg.train.lora is not None)
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported %s to %s", load_dir / tag, out)
    return out


def stage_complete(cfg: Config, stage: int) -> bool:
    """True when the stage's final export exists, loads as a model directory and covers all configured steps."""
    from t2t.model import check_model_dir

    out = export_dir(cfg, stage)
    try:
        check_model_dir(out)
        info = json.loads((out / TRAIN_INFO).read_text())
    except (ValueError, OSError):
        return False
    return (out / "t2t_config.json").is_file() and info.get("stage") == stage and \
        info.get("steps") == stage_steps(cfg, stage)
