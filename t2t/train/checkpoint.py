"""Checkpoints (DeepSpeed's own, with t2t client state): tags, rotation, the checks every rank agrees on, and resume.
Export to a model directory is `t2t.train.export`'s.

Layout of a stage, `<run_dir>/<stage name>/` (the paths come from `t2t.run_paths`):

    checkpoints/step00000100/   a DeepSpeed ZeRO-3 checkpoint (one shard file per rank)
    checkpoints/latest          DeepSpeed's pointer to the newest complete one
    metrics.jsonl               rank 0's per-step metrics
    model/                      the final export (`t2t.model.export` format) + t2t_train.json

The client state holds the step, every rank's data-stream position and every rank's RNG
states. DeepSpeed writes it into rank 0's model-states file, so the per-rank values are
gathered into lists indexed by rank.

Before any rank loads a checkpoint, every rank checks its files (DeepSpeed's per-rank
`*_model_states.pt` and `*_optim_states.pt`, torch.save zip archives): one missing or cut short
would fail on some ranks only, deep inside DeepSpeed, without the file's name. `--resume auto`
then falls back to the previous checkpoint, saying which file it skipped; an explicit DIR and an
export name the file.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from t2t.errors import UserError

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^step(\d{8})$")
RANK_FILE_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")
"""DeepSpeed's per-rank files in a ZeRO-3 checkpoint (the optimizer's may carry a `bf16_` prefix)."""
ZIP_MAGIC = b"PK\x03\x04"


# ----------------------------------------------------------------------------- tags


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int:
    m = TAG_RE.match(tag)
    if not m:
        raise UserError(f"{tag!r} is not a t2t checkpoint tag (stepNNNNNNNN)")
    return int(m.group(1))


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed's `latest` file names (written only after a checkpoint is complete)."""
    f = ckpt_dir / "latest"
    return f.read_text().strip() if f.is_file() else None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """The tags up to `latest`, oldest first (newer directories are unfinished saves); `latest` itself is
    included even when its directory is gone, so that a resume reports it."""
    newest = latest_tag(ckpt_dir)
    if newest is None:
        return []
    tags = {p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name)} | {newest}
    return sorted((t for t in tags if step_of(t) <= step_of(newest)), key=step_of)


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints dir, tag) from a checkpoints dir (its newest) or from one tag directory."""
    p = Path(path)
    if (p / "latest").is_file():
        return p, latest_tag(p)
    if p.is_dir() and TAG_RE.match(p.name):
        return p.parent, p.name
    raise UserError(f"{p} is neither a checkpoints directory (with a 'latest' file) nor a stepNNNNNNNN checkpoint")


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


OLD_LAYOUT_KEY = "train.objective"
"""In the recipe identity of every checkpoint written before stages were a list (the objective, and each stage's
lr and schedule, lived in `train` then). Its identity cannot equal a stage's now, so `auto` refuses it, saying so."""


