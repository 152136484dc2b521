"""Tokenizers without a model: loading, the fingerprint shards and models must agree on, and batch tokenization.

The data layer (shard checks, the training stream's collate) needs these and nothing else of the model, so
they live here and `t2t.model` re-exports them. Importing this module imports neither torch nor transformers;
`load_tokenizer` imports transformers, and `tokenize_texts` returns torch tensors (transformers imports
torch to build them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from t2t.errors import UserError
from t2t.pooling import pooling_mode

if TYPE_CHECKING:
    from t2t.identity import EmbeddingIdentity

log = logging.getLogger(__name__)

_said_once: set[str] = set()  # tokenizer paths already warned about


def load_tokenizer(path: str | Path, padding_side: str = "left"):
    """The backbone's tokenizer; a tokenizer without a pad token gets pad = eos (logged once per path)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer in {path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
        if str(path) not in _said_once:
            _said_once.add(str(path))
            log.warning("tokenizer in %s has no pad token; using eos %r as pad", path, tok.eos_token)
    tok.padding_side = padding_side
    return tok


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary (token → id) and special tokens: shards and models must agree on it."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps({"vocab": vocab, "special": tokenizer.all_special_tokens}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def format_text(tokenizer, identity: "EmbeddingIdentity", text: str) -> str:
    """The text as the model sees it: inside the prompt, with EOS appended for a pooling mode that pools at it."""
    s = identity.prompt.replace("{text}", text)
    if pooling_mode(identity.pooling).appends_eos:
        s = s + tokenizer.eos_token
    return s


def tokenize_texts(tokenizer, identity: "EmbeddingIdentity", texts: list[str]) -> tuple[dict, int]:
    """Prompt, tokenize, truncate at `max_length` and pad a batch; also returns how many texts were cut.

    The batch is {"input_ids", "attention_mask"} as torch tensors. A function of the tokenizer and the
    embedding identity only, so data-loader workers tokenize without a model.
    """
    limit = identity.max_length
    ids = tokenizer([format_text(tokenizer, identity, t) for t in texts], add_special_tokens=True)["input_ids"]
    cut = [i for i, row in enumerate(ids) if len(row) > limit]
    for i in cut:
        ids[i] = ids[i][:limit]
        if pooling_mode(identity.pooling).appends_eos:
            ids[i][-1] = tokenizer.eos_token_id  # the pooled position must still hold EOS
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, len(cut)
