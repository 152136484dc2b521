"""`t2t`: Text2Token, forward KL from the stage's sparse target distributions to the embedding's LM-head
distribution (docs/DESIGN.md §1; the loss: `t2t.train.loss.text2token_loss`)."""

from __future__ import annotations

from dataclasses import dataclass

from t2t.objectives.base import ObjectiveKind, ObjectiveSpec, register_objective


@dataclass
class Text2TokenObjective(ObjectiveSpec):
    """Text2Token: the stage's targets, predicted from the pooled embedding. No settings of its own."""

    name: str = "t2t"
    """The objective (`t2t`, `simcse`, `mntp`, `sum`); its own settings sit beside the name."""


class Text2Token(ObjectiveKind):
    name = "t2t"
    spec = Text2TokenObjective
    label = "KL(target ‖ student)"
    short_label = "KL"
    builder = "t2t.train.loss:text2token_objective"


register_objective(Text2Token())
