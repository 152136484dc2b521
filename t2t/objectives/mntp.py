"""`mntp`: LLM2Vec's masked next-token prediction, with bidirectional attention (the loss:
`t2t.train.mntp.mntp_loss`)."""

from __future__ import annotations

from dataclasses import dataclass

from t2t.errors import ConfigError
from t2t.objectives.base import ObjectiveKind, ObjectiveSpec, register_objective


@dataclass
class MNTPObjective(ObjectiveSpec):
    """Masked next-token prediction: reads only the texts of the stage's shards; bidirectional attention."""

    name: str = "mntp"
    """The objective (`t2t`, `simcse`, `mntp`, `sum`); its own settings sit beside the name."""
    probability: float = 0.2
    """Share of each text's tokens that are selected and predicted (LLM2Vec: 0.2 for Llama-family models); 80% of
    them become `mask_token`, 10% a random token, 10% stay."""
    mask_token: str = "_"
    """The vocabulary token that masks a selected token (LLM2Vec's `mask_token_type: blank` is `_`)."""


class MNTP(ObjectiveKind):
    name = "mntp"
    spec = MNTPObjective
    label = "CE at masked tokens (MNTP)"
    short_label = "MNTP CE"
    builder = "t2t.train.loss:mntp_objective"
    attention = "bidirectional"
    reads_targets = False

    def validate(self, spec: MNTPObjective, key: str) -> None:
        if not 0 < spec.probability < 1:
            raise ConfigError(f"{key}.probability must be in (0, 1), got {spec.probability}")
        if not spec.mask_token:
            raise ConfigError(f"{key}.mask_token must name a token of the vocabulary, got an empty string")


register_objective(MNTP())
