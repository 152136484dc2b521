"""Token alignment (hit@k, precision@k): an embedding's top LM-head tokens are its most probable ones whatever
the batching, and the score tells aligned heads from random ones."""

from __future__ import annotations

import gzip
import itertools

import pytest
import torch

from conftest import CORPUS
from t2t.eval.alignment import token_alignment
from t2t.identity import EmbeddingIdentity
from t2t.model import Embedder, load_lm, load_tokenizer
from t2t.errors import UserError


def _texts(n: int) -> list[str]:
    with gzip.open(CORPUS, "rt") as f:
        return [line.strip() for line in itertools.islice(f, 5000, 5000 + n)]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    settings = EmbeddingIdentity(pooling="mean")
    return Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir, settings.padding_side), settings)


def test_top_k_are_the_most_probable_head_tokens_whatever_the_batching(embedder):
    texts = _texts(7)  # different lengths: padding must not change any text's top tokens
    batched = embedder.top_k(texts, k=5, batch_size=4)
    for text, row in zip(texts, batched):
        batch = embedder.tokenize([text])
        with torch.no_grad():
            _, z = embedder(**batch)
        p = torch.softmax(z[0].double(), dim=-1)
        ids = [i for i, _ in row]
        probs = [q for _, q in row]
        assert len(row) == 5 and len(set(ids)) == 5
        assert probs == sorted(probs, reverse=True) and all(0 < q < 1 for q in probs)
        # no token outside the top k is more probable than the k-th, and the probabilities are softmax(z)
        assert p.topk(6).values[5] <= p[ids[-1]] + 1e-6
        torch.testing.assert_close(torch.tensor(probs, dtype=torch.float64), p[ids], rtol=1e-4, atol=1e-7)
    assert [[i for i, _ in row] for row in embedder.top_k(texts, k=5, batch_size=1)] == \
        [[i for i, _ in row] for row in batched]
    # what `t2t inspect` prints: the same tokens, as strings
    shown = embedder.top_tokens(texts[:2], k=5)
    assert [[embedder.tokenizer.convert_tokens_to_ids(tok) for tok, _ in row] for row in shown] == \
        [[i for i, _ in row] for row in batched[:2]]
    was_training = embedder.training
    for mode in (True, False):  # top_k embeds in eval mode and leaves the module's mode as it found it
        embedder.train(mode)
        embedder.top_k(texts[:1], k=1)
        assert embedder.training is mode
    embedder.train(was_training)


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
    with pytest.raises(UserError, match="content token"):
        token_alignment(embedder, ["the of and", "!!!"], k=10)
