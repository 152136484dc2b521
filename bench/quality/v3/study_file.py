"""study.yaml, read and checked: the arms, their budgets and seeds, the study's settings. Pure: no torch, no
pipeline; every error is one line naming the file and the key. study_plan.py turns a Study into runs and their
`t2t pipeline` overrides; run.py runs them."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:  # t2t, where it is not installed (the venv installs it editable)
    sys.path.insert(0, str(REPO))

from t2t.errors import UserError  # noqa: E402

STUDY = HERE / "study.yaml"
TRAINING_FREE = "training-free"
STUDY_KEYS = {"budget_minutes", "multipliers", "seeds", "corpus", "texts", "heldout", "work", "results", "probe_steps",
              "seeds_at", "curve_points", "curve_tasks", "max_steps", "eval", "references", "set", "goals", "arms", "smoke"}
SMOKE_KEYS = STUDY_KEYS - {"set", "goals", "arms", "smoke", "references"}
ARM_KEYS = {"name", "label", "recipe", "set", "budget", "seeds", "multipliers", "source"}
EVAL_KEYS = {"tasks", "max_samples", "batch_size", "dtype"}
GOAL_KEYS = {"text2token", "rivals", "sts", "sts_baseline", "sts_margin", "paper"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    recipe: Path
    set: dict
    budget: Any  # TRAINING_FREE, or {"shares": {stage: Fraction}} / {"equal_steps": True} / {"steps": {stage: n}}
    seeds: tuple[int, ...]
    multipliers: tuple[float, ...]
    source: str = ""

    @property
    def trained(self) -> bool:
        return self.budget != TRAINING_FREE

    @property
    def fixed_steps(self) -> bool:
        return self.trained and "steps" in self.budget


@dataclass(frozen=True)
class Run:
    """An arm at one budget (a multiple of B; None: fixed steps or no training) and seed (None: no training)."""

    arm: Arm
    seed: int | None = None
    multiplier: float | None = None

    @property
    def variant(self) -> str:
        """The arm at this budget: what seeds are averaged over."""
        return self.arm.name if self.multiplier in (None, 1) else f"{self.arm.name}-x{self.multiplier:g}"

    @property
    def name(self) -> str:
        return self.variant if self.seed is None else f"{self.variant}-seed{self.seed}"

    @property
    def curve(self) -> bool:
        """The first seed of a trained arm keeps its checkpoints for the score-vs-minutes curve."""
        return self.arm.trained and self.seed == self.arm.seeds[0]


@dataclass
class Study:
    path: Path
    budget_minutes: float
    multipliers: list[float]
    seeds: list[int]
    corpus: str
    texts: int
    heldout: int
    work: Path
    results: Path
    probe_steps: int
    curve_points: int
    curve_tasks: list[str]
    max_steps: int
    eval: dict
    references: list[str]
    set: dict
    goals: dict
    arms: list[Arm] = field(default_factory=list)
    smoke: bool = False
    seeds_at: dict[float, int] = field(default_factory=dict)  # multiplier → how many of an arm's seeds run there

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def shown(path: Path) -> str:
    """A path as messages show it: relative to the current directory where it is under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fail(path: Path, key: str, message: str) -> UserError:
    return UserError(f"{shown(path)}: {key}: {message}")


