"""What an objective is to a recipe: its own settings (a stage's `objective:` section, chosen by `name`), their
checks, what it needs of the model, and the label of its loss; all without torch, so the recipe loader checks them.

The loss itself (torch) is built by the objective's `builder`, imported only where training runs: a function
`(spec, seed) -> t2t.train.objective.Objective`. A new objective is its own module under `t2t/objectives/` (its
spec dataclass, an `ObjectiveKind` and a `register_objective` call) plus one import line in
`t2t/objectives/__init__.py`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from t2t.errors import ConfigError
from t2t.registry import Registry


@dataclass
class ObjectiveSpec:
    """What every objective's section has: its name."""

    name: str = "t2t"
    """The objective (`t2t`, `simcse`, `mntp`, `sum`); its own settings sit beside the name."""


class ObjectiveKind:
    """One objective: its settings' dataclass, their check, what it needs of the model, its loss's builder.

    The class attributes say it for the objective whatever its settings; the methods taking the `spec` are what the
    recipe loader, the trainer and the report ask, so that an objective made of others (`sum`) answers from its
    parts."""

    name: ClassVar[str]
    spec: ClassVar[type[ObjectiveSpec]]
    label: ClassVar[str]
    """The y-axis label of its loss curve in the pipeline's report."""
    short_label: ClassVar[str] = ""
    """Its loss in a word or two, for the label of a `sum` with it (empty: `label`)."""
    builder: ClassVar[str]
    """`module:function` building the trainer's Objective from `(spec, seed)` (imports torch)."""
    pooling: ClassVar[str | None] = None
    """The `model.pooling` it needs, if any."""
    attention: ClassVar[str | None] = None
    """The `model.attention` it needs, if any."""
    reads_targets: ClassVar[bool] = True
    """Whether its loss reads the shards' target distributions (else only the texts)."""

    def spec_from(self, raw: dict, build: Callable[[type, Any, str], Any], key: str) -> ObjectiveSpec:
        """Its typed spec from a section naming it (`build` is the recipe loader's `from_dict`), not yet validated."""
        return build(self.spec, raw, f"{key}.")

    def validate(self, spec: ObjectiveSpec, key: str) -> None:
        """A ConfigError naming `key.field` for a setting out of range."""

    def needs(self, spec: ObjectiveSpec) -> dict[str, str]:
        """The model settings it needs, `{"pooling": ..., "attention": ...}` where it needs one."""
        return {k: v for k, v in (("pooling", self.pooling), ("attention", self.attention)) if v is not None}

    def loss_label(self, spec: ObjectiveSpec) -> str:
        """The y-axis label of its loss curve."""
        return self.label

    def reads(self, spec: ObjectiveSpec) -> bool:
        """Whether its loss reads the shards' target distributions."""
        return self.reads_targets

    def build(self, spec: ObjectiveSpec, seed: int) -> Any:
        module, name = self.builder.split(":")
        return getattr(importlib.import_module(module), name)(spec, seed)


OBJECTIVES = Registry[ObjectiveKind]("objective", ConfigError)


def register_objective(kind: ObjectiveKind) -> ObjectiveKind:
    return OBJECTIVES.register(kind.name, kind)


def objective_kind(name: str, key: str = "objective.name") -> ObjectiveKind:
    return OBJECTIVES.get(name, key)


def objective_from(raw: Any, build: Callable[[type, Any, str], Any], key: str) -> ObjectiveSpec:
    """The typed spec of an `objective:` mapping, by its `name` (`build` is the recipe loader's `from_dict`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a mapping with a name, e.g. {{name: {raw if isinstance(raw, str) else 't2t'}}}; "
                          f"got {raw!r}")
    kind = objective_kind(raw.get("name", "t2t"), f"{key}.name")
    spec = kind.spec_from(raw, build, key)
    kind.validate(spec, key)
    return spec
