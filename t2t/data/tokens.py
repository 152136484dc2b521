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

SPAN_CUT_RULE = "text cut alike in every copy, whole prompt kept"
"""How `tokenize_texts` cuts a text too long for a `span` pooling mode (echo), whose prompt holds the text more
than once (echo: twice): the text itself is cut, to its longest prefix (at one of its token ends) with which the
whole prompt fits in `max_length`, and every copy gets that prefix, so the pooled last copy repeats exactly what
the model read before it; never one copy alone. Outputs of such a mode record it after CUT_RULE (`cut_rule`);
other modes record CUT_RULE alone, the string their stored outputs already hold."""


def cut_rule(pooling: str) -> str:
    """The cut rule that outputs of a model pooling with `pooling` record (a stage-2 manifest's `text_cut`)."""
    return f"{CUT_RULE}; {SPAN_CUT_RULE}" if pooling_mode(pooling).span else CUT_RULE


def tokenize_texts(tokenizer, identity: "EmbeddingIdentity", texts: list[str]) -> tuple[dict, int]:
    """Prompt, tokenize, truncate at `max_length` and pad a batch; also returns how many texts were cut.

    A text too long is cut inside the prompt: the tokens of the prompt after the text (PromptEOL's
    `" means in one word:"`) and the EOS a pooling mode pools at are kept at the end, so last-token and EOS
    pooling still read the position the prompt asks about. The batch is {"input_ids", "attention_mask"} as
    torch tensors. A function of the tokenizer and the embedding identity only, so data-loader workers
    tokenize without a model. A `span` pooling mode (echo) is tokenized by `tokenize_span` instead.
    """
    if pooling_mode(identity.pooling).span:
        return tokenize_span(tokenizer, identity, texts)
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


def tokenize_span(tokenizer, identity: "EmbeddingIdentity", texts: list[str]) -> tuple[dict, int]:
    """`tokenize_texts` for a `span` pooling mode: the batch also holds `pool_mask` (B, L), 1 on the tokens of the
    text's last copy in the prompt (a token straddling the copy's boundary counts if it shares a character with
    the text), 0 on the rest of the prompt and on padding; an empty text marks none (mean pooling then gives a zero
    vector). A text too long is cut by `SPAN_CUT_RULE`.

    The mask comes from the character offsets of the tokens of the whole formatted string, which only a fast
    tokenizer gives."""
    if not tokenizer.is_fast:
        raise UserError(f"{identity.pooling} pooling needs a fast tokenizer (its token offsets mark the pooled copy "
                        f"of the text); {type(tokenizer).__name__} is a slow one")
    enc = tokenizer([format_text(tokenizer, identity, t) for t in texts], add_special_tokens=True,
                    return_offsets_mapping=True)
    rows, masks, cut = [], [], 0
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) > identity.max_length:
            cut += 1
            text = fitting_prefix(tokenizer, identity, text)
            one = tokenizer(format_text(tokenizer, identity, text), add_special_tokens=True,
                            return_offsets_mapping=True)
            ids, offsets = one["input_ids"], one["offset_mapping"]
        start, end = last_copy(identity, text)
        rows.append(ids)
        masks.append([int(min(e, end) > max(s, start)) for s, e in offsets])  # shares a character with the copy
    batch = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    pool_mask = pad_rows(masks, batch["input_ids"].shape[1], tokenizer.padding_side)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "pool_mask": pool_mask}, cut


def last_copy(identity: "EmbeddingIdentity", text: str) -> tuple[int, int]:
    """[start, end) of the last copy of `text` in `format_text`'s string, in characters."""
    start = len(identity.prompt.rsplit("{text}", 1)[0].replace("{text}", text))
    return start, start + len(text)


def fitting_prefix(tokenizer, identity: "EmbeddingIdentity", text: str) -> str:
    """The longest prefix of `text`, ending at one of its own tokens' ends, with which the whole prompt (every copy
    holding it) fits in `max_length` tokens; a UserError if not even an empty text fits.

    Bisection over the prefix's token count, as the prompt's length grows with it; only the text's first
    `max_length` tokens are candidates, as a longer prefix cannot fit."""
    limit = identity.max_length

    def fits(chars: int) -> bool:
        return len(tokenizer(format_text(tokenizer, identity, text[:chars]))["input_ids"]) <= limit

    if not fits(0):
        empty = len(tokenizer(format_text(tokenizer, identity, ""))["input_ids"])
        raise UserError(f"model.max_length {limit} is too short for the {identity.pooling} prompt "
                        f"{identity.prompt!r}: with an empty text it is already {empty} tokens")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ends = sorted({0, *(end for _, end in offsets[:limit])})  # byte pieces of one character share an end
    lo, hi = 0, len(ends)  # ends[lo] fits; ends[hi] (past the list) stands for too long
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(ends[mid]) else (lo, mid)
    return text[:ends[lo]]


def pad_rows(rows: list[list[int]], width: int, side: str):
    """Rows of 0/1 padded with 0 to `width` on `side`, as a (B, width) int64 tensor like the attention mask."""
    import torch

    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            out[i, columns] = torch.tensor(row, dtype=torch.long)
    return out
