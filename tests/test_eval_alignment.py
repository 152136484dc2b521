"""Token alignment (hit@k, precision@k): batching is exact, and the score tells aligned heads from random ones."""

from __future__ import annotations

import gzip
import itertools

import pytest
import torch

from conftest import CORPUS
from t2t.eval.alignment import token_alignment, top_token_ids
from t2t.model import Embedder, load_lm, load_tokenizer
from t2t.model.embedder import EmbedSettings


def _texts(n: int) -> list[str]:
    with gzip.open(CORPUS, "rt") as f:
        return [line.strip() for line in itertools.islice(f, 5000, 5000 + n)]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    settings = EmbedSettings(pooling="mean")
    return Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir, settings.padding_side), settings)


def test_batched_top_tokens_match_one_text_at_a_time(embedder):
    texts = _texts(7)  # different lengths: padding must not change any text's top tokens
    batched = top_token_ids(embedder, texts, k=5, batch_size=4)
    single = [[embedder.tokenizer.convert_tokens_to_ids(tok) for tok, _ in row]
              for row in embedder.top_tokens(texts, k=5)]
    assert batched == single


def test_head_reading_the_input_embeddings_aligns_and_a_random_head_does_not(embedder):
    texts = _texts(200)
    random_head = token_alignment(embedder, texts, k=10)
    saved = {k: v.clone() for k, v in embedder.lm.state_dict().items()}
    try:
        # Silence every block (the residual stream is then the input embeddings) and read them back
        # through the head: the mean-pooled embedding then names the text's own words.
        with torch.no_grad():
            for layer in embedder.lm.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            embedder.lm.get_output_embeddings().weight.copy_(embedder.lm.get_input_embeddings().weight)
        tied = token_alignment(embedder, texts, k=10)
    finally:
        embedder.lm.load_state_dict(saved)
    assert tied["texts"] == random_head["texts"] > 150
    assert tied["hit@10"] > 0.8 and random_head["hit@10"] < 0.5, (tied, random_head)
    assert tied["precision@10"] > 2 * random_head["precision@10"]


def test_texts_without_content_tokens_are_refused(embedder):
    with pytest.raises(ValueError, match="content token"):
        token_alignment(embedder, ["the of and", "!!!"], k=10)
