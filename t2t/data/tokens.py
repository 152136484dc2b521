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
    return identity.prompt.replace("{text}", text) + prompt_tail(tokenizer, identity)[1]


def prompt_tail(tokenizer, identity: "EmbeddingIdentity") -> tuple[str, str]:
    """(the prompt after its last `{text}`, EOS if the pooling mode appends it): what must survive truncation."""
    eos = tokenizer.eos_token if pooling_mode(identity.pooling).appends_eos else ""
    return identity.prompt.rsplit("{text}", 1)[1], eos


CUT_RULE = "prompt tail kept when a text is cut"
"""How `tokenize_texts` cuts a text too long. Stored outputs of a model that read cut texts (eval results, model-
derived targets) record it, so outputs made before the rule (cut at the end, PromptEOL's tail lost) are redone."""


def tokenize_texts(tokenizer, identity: "EmbeddingIdentity", texts: list[str]) -> tuple[dict, int]:
    """Prompt, tokenize, truncate at `max_length` and pad a batch; also returns how many texts were cut.

    A text too long is cut inside the prompt: the tokens of the prompt after the text (PromptEOL's
    `" means in one word:"`) and the EOS a pooling mode pools at are kept at the end, so last-token and EOS
    pooling still read the position the prompt asks about. The batch is {"input_ids", "attention_mask"} as
    torch tensors. A function of the tokenizer and the embedding identity only, so data-loader workers
    tokenize without a model.
    """
    limit = identity.max_length
    formatted = [format_text(tokenizer, identity, t) for t in texts]
    tail_chars = sum(len(part) for part in prompt_tail(tokenizer, identity))
    offsets = bool(tail_chars) and tokenizer.is_fast
    enc = tokenizer(formatted, add_special_tokens=True, return_offsets_mapping=offsets)
    ids = enc["input_ids"]
    cut = [i for i, row in enumerate(ids) if len(row) > limit]
    for i in cut:
        keep = 0
        if offsets:  # the tail: tokens that reach past the text (one that straddles the boundary included)
            boundary = len(formatted[i]) - tail_chars
            keep = sum(1 for start, end in enc["offset_mapping"][i] if end > boundary and end > start)
        if 0 < keep < limit:
            ids[i] = ids[i][:limit - keep] + ids[i][-keep:]
        else:
            ids[i] = ids[i][:limit]
            if pooling_mode(identity.pooling).appends_eos:
                ids[i][-1] = tokenizer.eos_token_id  # the pooled position must still hold EOS
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, len(cut)
