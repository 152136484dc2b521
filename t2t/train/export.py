"""Export (`t2t export`, and the trainer at its end): a checkpoint's fp32 master weights, consolidated with
DeepSpeed's `zero_to_fp32` reader (lazily, one tensor at a time), copied into the fp32 start model where they
trained, LoRA adapters merged, written as a model directory (`t2t.model.export` format) with `t2t_train.json`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from t2t.config import Config
from t2t.errors import UserError
from t2t.run_paths import checkpoints_dir, export_dir, for_stage

log = logging.getLogger(__name__)

TRAIN_INFO = "t2t_train.json"
"""Written last into a stage's export: the stage, its steps and the checkpoint it came from (an export without it
is unfinished)."""


class CheckpointUnreadable(UserError):
    """A checkpoint that cannot be exported: `problem` says which and why, the message adds what to do."""

    def __init__(self, problem: str, hint: str = ""):
        super().__init__(f"{problem}; {hint}" if hint else problem)
        self.problem = problem


def export_checkpoint(cfg: Config, stage: str, checkpoint: str | Path | None = None,
                      out: str | Path | None = None) -> Path:
    """Consolidate a ZeRO-3 checkpoint of stage `stage` (default: its newest) into a model directory (default: the
    stage's `model/`). The frozen weights come from the model the stage starts from (`run_paths.for_stage`)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from t2t.train.checkpoint import checkpoint_problem, first_line, resolve_checkpoint, step_of

    from t2t.identity import EmbeddingIdentity
    from t2t.model import Embedder, export, load_lm, load_tokenizer, resolve_model_dir
    from t2t.train.engine import apply_trainable_policy, trainable_names

    cfg = for_stage(cfg, stage)
    load_dir, tag = resolve_checkpoint(checkpoint if checkpoint is not None else checkpoints_dir(cfg, stage))
    problem = checkpoint_problem(load_dir / tag)
    if problem:
        raise CheckpointUnreadable(problem, "export another checkpoint with --checkpoint DIR")
    out = Path(out) if out is not None else export_dir(cfg, stage)
    model_dir = resolve_model_dir(cfg.model)
    try:
        lazy = get_fp32_state_dict_from_zero_checkpoint(str(load_dir), tag=tag, lazy_mode=True)
    except Exception as e:  # torch.load's and zero_to_fp32's many error types: the user needs the checkpoint's name
        raise CheckpointUnreadable(f"{load_dir / tag} could not be read ({first_line(e)})") from e
    # Exports are fp32. Only the weights that trained come from the checkpoint's fp32 master copy; the
    # frozen ones (LM head, embeddings, a LoRA base) come from the start model, untouched by any bf16 cast.
    lm = apply_trainable_policy(load_lm(model_dir, "float32"), cfg)
    params = dict(lm.named_parameters())
    names = {k.removeprefix("lm."): k for k in lazy}
    trained = trainable_names(lm)
    missing = sorted(set(trained) - set(names))
    if missing:
        raise UserError(f"{load_dir / tag} does not fit the model in {model_dir} (train.lora and "
                        f"train.train_embeddings set the same?): missing {missing[:5]}")
    with torch.no_grad():
        for name in trained:
            params[name].copy_(lazy[names[name]].contiguous())
    if cfg.train.lora is not None:
        lm = lm.merge_and_unload()
    settings = EmbeddingIdentity.of(cfg.model)
    export(Embedder(lm, load_tokenizer(model_dir, settings.padding_side), settings), out)
    info = dict(stage=stage, steps=step_of(tag), checkpoint=str(load_dir / tag), lora=cfg.train.lora is not None)
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported %s to %s", load_dir / tag, out)
    return out


def stage_complete(cfg: Config, stage: str) -> bool:
    """True when the stage's final export exists, loads as a model directory and covers all configured steps."""
    from t2t.model.files import check_model_dir

    out = export_dir(cfg, stage)
    steps = cfg.stage(stage).steps
    try:
        check_model_dir(out)
        info = json.loads((out / TRAIN_INFO).read_text())
    except (UserError, ValueError, OSError):  # ValueError: TRAIN_INFO is not JSON
        return False
    cfg.stage(stage)  # a stage the recipe has, else a ConfigError naming them
    return (out / "t2t_config.json").is_file() and info.get("stage") == stage and info.get("steps") == steps
