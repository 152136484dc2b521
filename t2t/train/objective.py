"""What an objective is to the trainer: its loss as a sum and a count, and the hooks it may set (built from a stage's
`objective` section by its builder in `t2t.train.loss`; the sections themselves are `t2t.objectives`). A `sum` of
objectives is a `WeightedSum`; the trainer takes either as its `terms`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class LossParts:
    """A micro-batch's loss as a sum over the texts that count, and their number."""

    total: torch.Tensor
    """Sum of per-text losses (a scalar with grad)."""
    count: int
    """Texts (or, for mntp, tokens) that contributed (t2t: texts with a non-empty target; simcse: all texts)."""


def _no_preparation(embedder) -> None:
    pass


def _as_read(batch: dict) -> dict:
    return batch


@dataclass(frozen=True)
class Objective:
    """A training objective: its loss, how many texts of a batch it counts (known before the forward),
    and what it changes on the model before training."""

    name: str
    loss: Callable[[Callable, dict], LossParts]
    count: Callable[[dict], int]
    prepare: Callable[[torch.nn.Module], None] = _no_preparation
    """Called once on the Embedder (inside the engine) before the first step."""
    prepare_batch: Callable[[dict], dict] = _as_read
    """Called on every micro-batch as the reader hands it out, before counting (mntp masks tokens here)."""
    # What it needs of the model (pooling, attention) and whether it reads the targets are the recipe's to know:
    # `t2t.objectives` (checked at recipe load).

    @property
    def terms(self) -> tuple[tuple[Objective, float], ...]:
        """What the trainer counts, normalises and weighs one by one: this objective alone, with weight 1."""
        return ((self, 1.0),)


@dataclass(frozen=True)
class WeightedSum:
    """Objectives trained together on the same micro-batches (the `sum` objective, `t2t.objectives.sum`): the trainer
    counts and normalises each term by itself, as it would alone, and adds them with their weights."""

    name: str
    terms: tuple[tuple[Objective, float], ...]
    """Each part's Objective and its weight, in the recipe's order; the parts' names differ."""

    def prepare(self, embedder) -> None:
        for part, _ in self.terms:
            part.prepare(embedder)

    def prepare_batch(self, batch: dict) -> dict:
        for part, _ in self.terms:  # each adds what it reads (mntp: its masked copy) and leaves the rest as read
            batch = part.prepare_batch(batch)
        return batch