def _number(path, key, value, kind=float, minimum=None, above=None):
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise _fail(path, key, f"must be {'a number' if kind is float else 'an integer'}, got {value!r}")
    if above is not None and not value > above:
        raise _fail(path, key, f"must be > {above:g}, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(path, key, f"must be >= {minimum}, got {value!r}")
    return value


def _numbers(path, key, value, kind=float, minimum=None, above=None) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(path, key, f"must be a non-empty list, got {value!r}")
    return [_number(path, f"{key}[{i}]", v, kind, minimum, above) for i, v in enumerate(value)]


def _unknown(path: Path, where: str, raw: dict, valid: set) -> None:
    for key in raw:
        if key not in valid:
            raise _fail(path, f"{where}{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")


def fraction(path: Path, key: str, value) -> Fraction:
    """A share as study.yaml writes it: 0.5, 1 or "1/3" (exact, so that 1/3 + 2/3 is 1)."""
    try:
        share = Fraction(str(value).replace(" ", "")) if not isinstance(value, bool) else None
    except (ValueError, ZeroDivisionError):
        share = None
    if share is None or not 0 < share <= 1:
        raise _fail(path, key, f"must be a fraction in (0, 1], e.g. 1/3 or 0.5; got {value!r}")
    return share


def parse_budget(path: Path, key: str, raw) -> Any:
    if raw == TRAINING_FREE:
        return raw
    forms = "training-free, {shares: {STAGE: FRACTION}}, {equal_steps: true} or {steps: {STAGE: N}}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _fail(path, key, f"must be one of {forms}; got {raw!r}")
    (form, value), = raw.items()
    if form == "shares":
        if not isinstance(value, dict) or not value:
            raise _fail(path, f"{key}.shares", f"must map each stage to its share, got {value!r}")
        shares = {str(s): fraction(path, f"{key}.shares.{s}", v) for s, v in value.items()}
        if sum(shares.values()) != 1:
            raise _fail(path, f"{key}.shares", f"must sum to 1, got {' + '.join(map(str, shares.values()))}")
        return {"shares": shares}
    if form == "equal_steps":
        if value is not True:
            raise _fail(path, f"{key}.equal_steps", f"must be true, got {value!r}")
        return {"equal_steps": True}
    if form == "steps":
        if not isinstance(value, dict) or not value:
            raise _fail(path, f"{key}.steps", f"must map each stage to its steps, got {value!r}")
        return {"steps": {str(s): _number(path, f"{key}.steps.{s}", n, int, minimum=1) for s, n in value.items()}}
    raise _fail(path, key, f"must be one of {forms}; got {raw!r}")


def parse_arm(path: Path, index: int, raw, study_seeds: list[int], study_multipliers: list[float]) -> Arm:
    if not isinstance(raw, dict):
        raise _fail(path, f"arms[{index}]", f"must be a mapping with a name, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(path, f"arms[{index}].name", f"must be a name of letters, digits, - and _, got {name!r}")
    where = f"arms.{name}"
    _unknown(path, f"{where}.", raw, ARM_KEYS)
    for key in ("recipe", "budget"):
        if key not in raw:
            raise _fail(path, f"{where}.{key}", "is required")
    recipe = (path.parent / str(raw["recipe"])).resolve()
    if not recipe.is_file():
        raise _fail(path, f"{where}.recipe", f"{raw['recipe']} does not exist (paths are relative to {path.name})")
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise _fail(path, f"{where}.set", f"must map recipe keys to values, got {overrides!r}")
    budget = parse_budget(path, f"{where}.budget", raw["budget"])
    seeds = _numbers(path, f"{where}.seeds", raw.get("seeds", study_seeds), int, minimum=0)
    multipliers = _numbers(path, f"{where}.multipliers", raw.get("multipliers", [1]), above=0)
    for i, m in enumerate(multipliers):
        if m not in study_multipliers:
            raise _fail(path, f"{where}.multipliers[{i}]", f"{m:g} is not one of the study's multipliers "
                                                           f"{study_multipliers}")
    return Arm(name=name, label=str(raw.get("label", name)), recipe=recipe, set=dict(overrides), budget=budget,
               seeds=tuple(seeds), multipliers=tuple(multipliers), source=" ".join(str(raw.get("source", "")).split()))


def load_study(path: str | Path = STUDY, smoke: bool = False) -> Study:
    """study.yaml, checked: every error is one line naming the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{shown(path)}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{shown(path)}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{shown(path)}: must be a mapping of the study's keys, got {type(raw).__name__}")
    _unknown(path, "", raw, STUDY_KEYS)
    file_multipliers = _numbers(path, "multipliers", raw.get("multipliers", [1]), above=0)
    if smoke:
        extra = raw.get("smoke") or {}
        if not isinstance(extra, dict):
            raise _fail(path, "smoke", f"must be a mapping of study keys, got {extra!r}")
        _unknown(path, "smoke.", extra, SMOKE_KEYS)
        raw = {**raw, **extra}
    for key in ("budget_minutes", "corpus", "arms"):
        if key not in raw:
            raise _fail(path, key, "is required")
    evaluation = raw.get("eval") or {}
    if not isinstance(evaluation, dict):
        raise _fail(path, "eval", f"must be a mapping, got {evaluation!r}")
    _unknown(path, "eval.", evaluation, EVAL_KEYS)
    evaluation = {"tasks": ["STSBenchmark"], "max_samples": 0, "batch_size": 32, "dtype": "bfloat16", **evaluation}
    for key in ("tasks",):
        if not isinstance(evaluation[key], list) or not evaluation[key]:
            raise _fail(path, f"eval.{key}", f"must be a non-empty list of task names, got {evaluation[key]!r}")
    _number(path, "eval.max_samples", evaluation["max_samples"], int, minimum=0)
    _number(path, "eval.batch_size", evaluation["batch_size"], int, minimum=1)
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict):
        raise _fail(path, "set", f"must map recipe keys to values, got {overrides!r}")
    seeds = _numbers(path, "seeds", raw.get("seeds", [0]), int, minimum=0)
    multipliers = _numbers(path, "multipliers", raw.get("multipliers", [1]), above=0)
    seeds_at = raw.get("seeds_at") or {}
    if not isinstance(seeds_at, dict):
        raise _fail(path, "seeds_at", f"must map a budget multiplier to a number of seeds, got {seeds_at!r}")
    for m, n in seeds_at.items():
        if m not in file_multipliers:  # the file's: --smoke's own multipliers may leave some out
            raise _fail(path, f"seeds_at.{m}", f"{m!r} is not one of the study's multipliers {file_multipliers}")
        _number(path, f"seeds_at.{m}", n, int, minimum=1)
    study = Study(
        path=path,
        budget_minutes=_number(path, "budget_minutes", raw["budget_minutes"], above=0),
        multipliers=multipliers, seeds=seeds, corpus=str(raw["corpus"]),
        texts=_number(path, "texts", raw.get("texts", 20000), int, minimum=1),
        heldout=_number(path, "heldout", raw.get("heldout", 500), int, minimum=1),
        work=Path(str(raw.get("work", "runs/quality-v3"))), results=Path(str(raw.get("results", "runs/quality-v3"))),
        probe_steps=_number(path, "probe_steps", raw.get("probe_steps", 6), int, minimum=2),
        curve_points=_number(path, "curve_points", raw.get("curve_points", 4), int, minimum=1),
        curve_tasks=list(raw.get("curve_tasks") or ["STSBenchmark"]),
        max_steps=_number(path, "max_steps", raw.get("max_steps", 0), int, minimum=0),
        eval=evaluation, references=list(raw.get("references") or []), set=dict(overrides),
        goals=dict(raw.get("goals") or {}), smoke=smoke,
        seeds_at=dict(seeds_at))
    arms = raw["arms"]
    if not isinstance(arms, list) or not arms:
        raise _fail(path, "arms", f"must be a non-empty list of arms, got {arms!r}")
    for i, item in enumerate(arms):
        arm = parse_arm(path, i, item, seeds, file_multipliers)
        if any(a.name == arm.name for a in study.arms):
            raise _fail(path, f"arms[{i}].name", f"{arm.name!r} names two arms")
        study.arms.append(arm)
    _unknown(path, "goals.", study.goals, GOAL_KEYS)
    names = {a.name for a in study.arms}
    for key, value in study.goals.items():
        for name in value if isinstance(value, list) else [value] if isinstance(value, str) else []:
            if name not in names:
                raise _fail(path, f"goals.{key}", f"{name!r} is not an arm (arms: {', '.join(sorted(names))})")
    return study
