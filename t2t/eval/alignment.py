"""Token alignment: do an embedding's top LM-head tokens name the text's own tokens?

This is the method's motivating measurement (docs/DESIGN.md §1): an embedder trained with
Text2Token should put its pooled embedding where the LM head reads off the words of the text.
For each text, the k most probable tokens of `softmax(W·h)` (`Embedder.top_k`) are compared with the text's own
content tokens, cleaned exactly as stage-1 targets are (stopwords, punctuation, special and
whitespace-only tokens dropped), so the score reads as "how often does the embedding say what
the text says".

    hit@k        share of texts where at least one of the top k tokens is one of the text's own
    precision@k  share of the top k tokens, over all texts, that are among the text's own
"""

from __future__ import annotations

from t2t.errors import UserError
from t2t.targets.kinds import DataDrivenTargets
from t2t.targets.data_driven import DataDrivenBuilder


def token_alignment(embedder, texts: list[str], k: int = 10, targets: DataDrivenTargets | None = None) -> dict:
    """hit@k and precision@k of `embedder` on `texts` (texts without content tokens are not counted); the text's
    own tokens are cleaned as data-driven targets with `targets` (default: the stage-1 defaults)."""
    builder = DataDrivenBuilder(embedder.tokenizer, targets or DataDrivenTargets(), embedder.lm.config.vocab_size)
    own, _ = builder.token_ids(texts)
    kept = [i for i, ids in enumerate(own) if ids]
    if not kept:
        raise UserError("none of the texts has a content token to align with")
    top = embedder.top_k([texts[i] for i in kept], k)  # t2t.model.embedder.Embedder.top_k
    hits = overlap = 0
    for i, predicted in zip(kept, top):
        shared = len({token for token, _ in predicted} & set(own[i]))
        hits += shared > 0
        overlap += shared
    return {f"hit@{k}": hits / len(kept), f"precision@{k}": overlap / (k * len(kept)), "texts": len(kept)}
