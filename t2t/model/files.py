"""What makes a directory a model directory, torch- and transformers-free: a check that is cheap to run where
nothing is loaded (is a stage's export there? `t2t.train.export.stage_complete`)."""

from __future__ import annotations

from pathlib import Path

from t2t.errors import UserError

T2T_CONFIG = "t2t_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(path: str | Path, need_weights: bool = True) -> Path:
    """Raise a UserError naming `path` and what is missing, unless it is a loadable HF model directory."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model directory {p} does not exist")
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if need_weights and not any((p / f).is_file() for f in WEIGHT_FILES):
        missing.append("weights (" + " or ".join(WEIGHT_FILES[::2]) + ")")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        missing.append("a tokenizer (" + " or ".join(TOKENIZER_FILES) + ")")
    if missing:
        raise UserError(f"model directory {p} is incomplete: missing {', '.join(missing)}")
    return p
