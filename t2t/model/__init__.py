"""Embedding core: load a backbone, embed texts, read the tokens an embedding points to, export.

`load_tokenizer`, `tokenizer_fingerprint` and `tokenize_texts` live in the torch-free `t2t.data.tokens`, and
`EmbeddingIdentity` in `t2t.identity`; they are re-exported here.
"""

from t2t.data.tokens import load_tokenizer, tokenize_texts, tokenizer_fingerprint
from t2t.identity import EmbeddingIdentity
from t2t.model.embedder import Embedder, pool, set_attention
from t2t.model.io import (
    check_model_dir,
    export,
    from_config,
    load,
    load_lm,
    resolve_model_dir,
)

__all__ = [
    "Embedder", "EmbeddingIdentity", "pool", "set_attention", "check_model_dir", "export",
    "from_config", "load", "load_lm", "load_tokenizer", "resolve_model_dir",
    "tokenize_texts", "tokenizer_fingerprint",
]
