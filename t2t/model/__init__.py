"""Embedding core: load a backbone, embed texts, read the tokens an embedding points to, export."""

from t2t.model.embedder import Embedder, EmbedSettings, pool, set_attention
from t2t.model.io import (
    check_model_dir,
    export,
    from_config,
    load,
    load_lm,
    load_tokenizer,
    resolve_model_dir,
    settings_from_config,
    tokenizer_fingerprint,
)

__all__ = [
    "Embedder", "EmbedSettings", "pool", "set_attention", "check_model_dir", "export", "from_config", "load",
    "load_lm", "load_tokenizer", "resolve_model_dir", "settings_from_config", "tokenizer_fingerprint",
]
