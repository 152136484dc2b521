"""`simcse`: unsupervised SimCSE (Gao et al., 2021), as LLM2Vec's second step: two dropout views of each text,
InfoNCE over the contrastive batch of all ranks (the loss: `t2t.train.loss.simcse_loss`).

It contrasts the pooled embedding whatever the recipe's `model.pooling`, prompt and attention are: LLM2Vec's
recipe sets mean pooling and bidirectional attention itself (recipes/llm2vec.yaml); from the Text2Token start it
runs causal, with PromptEOL and `last` pooling."""

from __future__ import annotations

import math
from dataclasses import dataclass

from t2t.errors import ConfigError
from t2t.objectives.base import ObjectiveKind, ObjectiveSpec, register_objective


@dataclass
class SimCSEObjective(ObjectiveSpec):
    """Unsupervised SimCSE: reads only the texts of the stage's shards; embeds them as the recipe's `model` says
    (any pooling, prompt and attention: LLM2Vec's is mean pooling, bidirectional)."""

    name: str = "simcse"
    """The objective (`t2t`, `simcse`, `mntp`, `sum`); its own settings sit beside the name."""
    temperature: float = 0.05
    """Cosine similarities are divided by it."""
    dropout: float = 0.1
    """Attention dropout set on the backbone during training: it makes the two views of a text differ."""


class SimCSE(ObjectiveKind):
    name = "simcse"
    spec = SimCSEObjective
    label = "InfoNCE (SimCSE)"
    short_label = "InfoNCE"
    builder = "t2t.train.loss:simcse_objective"
    reads_targets = False

    def validate(self, spec: SimCSEObjective, key: str) -> None:
        if not math.isfinite(spec.temperature) or spec.temperature <= 0:
            raise ConfigError(f"{key}.temperature must be > 0, got {spec.temperature}")
        if not 0 <= spec.dropout < 1:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {spec.dropout}")


register_objective(SimCSE())
