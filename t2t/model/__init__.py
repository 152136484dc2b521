"""Embedding core: load a backbone, embed texts, read the tokens an embedding points to, export.

`load_tokenizer`, `tokenizer_fingerprint` and `tokenize_texts` live in the torch-free `t2t.data.tokens`, and
`EmbeddingIdentity` in `t2t.identity`; they are re-exported here. The names load lazily: a process that only
checks a model directory (`t2t.model.files`) imports neither torch nor transformers.
"""

import importlib

_EXPORTS = {"Embedder": "t2t.model.embedder", "pool": "t2t.model.embedder", "set_attention": "t2t.model.embedder",
            "EmbeddingIdentity": "t2t.identity", "check_model_dir": "t2t.model.files",
            "export": "t2t.model.io", "from_config": "t2t.model.io", "load": "t2t.model.io", "load_lm": "t2t.model.io",
            "resolve_model_dir": "t2t.model.io", "load_tokenizer": "t2t.data.tokens",
            "tokenize_texts": "t2t.data.tokens", "tokenizer_fingerprint": "t2t.data.tokens"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 't2t.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
