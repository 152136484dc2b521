"""What every rank decides together about the weights it trains: are they good enough to checkpoint, and has the
model collapsed. Each decision is all-reduced, so no rank stops or saves alone.

A checkpoint is good only if the model it holds is good. The step's loss is that of the weights *before* its
update, so before each checkpoint the updated weights get no-grad forwards of their own:

- the step's last micro-batch: the loss and every output must be finite;
- a fixed probe batch of random token ids from the whole vocabulary: its pooled embeddings must be finite and
  must not all be equal. The step's own texts are not enough: an update can blow up exactly the embedding rows
  of the tokens it saw, which the final norm then flattens to one finite vector for every text of that batch,
  while any text with another token overflows to NaN. The probe's tokens are drawn across the vocabulary, so it
  meets rows the step did not touch. It is 4 texts, once per checkpoint (bench/bench_checks.py measures it:
  0.018 of a step on SmolLM2).
"""

from __future__ import annotations

import torch

PROBE_TEXTS = 4
"""Rows of the probe batch: enough to tell equal embeddings from distinct ones, cheap beside one step."""


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def probe_batch(vocab_size: int, max_length: int, seed: int) -> dict:
    """`PROBE_TEXTS` rows of `max_length` token ids drawn uniformly from the vocabulary, the same on every rank
    and in every run of the recipe (its own generator: the global RNG, and so training, is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (PROBE_TEXTS, max_length), generator=generator)
    # No prompt around these tokens: a span pooling mode (echo) pools the whole row; other modes ignore pool_mask.
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pool_mask": torch.ones_like(ids)}


def problem_after_update(engine, objective, batch: dict, probe: dict) -> str | None:
    """What is wrong with the weights as they are now, decided alike on every rank; None when nothing is.

    No grad and eval mode (no dropout), the RNG fenced off: the training that follows is bit-identical to a run
    without this check. Collective: under ZeRO-3 each forward gathers the parameters from every rank."""
    outputs = []

    def model(*args, **kwargs):
        out = engine(*args, **kwargs)
        outputs.extend(out if isinstance(out, (tuple, list)) else [out])
        return out

    engine.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            batch = to_device(batch, engine.device)
            totals = [term.loss(model, batch).total for term, _ in objective.terms]  # each part of a `sum`
            batch_bad = any(not bool(torch.isfinite(t).all()) for t in (*totals, *outputs) if t is not None)
            pooled, _ = engine(**to_device(probe, engine.device))
            probe_bad = not bool(torch.isfinite(pooled).all())
            probe_flat = not probe_bad and bool((pooled == pooled[:1]).all())
    finally:
        engine.train()
    batch_bad, probe_bad, probe_flat = all_reduce_sum([float(batch_bad), float(probe_bad), float(probe_flat)],
                                                      engine.device)
    if batch_bad:
        return "give a non-finite loss or output on the step's batch"
    if probe_bad:
        return f"give non-finite embeddings on the {PROBE_TEXTS} random-token probe texts"
    if probe_flat:
        return f"give the same embedding to each of the {PROBE_TEXTS} random-token probe texts"
    return None


def grad_norm_is_zero(engine) -> bool:
    """Whether the last optimizer step's global gradient norm was exactly 0, decided alike on every rank.

    The norm is already global (DeepSpeed all-reduces it), but a rank that saw otherwise must not stop alone."""
    norm = engine.get_global_grad_norm()
    zero = norm is not None and float(norm) == 0.0
    (zeros,) = all_reduce_sum([float(zero)], engine.device)
    return zeros == torch.distributed.get_world_size()
