"""Token alignment: do an embedding's top LM-head tokens name the text's own tokens?

This is the method's motivating measurement (docs/DESIGN.md §1): an embedder trained with
Text2Token should put its pooled embedding where the LM head reads off the words of the text.
For each text, the k most probable tokens of `softmax(W·h)` are compared with the text's own
content tokens, cleaned exactly as stage-1 targets are (stopwords, punctuation, special and
whitespace-only tokens dropped), so the score reads as "how often does the embedding say what
the text says".

    hit@k        share of texts where at least one of the top k tokens is one of the text's own
    precision@k  share of the top k tokens, over all texts, that are among the text's own
"""

from __future__ import annotations

import torch

from t2t.config import TargetsConfig
from t2t.targets.stage1 import Stage1Builder


@torch.no_grad()
def top_token_ids(embedder, texts: list[str], k: int, batch_size: int = 64) -> list[list[int]]:
    """For each text, the ids of the k most probable LM-head tokens of its embedding."""
    was_training = embedder.training
    embedder.eval()
    result: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        batch = {key: v.to(embedder.device) for key, v in embedder.tokenize(texts[start:start + batch_size]).items()}
        _, z = embedder(**batch)
        result.extend(z.topk(min(k, z.shape[-1]), dim=-1).indices.tolist())
    embedder.train(was_training)
    return result


def token_alignment(embedder, texts: list[str], k: int = 10, targets: TargetsConfig | None = None) -> dict:
    """hit@k and precision@k of `embedder` on `texts` (texts without content tokens are not counted)."""
    builder = Stage1Builder(embedder.tokenizer, targets or TargetsConfig(), embedder.lm.config.vocab_size)
    own, _ = builder.token_ids(texts)
    kept = [i for i, ids in enumerate(own) if ids]
    if not kept:
        raise ValueError("none of the texts has a content token to align with")
    top = top_token_ids(embedder, [texts[i] for i in kept], k)
    hits = overlap = 0
    for i, predicted in zip(kept, top):
        shared = len(set(predicted) & set(own[i]))
        hits += shared > 0
        overlap += shared
    return {f"hit@{k}": hits / len(kept), f"precision@{k}": overlap / (k * len(kept)), "texts": len(kept)}
