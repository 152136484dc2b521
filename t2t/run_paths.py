"""Where a recipe's stages read and write, in one place (no torch).

    <run_dir>/base_export/                  M0: the backbone as the run starts from it
    <run_dir>/<stage>/checkpoints/stepN/    DeepSpeed checkpoints of a stage
    <run_dir>/<stage>/metrics.jsonl         rank 0's per-step metrics
    <run_dir>/<stage>/model/                the stage's export (what later stages start from)
    <run_dir>/<stage>.replaced/             a finished stage set aside by the pipeline until its rerun finishes
    <data.shards_dir>/<stage>/              the stage's target shards

A stage runs on `for_stage(cfg, name)`: the recipe with `model.path` pointing at the model the stage starts
from (`base`: the recipe's backbone; otherwise the earlier stage's export).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from t2t.config import Config
from t2t.errors import UserError

BASE = "base"
"""The name a stage's `start` gives the recipe's own backbone (M0)."""


def stage_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.run_dir) / stage


def checkpoints_dir(cfg: Config, stage: str) -> Path:
    return stage_dir(cfg, stage) / "checkpoints"


def metrics_file(cfg: Config, stage: str) -> Path:
    return stage_dir(cfg, stage) / "metrics.jsonl"


def export_dir(cfg: Config, stage: str) -> Path:
    return stage_dir(cfg, stage) / "model"


def replaced_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.run_dir) / f"{stage}.replaced"


def base_export_dir(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "base_export"


def model_dir(cfg: Config, name: str) -> Path:
    """The exported model called `name`: `base` (M0) or a stage's."""
    return base_export_dir(cfg) if name == BASE else export_dir(cfg, name)


def shards_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.data.shards_dir) / stage


def for_stage(cfg: Config, stage: str) -> Config:
    """The recipe as stage `stage` runs it: its backbone is the model the stage starts from."""
    start = cfg.stage(stage).start
    if start == BASE:
        return cfg
    model = dataclasses.replace(cfg.model, path=str(export_dir(cfg, start)), tiny=None, gguf="")
    return dataclasses.replace(cfg, model=model)


def check_start_attention(cfg: Config, stage: str) -> None:
    """Refuse to train stage `stage` with another attention mode than the exported model it starts from was trained
    with (its `t2t_config.json`): a model adapted to bidirectional attention, run causally (or the reverse), is
    not the model that was trained. Within one recipe every stage shares `model.attention`; this catches a start
    from another run's export."""
    import json

    start = for_stage(cfg, stage).model.path
    exported = Path(start) / "t2t_config.json"
    if not exported.is_file():
        return
    trained = json.loads(exported.read_text()).get("attention", "causal")
    if trained != cfg.model.attention:
        raise UserError(f"stages.{stage} starts from {start}, trained with {trained} attention ({exported}), but "
                        f"model.attention is {cfg.model.attention}; set model.attention={trained}")


def texts_limit(cfg: Config, stage: str) -> int:
    """The cap on texts a stage's targets read (0 = all)."""
    return cfg.stage(stage).targets.max_texts or cfg.data.max_texts


def corpus_of(cfg: Config, stage: str) -> str:
    """The corpus of a stage's targets."""
    return cfg.stage(stage).targets.corpus or cfg.data.corpus


def missing_inputs(cfg: Config) -> list[str]:
    """`key path` of each input the recipe names that is not there, before any step runs: the backbone directory
    (unless built from `model.tiny` or converted from `model.gguf`; then the tiny tokenizer's corpus) and every
    stage's corpus. Relative paths resolve against the current directory, as in every t2t verb."""
    m = cfg.model
    needed = []
    if not (Path(m.path) / "config.json").is_file():
        if m.tiny is not None:
            needed.append(("model.tiny.tokenizer_corpus", m.tiny.tokenizer_corpus))
        elif not m.gguf:
            needed.append(("model.path", m.path))
    for stage in cfg.stages:
        key = f"stages.{stage.name}.targets.corpus" if stage.targets.corpus else "data.corpus"
        needed.append((key, corpus_of(cfg, stage.name)))
    return [f"{key} {path}" for key, path in dict.fromkeys(needed) if not Path(path).exists()]
