"""The sparse KL loss against torch's dense `kl_div` (empty targets, hand-written backward); SimCSE's InfoNCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2t.objectives import SimCSEObjective, Text2TokenObjective
from t2t.train.loss import LossParts, _SparseKL, objective_for, simcse_loss, sparse_kl, text2token_loss


def random_targets(batch: int, vocab: int, k: int, empty_rows=(), seed: int = 0):
    """Padded sparse targets (ids, w, mask) with a different number of entries per row, and their dense form."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, k, dtype=torch.long)
    w = torch.zeros(batch, k)
    mask = torch.zeros(batch, k, dtype=torch.bool)
    dense = torch.zeros(batch, vocab)
    for b in range(batch):
        n = 0 if b in empty_rows else 1 + b % k
        row_ids = torch.randperm(vocab, generator=g)[:n].sort().values
        row_w = torch.rand(n, generator=g) + 0.05
        row_w /= row_w.sum()
        ids[b, :n], w[b, :n], mask[b, :n] = row_ids, row_w, True
        dense[b, row_ids] = row_w
    return ids, w, mask, dense


def dense_mean_kl(z: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Reference: torch's kl_div per row, averaged over rows with a non-empty target."""
    per_row = F.kl_div(F.log_softmax(z, dim=-1), dense, reduction="none").sum(dim=1)
    keep = dense.sum(dim=1) > 0
    return per_row[keep].mean()


def test_sparse_kl_equals_dense_kl_div_values_and_gradients():
    torch.manual_seed(0)
    batch, vocab, k = 6, 50, 5
    ids, w, mask, dense = random_targets(batch, vocab, k, empty_rows={2, 4})
    z = (3 * torch.randn(batch, vocab)).requires_grad_()
    z_ref = z.detach().clone().requires_grad_()

    kl = sparse_kl(z, ids, w, mask)
    assert kl.shape == (batch,)
    assert kl[2].item() == 0.0 and kl[4].item() == 0.0  # empty targets contribute nothing
    nonempty = mask.any(dim=1)
    loss = kl.sum() / nonempty.sum()  # the mean over texts with a target, as the trainer forms it
    reference = dense_mean_kl(z_ref, dense)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    per_row_ref = F.kl_div(F.log_softmax(z_ref, dim=-1), dense, reduction="none").sum(dim=1)
    torch.testing.assert_close(kl.detach(), per_row_ref.detach(), atol=1e-6, rtol=0)

    loss.backward()
    reference.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-6, rtol=0)
    assert torch.all(z.grad[~nonempty] == 0)


def test_empty_targets_are_left_out_of_the_mean():
    ids, w, mask, dense = random_targets(4, 30, 3, empty_rows={0})
    z = torch.randn(4, 30)
    with_empty = sparse_kl(z, ids, w, mask).sum() / mask.any(dim=1).sum()
    without = sparse_kl(z[1:], ids[1:], w[1:], mask[1:]).mean()
    assert with_empty.item() == pytest.approx(without.item(), abs=1e-6)


def test_hand_written_backward_passes_gradcheck():
    ids, w, mask, _ = random_targets(3, 12, 4, empty_rows={1}, seed=1)
    z = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    w64 = torch.where(mask, w, 0.0).double()
    assert torch.autograd.gradcheck(lambda x: _SparseKL.apply(x, ids, w64), (z,))


def test_kl_of_a_target_with_itself_is_zero():
    # z = log t on the support (and very negative elsewhere) makes softmax(z) = t.
    ids, w, mask, dense = random_targets(3, 20, 4)
    z = torch.where(dense > 0, dense.clamp_min(1e-30).log(), torch.tensor(-1e4))
    assert sparse_kl(z, ids, w, mask).abs().max().item() < 1e-5


def test_padding_columns_are_ignored_whatever_they_hold():
    ids, w, mask, _ = random_targets(4, 25, 5)
    z = torch.randn(4, 25)
    garbage_ids = torch.where(mask, ids, 7)
    garbage_w = torch.where(mask, w, 0.3)
    torch.testing.assert_close(sparse_kl(z, garbage_ids, garbage_w, mask), sparse_kl(z, ids, w, mask))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shapes"):
        sparse_kl(torch.randn(2, 10), torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4),
                  torch.zeros(3, 4, dtype=torch.bool))


def test_text2token_objective_sums_over_counted_texts():
    ids, w, mask, dense = random_targets(5, 40, 4, empty_rows={3})
    z = torch.randn(5, 40)
    model = lambda input_ids, attention_mask: (None, z)  # noqa: E731 - the embedder's (h, z) contract
    batch = dict(input_ids=None, attention_mask=None, target_ids=ids, target_w=w, target_mask=mask)
    parts = text2token_loss(model, batch)
    assert isinstance(parts, LossParts) and parts.count == 4
    assert (parts.total / parts.count).item() == pytest.approx(dense_mean_kl(z, dense).item(), abs=1e-6)
    assert objective_for(Text2TokenObjective()).count(batch) == 4


