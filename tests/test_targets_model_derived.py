"""Stage-2 (model-derived) targets against a dense float64 reference on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from t2t.config import ModelConfig, ModelDerivedTargets
from t2t.model import from_config
from t2t.targets.sparse import TargetBatch
from t2t.targets.model_derived import EPSILON, ModelDerivedBuilder, sparse_targets

TEXTS = [
    "The committee approved the new railway line to the northern suburbs.",
    "She plays the violin in a string quartet.",
    "Photosynthesis converts light energy into chemical energy.",
    "x",
    "The river floods every spring after the snow melts in the mountains above the valley.",
    "Prices rose sharply in the second quarter.",
]


def dense_reference(z: np.ndarray, theta: np.ndarray, tau: float, delta: float, top_k: int):
    """Per text: the dense t = softmax(r / τ), the kept ids (δ rule, then the top_k largest), and the
    dropped mass 1 − Σ_kept t, all in float64 numpy, written straight from docs/DESIGN.md §1."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(z.astype(np.float64)), softmax(theta.astype(np.float64))
    r = p / (p + q + EPSILON)
    t = softmax(r / tau)
    result = []
    for row_r, row_t in zip(r, t):
        candidates = np.flatnonzero((row_r.max() - row_r) / tau < math.log(1 / delta))
        kept = np.sort(candidates[np.argsort(-row_t[candidates], kind="stable")][:top_k])
        result.append((row_t, kept, 1.0 - row_t[kept].sum(), len(candidates) > top_k))
    return result


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    return from_config(ModelConfig(path=str(tiny_model_dir), max_length=64))


@pytest.fixture(scope="module")
def student_logits(embedder):
    """z of each text alone, through the student's own path (Embedder.tokenize + forward)."""
    with torch.no_grad():
        return np.stack([embedder(**embedder.tokenize([t]))[1][0].numpy() for t in TEXTS])


# The default (one id per text on this random model), the δ rule keeping up to ~12 ids, top_k cutting.
@pytest.mark.parametrize("tau,delta,top_k,cut_expected", [(1e-5, 1e-6, 64, False), (1e-3, 1e-3, 64, False),
                                                          (3e-3, 1e-3, 16, True)])
def test_sparse_target_equals_dense_reference(embedder, student_logits, tau, delta, top_k, cut_expected):
    z = student_logits
    theta = z.astype(np.float64).mean(axis=0)
    builder = ModelDerivedBuilder(embedder, ModelDerivedTargets(tau=tau, delta=delta, top_k=top_k), batch_size=4)
    batch, stats = builder.targets(TEXTS, theta)
    reference = dense_reference(z, theta, tau, delta, top_k)
    vocab = z.shape[1]
    assert len(batch) == len(TEXTS) and stats.texts == len(TEXTS)
    for i, (t, kept, dropped, cut) in enumerate(reference):
        ids, w = batch[i]
        np.testing.assert_array_equal(ids, kept, err_msg=TEXTS[i])
        np.testing.assert_allclose(w.astype(np.float64), t[kept] / t[kept].sum(), rtol=2e-3, atol=1e-7)
        assert abs(float(w.astype(np.float64).sum()) - 1) < 1e-3
        # The manifest's bound covers every text (batched z differs from single-text z by float error).
        assert dropped <= stats.dropped_max * (1 + 1e-5) + 1e-9
        if not cut:
            assert dropped <= (vocab - 1) * delta * t.max() + 1e-12  # the δ rule's a-priori bound
    assert stats.cut_by_top_k == sum(cut for *_, cut in reference)
    if cut_expected:
        assert stats.cut_by_top_k > 0
    else:
        assert stats.dropped_max <= (vocab - 1) * delta
    assert np.isclose(stats.dropped_sum, sum(d for _, _, d, _ in reference), rtol=1e-5, atol=1e-9)


def test_builder_logits_match_the_student_and_keep_text_order(embedder, student_logits):
    builder = ModelDerivedBuilder(embedder, ModelDerivedTargets(), batch_size=4)
    seen = np.zeros(len(TEXTS), dtype=int)
    for idx, z in builder.logits(TEXTS):  # length-sorted, left-padded batches
        np.testing.assert_allclose(z.numpy(), student_logits[idx], rtol=1e-4, atol=1e-4)
        seen[idx] += 1
    assert np.all(seen == 1)
    total, count, truncated = builder.background_sum(TEXTS)
    assert count == len(TEXTS) and truncated == 0
    np.testing.assert_allclose(total, student_logits.astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)


