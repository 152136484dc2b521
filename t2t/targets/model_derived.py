"""Stage-2 (model-derived) targets: tokens *beyond* the text that the frozen model ties to it (docs/DESIGN.md §1).

With the frozen stage-1 model M1 and its fp32 logits z(x) (computed exactly as the student
computes them: `Embedder.forward`, same prompt, pooling and attention mode):

1. background: θ = mean_x z(x) over the corpus, q = softmax(θ)   (`background_sum`, summed by the driver)
2. per text:   p = softmax(z), r = p / (p + q + 1e-8), t = softmax(r / τ)
   (z again: from the pooled states pass 1 kept, through the head alone, where the same builder ran pass 1)
3. sparsify:   keep ids with (max r − r_v) / τ < ln(1/δ), at most `top_k`, renormalise.

Everything after the forward pass runs in float64 on the model's device: with τ = 1e-6 a
float32 error of 6e-8 in r would move a logit of t by 0.06.

Each text's dropped mass (1 − the kept share of t) is measured exactly. The δ rule alone
drops less than (|V| − 1)·δ·max t ≤ (|V| − 1)·δ; `top_k` may drop more, and such texts are counted.
Storing weights in float16 drops, in addition, any weight below 2^-25 (at most top_k · 3e-8 in all).

    from t2t.targets.kinds import ModelDerivedTargets
    from t2t.targets.model_derived import ModelDerivedBuilder
    builder = ModelDerivedBuilder(t2t.model.from_config(cfg.model), ModelDerivedTargets(), batch_size=64)
    total, count, _ = builder.background_sum(texts); theta = total / count
    batch, stats = builder.targets(texts, theta)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from t2t.targets.kinds import EPSILON
from t2t.targets.sparse import TargetBatch


@dataclass
class SparsifyStats:
    """What sparsification cost, for the manifest."""

    texts: int = 0
    dropped_max: float = 0.0
    dropped_sum: float = 0.0
    cut_by_top_k: int = 0
    truncated: int = 0

    def add(self, other: "SparsifyStats") -> None:
        self.texts += other.texts
        self.dropped_max = max(self.dropped_max, other.dropped_max)
        self.dropped_sum += other.dropped_sum
        self.cut_by_top_k += other.cut_by_top_k
        self.truncated += other.truncated


def log_background(theta: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """log q = log_softmax(θ), float64 on `device`."""
    # A copy: θ may arrive as a read-only array straight from Ray's object store.
    theta = torch.tensor(np.asarray(theta), dtype=torch.float64, device=device)
    return torch.log_softmax(theta, dim=-1)


def sparse_targets(z: torch.Tensor, log_q: torch.Tensor, tau: float, delta: float,
                   top_k: int) -> tuple[TargetBatch, SparsifyStats]:
    """Model-derived targets of a batch of logits z (B, |V|) against background log q (|V|)."""
    p = torch.softmax(z.to(torch.float64), dim=-1)
    q_eps = log_q.exp() + EPSILON
    # The logits of t = softmax(r / τ), r = p / (p + q + ε); in place: B × |V| float64 buffers are the cost here.
    a = p.div_(p + q_eps).div_(tau)
    # e_v = t_v / max t. The δ rule keeps (max r − r_v) / τ < ln(1/δ), i.e. e_v > δ.
    e = a.sub_(a.max(dim=-1, keepdim=True).values).exp_()
    total = e.sum(dim=-1)
    k = min(top_k, e.shape[-1])
    top_e, top_ids = e.topk(k, dim=-1)  # descending, so the kept ids are a prefix of each row
    kept = top_e > delta
    kept_mass = (top_e * kept).sum(dim=-1)
    dropped = (total - kept_mass) / total
    within_delta = (e > delta).sum(dim=-1)
    stats = SparsifyStats(texts=z.shape[0], dropped_max=float(dropped.max()), dropped_sum=float(dropped.sum()),
                          cut_by_top_k=int((within_delta > k).sum()))

    lengths = kept.sum(dim=-1).cpu().numpy()
    ids = top_ids.cpu().numpy()
    weights = top_e.cpu().numpy()
    # Sort each row's kept prefix by id; the dropped tail is pushed past every real id first.
    sentinel = np.iinfo(np.int64).max
    ids = np.where(np.arange(k) < lengths[:, None], ids, sentinel)
    order = np.argsort(ids, axis=-1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=-1)
    weights = np.take_along_axis(weights, order, axis=-1)
    mask = np.arange(k) < lengths[:, None]
    return TargetBatch.pack(ids[mask], weights[mask], lengths), stats


KEEP_BYTES = 1 << 30
"""Pooled states one builder keeps from pass 1 for pass 2, at most: pass 2 then applies only the LM head to them,
not a second decoder forward. A chunk that does not fit, or that pass 2 meets in another worker, is run again."""


class ModelDerivedBuilder:
    """Runs the frozen embedder over texts: background sums (pass 1) and sparse targets (pass 2)."""

    def __init__(self, embedder, targets, batch_size: int):
        """`targets`: a `ModelDerivedTargets` (tau, delta, top_k); `batch_size` texts per forward."""
        self.embedder = embedder.eval()
        self.targets_cfg = targets
        self.batch_size = batch_size
        self.kept: dict[str, tuple[list[tuple[np.ndarray, torch.Tensor]], int]] = {}
        """texts' digest → ((positions, pooled states) per batch, texts truncated), from pass 1 for pass 2."""
        self.kept_bytes = 0

    @torch.inference_mode()
    def logits(self, texts: list[str], keep: bool = False) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(positions in `texts`, fp32 logits z) per batch; batches are length-sorted to cut padding.

        With `keep`, the pooled states are kept (up to `KEEP_BYTES`) for the next call on the same texts, which
        then computes z = head(h) from them: the same batches through the same head, so the same bytes."""
        key = texts_digest(texts)
        if key in self.kept:
            batches, truncated = self.kept.pop(key)
            self.kept_bytes -= sum(h.nbytes for _, h in batches)
            self.embedder.truncated_texts += truncated
            head = self.embedder.lm.get_output_embeddings()
            for idx, h in batches:
                yield idx, head(h)
            return
        order = np.argsort([-len(t) for t in texts], kind="stable")
        size = self.batch_size
        device = self.embedder.device
        before = self.embedder.truncated_texts
        batches = []
        for start in range(0, len(texts), size):
            idx = order[start:start + size]
            batch = self.embedder.tokenize([texts[i] for i in idx])  # with echo pooling's pool_mask
            h, z = self.embedder(**{k: v.to(device) for k, v in batch.items()})
            if keep:
                batches.append((idx, h))
            yield idx, z
        stored = sum(h.nbytes for _, h in batches)
        if keep and self.kept_bytes + stored <= KEEP_BYTES:
            self.kept[key] = (batches, self.embedder.truncated_texts - before)
            self.kept_bytes += stored

    def background_sum(self, texts: list[str]) -> tuple[np.ndarray, int, int]:
        """(Σ z in float64, number of texts, texts truncated) for the background mean θ."""
        assert texts, "background_sum needs at least one text"
        before = self.embedder.truncated_texts
        total = None
        for _, z in self.logits(texts, keep=True):
            part = z.to(torch.float64).sum(dim=0)
            total = part if total is None else total + part
        return total.cpu().numpy(), len(texts), self.embedder.truncated_texts - before

    def targets(self, texts: list[str], theta: np.ndarray) -> tuple[TargetBatch, SparsifyStats]:
        """Targets of `texts` (in their order) against the background logits θ."""
        t = self.targets_cfg
        before = self.embedder.truncated_texts
        log_q = log_background(theta, self.embedder.device)
        positions, batches = [], []
        stats = SparsifyStats()
        for idx, z in self.logits(texts):
            batch, batch_stats = sparse_targets(z, log_q, t.tau, t.delta, t.top_k)
            positions.append(idx)
            batches.append(batch)
            stats.add(batch_stats)
        stats.truncated = self.embedder.truncated_texts - before
        order = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        return TargetBatch.concat(batches).select(np.argsort(order)), stats


class ModelDerivedWorker:
    """The `model-derived` kind inside a target worker: the frozen start model it is handed (an `Embedder`, loaded
    once per worker), then chunk after chunk."""

    def __init__(self, model_dir: str, spec, vocab_size: int, batch_size: int, embedder):
        self.builder = ModelDerivedBuilder(embedder, spec, batch_size)

    def reduce(self, pass_name: str, texts: list[str]) -> tuple[np.ndarray, int]:
        assert pass_name == "background", pass_name
        total, count, _ = self.builder.background_sum(texts)
        return total, count

    def targets(self, texts: list[str], arrays: dict[str, np.ndarray]) -> tuple[TargetBatch, dict]:
        batch, s = self.builder.targets(texts, arrays["background"])
        return batch, dict(truncated=s.truncated, dropped_max=s.dropped_max, dropped_sum=s.dropped_sum,
                           cut_by_top_k=s.cut_by_top_k)


def texts_digest(texts: list[str]) -> str:
    """A digest of a list of texts, their order and boundaries included."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
