"""Training objectives as recipe sections: a stage's `objective: {name: ..., <its settings>}` (see `base`).

One module per objective, registered on import here (in this order, the order every message lists them); no torch."""

from t2t.objectives.base import (OBJECTIVES, ObjectiveKind, ObjectiveSpec, objective_from, objective_kind,
                                 register_objective)
from t2t.objectives.text2token import Text2TokenObjective  # isort: skip
from t2t.objectives.simcse import SimCSEObjective  # isort: skip
from t2t.objectives.mntp import MNTPObjective  # isort: skip
from t2t.objectives.sum import SumObjective  # isort: skip

__all__ = ["OBJECTIVES", "ObjectiveKind", "ObjectiveSpec", "objective_from", "objective_kind", "register_objective",
           "Text2TokenObjective", "SimCSEObjective", "MNTPObjective", "SumObjective"]