def test_echo_targets_come_from_the_echo_embeddings(tiny_model_dir):
    """With echo pooling the builder's batches carry their pool_mask: each text's z is that of the text alone, cut
    texts included (max_length 40 cuts the long ones, alike in both copies)."""
    echo = from_config(ModelConfig(path=str(tiny_model_dir), pooling="echo", max_length=40))
    with torch.no_grad():
        alone = np.stack([echo(**echo.tokenize([t]))[1][0].numpy() for t in TEXTS])
    builder = ModelDerivedBuilder(echo, ModelDerivedTargets(), batch_size=4)
    for idx, z in builder.logits(TEXTS):
        np.testing.assert_allclose(z.numpy(), alone[idx], rtol=1e-4, atol=1e-4)
    assert echo.truncated_texts > 0


def test_truncated_texts_are_counted(embedder):
    builder = ModelDerivedBuilder(embedder, ModelDerivedTargets(), batch_size=4)
    _, _, truncated = builder.background_sum([" ".join(["word"] * 100), "short"])
    assert truncated == 1


def test_pass_two_reuses_pass_one_states_with_the_same_bytes(embedder):
    """After pass 1 on the same texts, pass 2 runs the head alone, and its targets and counts are those of a
    builder that runs the decoder again; other texts, or a second pass 2, run the decoder."""
    texts = [*TEXTS, " ".join(["word"] * 100)]  # one is truncated: the count survives the reuse
    spec = ModelDerivedTargets(tau=1e-3, delta=1e-3, top_k=16)
    decoder_calls = []
    hook = embedder.lm.get_decoder().register_forward_hook(lambda *_: decoder_calls.append(1))
    try:
        fresh = ModelDerivedBuilder(embedder, spec, batch_size=4)
        total, count, _ = fresh.background_sum(texts)
        theta = total / count
        fresh.kept.clear()
        expected, expected_stats = fresh.targets(texts, theta)

        builder = ModelDerivedBuilder(embedder, spec, batch_size=4)
        builder.background_sum(texts)
        assert builder.kept_bytes > 0
        decoder_calls.clear()
        batch, stats = builder.targets(texts, theta)
        assert decoder_calls == [] and builder.kept == {} and builder.kept_bytes == 0
        builder.targets(texts, theta)  # nothing kept any more: the decoder runs again
        assert len(decoder_calls) == 2
    finally:
        hook.remove()
    assert stats == expected_stats and stats.truncated == 1
    assert all(getattr(batch, f).tobytes() == getattr(expected, f).tobytes() for f in ("ids", "w", "offsets"))


def test_weights_that_vanish_in_float16_are_dropped():
    z = torch.zeros(1, 6, dtype=torch.float32)
    z[0, 1] = 30.0  # r is ~0.86 for token 1 and ~0 elsewhere: with τ = 0.04 the others get t ~ 5e-10
    uniform = torch.log_softmax(torch.zeros(6, dtype=torch.float64), -1)
    batch, stats = sparse_targets(z, uniform, 0.04, 1e-30, 64)  # δ keeps all six ...
    ids, w = batch[0]
    np.testing.assert_array_equal(ids, [1])  # ... but five round to zero in float16 and go
    np.testing.assert_array_equal(w, [1.0])
    assert abs(stats.dropped_max) < 1e-15  # measured before float16 storage: the δ rule kept everything


def test_target_batch_select_and_concat_round_trip():
    a = TargetBatch.pack(np.array([1, 5, 2]), np.array([1.0, 3.0, 2.0]), np.array([2, 1]))
    b = TargetBatch.pack(np.array([], dtype=np.int64), np.array([]), np.array([0]))
    both = TargetBatch.concat([a, b])
    assert len(both) == 3 and both.empty_count == 1
    swapped = both.select(np.array([2, 1, 0]))
    np.testing.assert_array_equal(swapped[1][0], [2])
    np.testing.assert_array_equal(swapped[2][0], [1, 5])
    np.testing.assert_allclose(swapped[2][1].astype(float), [0.25, 0.75])
    assert len(swapped[0][0]) == 0
