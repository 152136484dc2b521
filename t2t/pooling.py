"""Pooling modes: how the final hidden states of a prompted text become one vector, as a registry (`model.pooling`).

A mode owns its pooling function and what else it decides: whether the tokenizer appends an EOS token to pool
at, whether it pools over the text's last copy in the prompt only (`span`, echo embeddings), how many copies of the
text its prompt must hold, the prompt it defaults to, and the sentence-transformers pooling mode that reproduces it
in a plain `SentenceTransformer` (None: only t2t's own module does). A new mode is a `Pooling` registered here.

No torch at import: the recipe loader validates `model.pooling` against this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from t2t.errors import ConfigError
from t2t.registry import Registry

PROMPT_EOL = 'This sentence : "{text}" means in one word:"'
"""The PromptEOL template used with `last` pooling (Jiang et al., 2023)."""

ECHO_PROMPT = "Rewrite the sentence: {text}, rewritten sentence: {text}"
"""The zero-shot echo-embeddings template used with `echo` pooling (Springer et al., 2024, "Repetition Improves
Language Model Embeddings", arXiv 2402.15449, Figure 1: "Rewrite the sentence: x, rewritten sentence: x"). The
authors' fine-tuned models (github.com/jakespringer/echo-embeddings) use other templates with the same two copies."""


@dataclass(frozen=True)
class Pooling:
    name: str
    pool: Callable
    """(hidden (B, L, d), mask (B, L)) → (B, d), over the positions the mask marks, for either padding side: the
    attention mask (the non-pad positions), or for a `span` mode the batch's `pool_mask`."""
    default_prompt: str = "{text}"
    """The prompt template when `model.prompt` is not set."""
    appends_eos: bool = False
    """Tokenization appends the EOS token (kept when truncating) for the mode to pool at."""
    st_mode: str | None = None
    """The sentence-transformers `Pooling` mode that gives the same vectors, if one does."""
    span: bool = False
    """Pools over the tokens of the last `{text}` copy in the prompt only: tokenization marks them in a `pool_mask`
    (B, L) beside the attention mask, and cuts a text too long alike in every copy (`t2t.data.tokens`)."""
    text_copies: int | None = None
    """How many times the prompt must hold `{text}` (checked at recipe load); None: at least once."""


def mean_of_tokens(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def last_token(hidden, attention_mask):
    import torch

    # Index of the last real token, valid for either padding side.
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLINGS = Registry[Pooling]("pooling mode", ConfigError)


def register_pooling(mode: Pooling) -> Pooling:
    return POOLINGS.register(mode.name, mode)


def pooling_mode(name: str, key: str = "model.pooling") -> Pooling:
    return POOLINGS.get(name, key)


register_pooling(Pooling("mean", mean_of_tokens, st_mode="mean"))
register_pooling(Pooling("last", last_token, default_prompt=PROMPT_EOL, st_mode="lasttoken"))
register_pooling(Pooling("eos", last_token, appends_eos=True))
# Echo embeddings: the text twice; under causal attention each token of the second copy has seen the whole text.
register_pooling(Pooling("echo", mean_of_tokens, default_prompt=ECHO_PROMPT, span=True, text_copies=2))
