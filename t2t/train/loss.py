"""The losses of the training objectives (a stage's `objective` section, `t2t.objectives`): `t2t` (Text2Token),
`simcse` (the unsupervised contrastive baseline) and `mntp` (LLM2Vec's masked next-token prediction, in
t2t/train/mntp.py); each objective's builder here turns its section into the trainer's `Objective`, and `sum`'s
into a `WeightedSum` of its parts' (each normalised by its own count: t2t/objectives/sum.py).

**t2t**: forward KL from a sparse target t(x) to softmax(z(x)) (docs/DESIGN.md §1).

    L = mean_b  Σ_k w_bk log w_bk − Σ_k w_bk (z_b[i_bk] − logsumexp(z_b))

over the texts b whose target is non-empty. The target stays sparse (ids `i`, weights `w`,
a mask over the padded K columns); no dense B × |V| target is ever built. The backward is
written by hand so that the only B × |V| tensor it allocates is the gradient itself:
∂L_b/∂z_b = (Σ_k w_bk) softmax(z_b) − scatter(w_b), made in place from one softmax.

**simcse** (LLM2Vec's SimCSE step, Gao et al. 2021): each text is embedded twice in train
mode; attention dropout (the section's `dropout`, set on the backbone by `Objective.prepare`)
makes the two views a_i, b_i differ. View a_i must pick its own b_i among the second views of
every text in the contrastive batch (InfoNCE, cosine similarity, temperature τ = the section's
`temperature`):

    L_i = −log  exp(cos(a_i, b_i)/τ) / Σ_j exp(cos(a_i, b_j)/τ)

Both views come from one forward pass over the batch stacked twice (2B rows): dropout masks
are drawn independently per row, so this is two passes in distribution, and under ZeRO-3 each
parameter is gathered once per micro-step instead of twice. The shards' targets are ignored;
only the texts are used, so both objectives read the same shards.

The contrastive batch is ONE MICRO-STEP's texts gathered over ALL ranks (micro_batch_size ×
world texts). The second views are all-gathered with gradients
(`torch.distributed.nn.functional.all_gather`, whose backward sums every rank's gradient back
into the owner's rows); each rank sums L_i over its own rows. So splitting a micro-step's
batch over ranks is exact, but gradient accumulation is not: with grad_accum_steps = G an
optimizer step averages G separate InfoNCE losses, each with only its own micro-step's
negatives, which is a different (easier) objective than one batch of G × that many texts.
For more negatives raise micro_batch_size or the number of ranks, not grad_accum_steps.

An objective returns `LossParts`: the *sum* of the per-text losses and how many texts
counted. The trainer divides by the count over the whole global batch, so for `t2t` a global
batch split over any number of ranks and micro-steps gives the same gradient (no in-batch
negatives), even when the micro-batches hold different numbers of empty targets.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from t2t.errors import UserError
from t2t.objectives import ObjectiveSpec, objective_kind
from t2t.train.mntp import MaskedNextToken, mntp_loss, selected_tokens
from t2t.train.objective import LossParts, Objective, WeightedSum  # noqa: F401 - part of t2t.train.loss

log = logging.getLogger(__name__)


class _SparseKL(torch.autograd.Function):
    """Per-text KL(t ‖ softmax(z)) for sparse targets; z (B, V) fp32, ids/w (B, K), w = 0 on padding."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(z, dim=-1)  # (B,)
        picked = z.gather(1, ids)  # (B, K)
        mass = w.sum(dim=1)
        kl = torch.special.xlogy(w, w).sum(dim=1) - (w * picked).sum(dim=1) + mass * lse
        ctx.save_for_backward(z, ids, w, mass)
        return kl

    @staticmethod
    def backward(ctx, grad_kl: torch.Tensor):
        z, ids, w, mass = ctx.saved_tensors
        grad = torch.softmax(z, dim=-1)  # the one B × |V| allocation: it becomes the gradient in place
        grad.mul_((mass * grad_kl).unsqueeze(1))
        grad.scatter_add_(1, ids, -(w * grad_kl.unsqueeze(1)))
        return grad, None, None