def recipe_changes(saved: dict, now: dict) -> list[str]:
    """`key: saved → now` for every field that differs."""
    return [f"{k}: {saved.get(k)!r} → {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]


def save(engine, ckpt_dir: Path, step: int, data_state: dict, keep: int, recipe: dict | None = None) -> Path:
    """Save a checkpoint on all ranks (collective), then rotate: keep the newest `keep` complete ones.

    `recipe` (`t2t.fingerprints.resume_identity`) is stored with it, so a resume under a changed recipe is caught."""
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


class UnusableCheckpoint(UserError):
    """A checkpoint that cannot be loaded, found alike on every rank; the message names the file."""


def archive_problem(path: Path) -> str | None:
    """Why `path` is not a complete torch.save file, or None.

    torch.save writes a zip archive whose central directory comes last, so a file cut short (a full
    disk, a killed copy) has none; zipfile finds that from the end of the file without reading tensors.
    A file in torch's legacy (non-zip) format is left to torch.load."""
    try:
        with path.open("rb") as f:
            head = f.read(len(ZIP_MAGIC))
        if head == ZIP_MAGIC:
            with zipfile.ZipFile(path):
                pass
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        return f"{path} is truncated or corrupt: not a complete torch.save archive ({e})"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    return None if head else f"{path} is empty"


def checkpoint_problem(tag_dir: Path, world: int = 1) -> str | None:
    """Why the checkpoint in `tag_dir` cannot load, found without loading it, or None.

    It catches what would make only some ranks fail inside DeepSpeed (one rank's file missing or
    truncated), so that all ranks can agree to skip the checkpoint. `world` ranks must find their files
    (and every rank that wrote one). A missing or empty directory fails alike on every rank: DeepSpeed
    reports it."""
    files = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
    if not files:
        return None
    found = {(int(m.group(1)), m.group(2)) for f in files if (m := RANK_FILE_RE.search(f.name))}
    for rank in range(max(world, 1 + max((r for r, _ in found), default=-1))):
        for kind in ("model", "optim"):
            if (rank, kind) not in found:
                return f"{tag_dir} has no {kind}-states file for rank {rank} (an incomplete save, or fewer ranks)"
    return next((p for p in map(archive_problem, files) if p), None)


def first_line(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message (torch's run on for paragraphs)."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def agreed(problem: str | None) -> str | None:
    """The first rank's problem when any rank has one, on every rank: all then take the same branch."""
    if not torch.distributed.is_initialized():
        return problem
    return next((p for p in gather(problem) if p), None)


def load(engine, load_dir: Path, tag: str) -> dict:
    """Load one checkpoint into the engine on every rank (collective); returns its t2t client state.

    Raises UnusableCheckpoint on every rank alike when a file is missing or truncated (checked by every
    rank before any loads) or DeepSpeed finds no checkpoint there. An error inside DeepSpeed's load becomes a
    UserError naming the checkpoint: the other ranks may be waiting in DeepSpeed's collectives by then, so
    the ranks cannot agree on trying another one."""
    problem = agreed(checkpoint_problem(load_dir / tag, world_size()))
    if problem:
        raise UnusableCheckpoint(problem)
    try:
        path, client = engine.load_checkpoint(str(load_dir), tag=tag)
    except Exception as e:  # torch.load's and DeepSpeed's many error types: the user needs the file's name
        raise UserError(f"{load_dir / tag} could not be loaded ({first_line(e)})") from e
    if path is None or not client or "t2t" not in client:
        raise UnusableCheckpoint(f"{load_dir / tag}: not a loadable t2t checkpoint")
    return client["t2t"]


def load_newest(engine, ckpt_dir: Path) -> tuple[str, dict] | None:
    """(tag, client state) of the newest checkpoint of `ckpt_dir` that loads, or None when there is none.

    An unusable newest checkpoint is skipped with a warning naming its file, for the previous one: that is
    what `train.keep_checkpoints` keeps them for. A UserError naming every file when none loads."""
    problems = []
    for tag in reversed(complete_tags(ckpt_dir)):
        try:
            state = load(engine, ckpt_dir, tag)
        except UnusableCheckpoint as e:
            problems.append(str(e))
            continue
        if problems and is_rank0():
            log.warning("%s; resuming from the previous checkpoint %s instead", "; ".join(problems), ckpt_dir / tag)
        return tag, state
    if problems:
        raise UserError(f"no checkpoint in {ckpt_dir} loads: {'; '.join(problems)}. Remove {ckpt_dir} to start "
                        "the stage over")
    return None


def refuse_to_start_over(ckpt_dir: Path) -> None:
    """`--resume never`: a UserError where the stage already holds checkpoints (launchers check it before they
    start any rank, and each rank again)."""
    if latest_tag(ckpt_dir) is not None:
        raise UserError(f"{ckpt_dir} already holds checkpoints and --resume never was given: "
                        "remove them, or resume with --resume auto")


def resume(engine, ckpt_dir: Path, mode: str, recipe: dict | None = None) -> dict | None:
    """Load a checkpoint into the engine per `--resume` (auto|force|never|DIR); returns t2t's client state or None.

    `auto` takes the newest checkpoint that loads (see `load_newest`); an explicit DIR that cannot be loaded is
    an error naming the file. With `auto`, a checkpoint written under another `recipe` (`t2t.fingerprints.resume_identity`)
    is refused, naming what changed: resuming it would silently mix two runs. `force` (the newest, like auto)
    and an explicit DIR are the user's choice (e.g. the last good checkpoint with a lower lr after a
    divergence): the differences are logged."""
    if mode == "never":
        refuse_to_start_over(ckpt_dir)
        return None
    if mode in ("auto", "force"):
        loaded = load_newest(engine, ckpt_dir)
        if loaded is None:
            return None
        load_dir, (tag, state) = ckpt_dir, loaded
    else:
        load_dir, tag = resolve_checkpoint(mode)
        state = load(engine, load_dir, tag)
    saved = state.get("recipe") or {}
    changes = recipe_changes(saved, recipe) if recipe is not None and saved else []
    if changes and mode == "auto" and OLD_LAYOUT_KEY in saved:  # its changes would list every key, not why
        raise UserError(f"{load_dir / tag} was written by an older t2t layout (before stages were a list) and is "
                        f"not resumed; remove {load_dir} to retrain the stage from its start")
    if changes and mode == "auto":
        raise UserError(f"{load_dir / tag} was written under a different recipe ({'; '.join(changes)}); resuming "
                        f"it would mix two runs. Restore those values to resume, or remove {load_dir} to start "
                        f"the stage over (or continue from it anyway with --resume force, or --resume DIR for "
                        f"another checkpoint)")
    if changes:
        log.warning("resuming %s under a changed recipe: %s", load_dir / tag, "; ".join(changes))
    log.info("resumed from %s at step %d", load_dir / tag, state["step"])
    return state