class DropoutBag(torch.nn.Module):
    """A toy embedder: mean of token embeddings, with dropout; returns (h, None) and keeps the rows it saw."""

    def __init__(self, vocab: int = 30, dim: int = 8, p: float = 0.3):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, dim)
        self.p = p

    def forward(self, input_ids, attention_mask):
        self.seen = input_ids
        m = attention_mask.unsqueeze(-1).float()
        h = (F.dropout(self.table(input_ids), self.p, self.training) * m).sum(1) / m.sum(1)
        self.h = h
        return h, None


def test_simcse_loss_is_infonce_between_two_dropout_views():
    torch.manual_seed(0)
    model = DropoutBag()
    ids = torch.randint(0, 30, (5, 6))
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, :2] = 0
    objective = objective_for(SimCSEObjective(temperature=0.1))
    parts = objective.loss(model, dict(input_ids=ids, attention_mask=mask))
    assert torch.equal(model.seen, torch.cat([ids, ids]))  # both views in one pass over the batch stacked twice
    a, b = model.h[:5].detach(), model.h[5:].detach()
    assert (a - b).abs().max() > 1e-3  # dropout made two different views
    expected = 0.0
    for i in range(5):  # −log softmax over the second views, positive on the diagonal
        sims = torch.stack([F.cosine_similarity(a[i], b[j], dim=0) for j in range(5)]) / 0.1
        expected -= (sims[i] - torch.logsumexp(sims, dim=0)).item()
    assert isinstance(parts, LossParts) and parts.count == 5
    assert parts.total.item() == pytest.approx(expected, rel=1e-5)
    parts.total.backward()
    assert model.table.weight.grad.abs().sum() > 0


def test_simcse_counts_every_text_and_identical_views_still_have_negatives():
    model = DropoutBag(p=0.0)
    ids = torch.arange(12).reshape(4, 3)
    batch = dict(input_ids=ids, attention_mask=torch.ones(4, 3), target_mask=torch.zeros(4, 1, dtype=torch.bool))
    objective = objective_for(SimCSEObjective())
    assert objective.count(batch) == 4  # empty targets do not matter to SimCSE
    parts = simcse_loss(model, batch, temperature=0.05)
    a = F.normalize(model.h[:4].detach(), dim=-1)
    logits = a @ a.T / 0.05
    assert parts.total.item() == pytest.approx(F.cross_entropy(logits, torch.arange(4), reduction="sum").item(),
                                               rel=1e-5)


def test_echo_pool_mask_reaches_the_embedder_through_both_losses_and_the_probe(tiny_model_dir):
    """An echo batch, collated as the training stream collates it, carries its pool_mask into the embedder:
    text2token's logits are those of the echo embeddings, SimCSE stacks the mask with the rows it doubles, and
    the checkpoint probe (random tokens, no prompt) has one too, which other modes ignore."""
    from t2t.data.stream import collate
    from t2t.model import Embedder, EmbeddingIdentity, load_lm, load_tokenizer
    from t2t.pooling import ECHO_PROMPT
    from t2t.train.checks import probe_batch

    tok = load_tokenizer(tiny_model_dir)
    emb = Embedder(load_lm(tiny_model_dir), tok, EmbeddingIdentity(pooling="echo", prompt=ECHO_PROMPT)).eval()
    texts = ["The river floods every spring.", "a lake", "She plays the violin in a string quartet."]
    ids, w, mask, dense = random_targets(3, emb.lm.config.vocab_size, 4)
    batch = collate([(str(i), t, ids[i][mask[i]].numpy(), w[i][mask[i]].numpy()) for i, t in enumerate(texts)],
                    tok, emb.settings)
    with torch.no_grad():
        h, z = emb(**emb.tokenize(texts))
    parts = text2token_loss(emb, batch)
    assert parts.total.item() / parts.count == pytest.approx(dense_mean_kl(z, dense).item(), rel=1e-5)
    parts.total.backward()
    assert emb.lm.get_input_embeddings().weight.grad.abs().sum() > 0

    parts = simcse_loss(emb, batch, temperature=0.05)  # eval mode: no dropout, two equal views of each text
    a = F.normalize(h, dim=-1)
    expected = F.cross_entropy(a @ a.T / 0.05, torch.arange(3), reduction="sum").item()
    assert parts.total.item() == pytest.approx(expected, rel=1e-4)

    probe = probe_batch(emb.lm.config.vocab_size, 16, seed=0)
    with torch.no_grad():
        pooled, _ = emb(**probe)
        assert pooled.shape == (4, h.shape[1]) and torch.isfinite(pooled).all()
        mean = Embedder(emb.lm, tok, EmbeddingIdentity(pooling="mean"))
        assert torch.equal(mean(**probe)[0], mean(probe["input_ids"], probe["attention_mask"])[0])
