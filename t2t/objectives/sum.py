"""`sum`: several objectives in one stage, on the same micro-batches, e.g. Text2Token and SimCSE:

    objective:
      name: sum
      parts:
        - {name: t2t, weight: 1.0}
        - {name: simcse, weight: 0.5, temperature: 0.05, dropout: 0.1}

The loss is Σ_i weight_i × L_i, with L_i part i's loss exactly as it would be alone: its sum over its own counted
texts (t2t: those with a non-empty target; simcse: every text; mntp: the masked tokens) divided by its own count over
the whole global batch. Each part keeps its normalisation, so a `sum` of one part with weight 1 trains exactly as that
part alone. The trainer all-reduces one count per part and logs each part's loss (`loss_<name>` beside `loss`;
t2t/train/trainer.py).

A part is its objective's own section, as a stage's `objective:` takes it, plus its `weight`. Every part's set-up
runs, so they act on each other: simcse's attention dropout is set on the backbone and is on for every part's forward
(t2t and mntp train under it too); mntp adds its masked copy of each micro-batch beside the input ids, which the other
parts read unmasked. What the parts need of the model is the union of their needs (mntp: bidirectional attention);
two parts that need different values of one setting are refused. Each objective appears at most once: its loss is
logged under its name.

Cost: each part runs its own forward and backward, through one backward of the weighted sum: t2t + simcse embeds
3B rows per micro-batch of B texts (B for t2t, 2B for simcse's two views), and both graphs are held until that
backward; under ZeRO-3 each part's forward gathers the parameters again. Text2Token's KL could instead be taken on
the first view of simcse's stacked forward (its dropout noise is the same in distribution), saving the B rows; that
couples two losses into one code path for one pair of parts (mntp's masked forward cannot share at all), so the
parts stay independent: any registered objective is a part as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from t2t.errors import ConfigError
from t2t.objectives.base import ObjectiveKind, ObjectiveSpec, objective_kind, register_objective


@dataclass
class PartWeight:
    """What a part of a `sum` has beside its objective's own section (its `name` and that objective's settings, as a
    stage's `objective:` takes them)."""

    weight: float = 1.0
    """The part's factor in the sum: a finite number > 0. It multiplies the part's own mean loss (over the texts,
    or tokens, that the part counts in the global batch)."""

    def __reduce__(self):
        # The class is made at run time (`part_spec`), so pickle cannot import it by name: rebuild it from the
        # objective's own settings class.
        return _rebuild, (type(self).objective_spec, dataclasses.asdict(self))


@functools.cache
def part_spec(spec: type[ObjectiveSpec]) -> type:
    """The section of a part whose objective has the settings `spec`: those settings and a `weight`, in one flat
    dataclass, so a sum's parts print (`t2t config`) as a recipe writes them and read back the same. Its instances
    are instances of `spec`: the objective's checks and loss builder take them as they take its own section."""
    return dataclasses.make_dataclass(f"{spec.__name__}Part", [], bases=(PartWeight, spec),
                                      namespace={"objective_spec": spec})


def _rebuild(spec: type[ObjectiveSpec], values: dict) -> PartWeight:
    return part_spec(spec)(**values)


def part(spec: ObjectiveSpec, weight: float = 1.0) -> PartWeight:
    """A part made in code: the objective section `spec` (or another part's) with `weight`."""
    own = getattr(type(spec), "objective_spec", type(spec))
    return part_spec(own)(**{**dataclasses.asdict(spec), "weight": weight})


@dataclass
class SumObjective(ObjectiveSpec):
    """Several objectives in one stage, on the same micro-batches: the loss is Σ weight × each part's own mean loss
    (each normalised by what it counts alone, over the global batch)."""

    name: str = "sum"
    """The objective (`t2t`, `simcse`, `mntp`, `sum`); its own settings sit beside the name."""
    parts: list[PartWeight] = field(default_factory=list)
    """The objectives summed, each a mapping: an objective's section (`name` and that objective's settings) with its
    `weight`, e.g. `[{name: t2t, weight: 1.0}, {name: simcse, weight: 0.5, temperature: 0.05}]`. Each objective at
    most once; not `sum` itself. Each part's loss is logged as `loss_<name>` in metrics.jsonl beside the total."""


class Sum(ObjectiveKind):
    name = "sum"
    spec = SumObjective
    label = "weighted sum of losses"
    builder = "t2t.train.loss:sum_objective"

    def spec_from(self, raw: dict, build: Callable[[type, Any, str], Any], key: str) -> SumObjective:
        parts = raw.get("parts", [])
        if not isinstance(parts, list):
            raise ConfigError(f"{key}.parts must be a list of objectives with weights, e.g. "
                              f"[{{name: t2t, weight: 1.0}}, {{name: simcse, weight: 0.5}}]; got {parts!r}")
        spec = build(SumObjective, {**raw, "parts": []}, f"{key}.")
        spec.parts = [self.part_from(p, build, f"{key}.parts[{i}]") for i, p in enumerate(parts)]
        return spec

    def part_from(self, raw: Any, build: Callable[[type, Any, str], Any], key: str) -> PartWeight:
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{key} must be a mapping with a name and a weight, e.g. {{name: t2t, weight: 1.0}}; "
                              f"got {raw!r}")
        kind = objective_kind(raw["name"], f"{key}.name")
        if kind is self:
            raise ConfigError(f"{key}.name is sum: a part cannot be a sum itself; list its parts in this one")
        return build(part_spec(kind.spec), raw, f"{key}.")

    def validate(self, spec: SumObjective, key: str) -> None:
        if not spec.parts:
            raise ConfigError(f"{key}.parts is empty; list the objectives to sum, e.g. [{{name: t2t, weight: 1.0}}, "
                              "{name: simcse, weight: 0.5}]")
        first: dict[str, str] = {}  # each objective's first part
        needed: dict[str, tuple[str, str]] = {}  # model field → (value, the part that needs it)
        for i, p in enumerate(spec.parts):
            where = f"{key}.parts[{i}]"
            kind = objective_kind(p.name, f"{where}.name")
            if kind is self:
                raise ConfigError(f"{where}.name is sum: a part cannot be a sum itself; list its parts in this one")
            if not isinstance(p, PartWeight):  # a spec built in code without `part(...)`
                raise ConfigError(f"{where} has no weight; make it with t2t.objectives.sum.part(spec, weight)")
            if not math.isfinite(p.weight) or p.weight <= 0:
                raise ConfigError(f"{where}.weight must be a finite number > 0, got {p.weight}")
            if p.name in first:
                raise ConfigError(f"{where}.name is {p.name}, as {first[p.name]} is; a sum takes each objective once")
            first[p.name] = where
            kind.validate(p, where)
            for setting, value in kind.needs(p).items():
                other = needed.setdefault(setting, (value, where))
                if other[0] != value:
                    raise ConfigError(f"{where} ({p.name}) needs model.{setting}={value}, but {other[1]} needs "
                                      f"model.{setting}={other[0]}; no model is both")

    def needs(self, spec: SumObjective) -> dict[str, str]:
        needs: dict[str, str] = {}
        for p in spec.parts:
            needs.update(objective_kind(p.name).needs(p))  # validate refused parts that disagree
        return needs

    def loss_label(self, spec: SumObjective) -> str:
        terms = []
        for p in spec.parts:
            kind = objective_kind(p.name)
            terms.append(f"{p.weight:g}·{kind.short_label or kind.label}")
        return " + ".join(terms)

    def reads(self, spec: SumObjective) -> bool:
        return any(objective_kind(p.name).reads(p) for p in spec.parts)


register_objective(Sum())