def sparse_kl(z: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(t_b ‖ softmax(z_b)) for each row b (shape (B,)); rows with an all-false mask give 0.

    z: (B, V) logits (computed in fp32 here); ids: (B, K) int64 token ids; w: (B, K) weights
    summing to 1 per non-empty row; mask: (B, K) bool, true on real target entries.
    """
    if z.dim() != 2 or ids.shape != w.shape or ids.shape != mask.shape or ids.shape[0] != z.shape[0]:
        raise ValueError(f"sparse_kl: shapes z {tuple(z.shape)}, ids {tuple(ids.shape)}, w {tuple(w.shape)}, "
                         f"mask {tuple(mask.shape)} do not fit (B, V) and (B, K)")
    w = torch.where(mask, w.float(), 0.0)
    ids = torch.where(mask, ids, 0)  # padded columns point at id 0 with weight 0
    return _SparseKL.apply(z.float(), ids, w)


def counted_texts(batch: dict) -> int:
    """Texts of a collated batch that the text2token loss counts: those with a non-empty target."""
    return int(batch["target_mask"].any(dim=1).sum())


def pool_inputs(batch: dict, copies: int = 1) -> dict:
    """The tokenized batch's `pool_mask` (echo pooling's) as the embedder's keyword argument, stacked `copies` times
    like the rows it goes with; {} for the other modes, whose batches have none, so their call stays
    model(input_ids, attention_mask)."""
    if "pool_mask" not in batch:
        return {}
    return {"pool_mask": torch.cat([batch["pool_mask"]] * copies) if copies > 1 else batch["pool_mask"]}


def text2token_loss(model: Callable, batch: dict) -> LossParts:
    """Forward the embedder (LM head inside) and sum the sparse KL over texts with a non-empty target."""
    _, z = model(batch["input_ids"], batch["attention_mask"], **pool_inputs(batch))
    kl = sparse_kl(z, batch["target_ids"], batch["target_w"], batch["target_mask"])
    return LossParts(total=kl.sum(), count=counted_texts(batch))


def batch_texts(batch: dict) -> int:
    """Texts of a collated batch: SimCSE counts every one."""
    return int(batch["input_ids"].shape[0])


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows of `x` stacked in rank order, with gradients flowing back to their owners,
    and where this rank's rows start. All ranks must pass the same shape (the reader's batches are fixed-size).

    Without a process group (or with one rank) it is `x` itself.
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return x, 0
    import torch.distributed.nn.functional as dist_autograd

    parts = dist_autograd.all_gather(x)
    return torch.cat(parts), torch.distributed.get_rank() * x.shape[0]


def simcse_loss(model: Callable, batch: dict, temperature: float) -> LossParts:
    """Sum of InfoNCE losses of this rank's texts against the second views of the whole contrastive batch.

    `model` returns (h, z); only the pooled h is used (the LM-head logits z are left unused).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    h, _ = model(torch.cat([ids, ids]), torch.cat([mask, mask]), **pool_inputs(batch, copies=2))
    first, second = F.normalize(h.float(), dim=-1).chunk(2)
    second_all, offset = gather_with_grad(second)
    logits = first @ second_all.T / temperature  # (B, world × B) cosine similarities / τ
    labels = torch.arange(first.shape[0], device=first.device) + offset
    return LossParts(total=F.cross_entropy(logits, labels, reduction="sum"), count=batch_texts(batch))


def set_attention_dropout(embedder: torch.nn.Module, p: float) -> int:
    """Set the attention dropout of a Llama/Mistral/Qwen2-family backbone to `p`; returns how many layers got it.

    On the pinned transformers each attention layer copies `config.attention_dropout` into its
    own `attention_dropout` at construction and passes it to the attention kernel only in train
    mode, so the layers' attributes are what takes effect; the config is set too so it reads true.
    """
    lm = getattr(embedder, "lm", embedder)
    layers = [m for m in lm.modules() if isinstance(getattr(m, "attention_dropout", None), (int, float))]
    if not layers:
        raise UserError(f"{type(lm).__name__} has no attention layers with an attention_dropout setting; "
                         "the simcse objective cannot make dropout views with it")
    lm.config.attention_dropout = p
    for m in layers:
        m.attention_dropout = p
    log.info("simcse: attention dropout %.3g on %d attention layers", p, len(layers))
    return len(layers)


def text2token_objective(spec, seed: int) -> Objective:
    """The `t2t` objective (`t2t.objectives.text2token`)."""
    return Objective("t2t", text2token_loss, counted_texts)


def simcse_objective(spec, seed: int) -> Objective:
    """The `simcse` objective (`t2t.objectives.simcse`): its temperature, and its dropout set on the backbone."""
    return Objective("simcse", partial(simcse_loss, temperature=spec.temperature), batch_texts,
                     partial(set_attention_dropout, p=spec.dropout))


def mntp_objective(spec, seed: int) -> Objective:
    """The `mntp` objective (`t2t.objectives.mntp`): its masks drawn from `seed`, its mask token resolved by `prepare`
    from the tokenizer."""
    state = MaskedNextToken(probability=spec.probability, token=spec.mask_token, seed=seed)
    return Objective("mntp", mntp_loss, selected_tokens, state.prepare, state.prepare_batch)


def sum_objective(spec, seed: int) -> WeightedSum:
    """The `sum` objective (`t2t.objectives.sum`): each part's own Objective, built as it would be alone, with its
    weight."""
    return WeightedSum("sum", tuple((objective_for(part, seed), part.weight) for part in spec.parts))


def objective_for(spec: ObjectiveSpec, seed: int = 0) -> Objective | WeightedSum:
    """The trainer's Objective for a stage's `objective` section and the recipe's `seed` (a WeightedSum for `sum`)."""
    return objective_kind(spec.name).build(spec, seed)
