"""Study v3's driver (issue #28): every arm of study.yaml as one `t2t pipeline` run at equal wall-clock budgets.

    .venv/bin/python bench/quality/v3/run.py                      # every run, in priority order; resumable
    .venv/bin/python bench/quality/v3/run.py --until-minutes 120  # start no new run after 2 h; a rerun goes on
    .venv/bin/python bench/quality/v3/run.py --only t2t-s12       # one arm (its seeds and budgets), or one run
    .venv/bin/python bench/quality/v3/run.py --plan               # the runs, their steps and status; runs nothing
    .venv/bin/python bench/quality/v3/run.py --smoke              # every arm with 2 steps, STSBenchmark capped
    .venv/bin/python bench/quality/v3/report.py                   # RESULTS.md, DISCUSSION.md, plots, re-rendered

One run is an arm at one budget and seed. The driver
1. times each kind of training step once (objective, attention, pooling): a `probe_steps` run of that stage,
   its seconds per step the median of `step_s` in its metrics.jsonl, the first step left out; recorded with the
   CPU's bf16 flags and the load average. The budget's minutes become each stage's steps (`stage_steps`), fixed
   for the run from then on, so a resumed run keeps its fingerprints;
2. runs `t2t pipeline --config RECIPE --set ... --until STEP` once per pipeline step up to the last training
   (`base` alone for a training-free arm), timing each: the pipeline skips what is done and resumes training from
   its last checkpoint, so a run stopped anywhere (Ctrl-C, SIGTERM: forwarded, the ranks checkpoint) goes on;
3. evaluates the final model on the study's tasks (`t2t eval`'s runner, cached per model and task in
   <work>/eval), its token alignment (hit@10 on held-out sentences), and for the first seed the score-vs-minutes
   curve (`t2t eval --checkpoints` over the checkpoints kept every `steps / curve_points`);
4. records what finished in <work>/study.json (written atomically) and writes results.json, RESULTS.md,
   DISCUSSION.md and the plots (report.py) after every run.

The pipeline's own eval step is not run: it would also score each arm's start, which is a training-free arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
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
              "curve_points", "curve_tasks", "max_steps", "eval", "references", "set", "goals", "arms", "smoke"}
SMOKE_KEYS = STUDY_KEYS - {"set", "goals", "arms", "smoke", "references"}
ARM_KEYS = {"name", "label", "recipe", "set", "budget", "seeds", "multipliers", "source"}
EVAL_KEYS = {"tasks", "max_samples", "batch_size", "dtype"}
GOAL_KEYS = {"text2token", "rivals", "sts", "sts_baseline", "sts_margin", "paper"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# ---------------------------------------------------------------------------------------------------- the plan
# Pure: no torch, no pipeline. The tests build plans from study files.

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
        goals=dict(raw.get("goals") or {}), smoke=smoke)
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


def plan_runs(study: Study, only: str | None = None) -> list[Run]:
    """Every run, in the order the driver starts them: the training-free arms, then each budget (B first) and seed
    (the first seeds of every arm before the second ones), then the arms with fixed steps (the longest)."""
    runs = [Run(a) for a in study.arms if not a.trained]
    budgeted = [a for a in study.arms if a.trained and not a.fixed_steps]
    for m in sorted(set(study.multipliers)):
        for i in range(max((len(a.seeds) for a in budgeted), default=0)):
            runs += [Run(a, a.seeds[i], m) for a in budgeted if m in a.multipliers and i < len(a.seeds)]
    runs += [Run(a, seed) for a in study.arms if a.fixed_steps for seed in a.seeds]
    if only is None:
        return runs
    chosen = [r for r in runs if only in (r.arm.name, r.variant, r.name)]
    if not chosen:
        raise UserError(f"--only {only}: {shown(study.path)} has no such arm or run (arms: "
                        f"{', '.join(a.name for a in study.arms)}; runs are named like {runs[-1].name})")
    return chosen


def stage_steps(budget: Any, seconds_per_step: dict[str, float], minutes: float, max_steps: int = 0) -> dict:
    """Each stage's optimizer steps (in `seconds_per_step`'s order, the recipe's) for `minutes` of training.

    `shares`: every stage after the first gets the steps that fill its share, rounded up (so stage 2 never gets less
    than its share), and the first stage the steps that fill what is left, rounded down. `equal_steps`: the same
    steps for every stage, as many as fit. `steps`: as given. At least one step a stage; `max_steps` caps them."""
    total = minutes * 60
    stages = list(seconds_per_step)
    if "steps" in budget:
        steps = {s: budget["steps"][s] for s in stages}
    elif "equal_steps" in budget:
        n = max(1, math.floor(total / sum(seconds_per_step.values())))
        steps = {s: n for s in stages}
    else:
        shares = budget["shares"]
        if set(shares) != set(stages):
            raise UserError(f"budget shares name stages {', '.join(shares)}; the recipe's are {', '.join(stages)}")
        steps = {s: max(1, math.ceil(shares[s] * total / seconds_per_step[s])) for s in stages[1:]}
        rest = total - sum(steps[s] * seconds_per_step[s] for s in stages[1:])
        steps = {stages[0]: max(1, math.floor(rest / seconds_per_step[stages[0]])), **steps}
    return {s: min(steps[s], max_steps) if max_steps else steps[s] for s in stages}


def yaml_value(value) -> str:
    """`value` as one line of YAML that reads back equal: what `--set key=VALUE` takes (t2t.config.load)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, allow_unicode=True).strip()
    if text.endswith("\n..."):  # a plain scalar's document end
        text = text[:-4].strip()
    assert yaml.safe_load(text) == value, (value, text)
    return text


def setting(key: str, value) -> str:
    return f"{key}={yaml_value(value)}"


def base_overrides(study: Study, run: Run, run_dir: Path | None = None) -> list[str]:
    """The study's settings, its paths for the run, the seed, then the arm's own settings (later ones win)."""
    run_dir = run_dir or study.work / run.name
    paths = {"run_dir": str(run_dir), "model.path": str(study.work / "base"), "data.corpus": study.corpus,
             "data.max_texts": study.texts, "data.shards_dir": str(run_dir / "shards"),
             "eval.out_dir": str(study.work / "eval"), "seed": run.seed or 0}
    return [setting(k, v) for k, v in {**study.set, **paths, **run.arm.set}.items()]


def step_overrides(cfg, steps: dict[str, int], curve: bool, curve_points: int) -> list[str]:
    """Steps per stage; checkpoints every `steps / curve_points` (all kept for a curve run, else only the last, for
    resuming); a model-derived stage reads one epoch of texts (at least one shard)."""
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps  # one rank: train.nproc 0 on one machine
    every = max(1, math.ceil(min(steps.values()) / curve_points))
    out = [setting(f"stages.{s}.steps", n) for s, n in steps.items()]
    out += [setting("train.save_every", every),
            setting("train.keep_checkpoints", math.ceil(max(steps.values()) / every) + 1 if curve else 1)]
    shard = cfg.targets.shard_size
    for s in cfg.stages:
        if s.targets.kind == "model-derived":
            out.append(setting(f"stages.{s.name}.targets.max_texts",
                               max(shard, math.ceil(steps[s.name] * global_batch / shard) * shard)))
    return out


def probe_key(cfg, stage: str) -> str:
    """What decides the cost of a training step besides the shared settings: objective, attention, pooling."""
    objective = cfg.stage(stage).objective
    name = objective.name
    if name == "sum":
        name += "(" + "+".join(p.name for p in objective.parts) + ")"
    return f"{name}/{cfg.model.attention}/{cfg.model.pooling}"


def probe_overrides(cfg, stage: str, steps: int) -> list[str]:
    """The recipe reduced to stage `stage` alone, from the base, for `steps` steps on data-driven targets (a
    model-derived stage's targets cost a model's forward to make, and its training step costs the same)."""
    spec = dataclasses.asdict(cfg.stage(stage))
    spec.update(start="base", steps=steps, targets={"kind": "data-driven"}, schedule="constant", warmup_steps=0)
    return [setting("stages", [spec]), setting("train.save_every", steps), setting("train.keep_checkpoints", 1)]


def recipe_arg(recipe: Path) -> str:
    """The recipe as the pipeline is given it: relative to the repository (the commands are recorded)."""
    return os.path.relpath(recipe, REPO)


def arm_config(study: Study, run: Run, extra: list[str] = (), run_dir: Path | None = None):
    """The run's recipe with the study's and the arm's overrides, then `extra`: (config, overrides)."""
    from t2t.config import load_config
    from t2t.errors import ConfigError

    overrides = base_overrides(study, run, run_dir) + list(extra)
    try:
        return load_config(run.arm.recipe, overrides), overrides
    except ConfigError as e:  # a bad prompt, sum part or weight: t2t's one-line error, named by arm
        raise UserError(f"{shown(study.path)}: arms.{run.arm.name}: {e}") from None


# ---------------------------------------------------------------------------------------------------- running

def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What the timings depend on: the CPU, whether it computes bf16 natively (else t2t trains in fp32), cores."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    return {"cpu": model, "cpus": os.cpu_count(), "bf16_flags": sorted(set(re.findall(r"avx512_bf16|amx_bf16", lscpu))),
            "python": sys.version.split()[0]}


def metrics_rows(path: Path) -> list[dict]:
    """metrics.jsonl, one row per step (a resumed run logs its redone steps again: the last row counts)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def seconds_per_step(rows: list[dict]) -> float:
    timed = [r["step_s"] for r in rows[1:]] or [r["step_s"] for r in rows]
    return statistics.median(timed)


class StepFailed(UserError):
    """A pipeline step of a run failed: its log says why; a rerun of the driver resumes it."""


class Driver:
    def __init__(self, study: Study):
        self.study = study
        self.work = study.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_file = self.work / "study.json"
        self.state: dict = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.stop_signal: int | None = None

    def remember(self, *keys_and_value) -> None:
        """state[k1][k2]... = value, written atomically (a killed driver loses at most the step it was in)."""
        from t2t.data.files import write_json_atomic

        *keys, value = keys_and_value
        node = self.state
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        write_json_atomic(self.state_file, self.state)

    def run_state(self, run: Run) -> dict:
        return self.state.get("runs", {}).get(run.name, {})

    # ------------------------------------------------------------------ the pipeline, one step at a time

    def pipeline(self, recipe: str, overrides: list[str], until: str, log: Path) -> dict:
        """`t2t pipeline ... --until STEP` in a child process; its wall time and the load around it. SIGTERM to the
        driver is passed on (the ranks checkpoint) and the driver stops after the child; Ctrl-C reaches both."""
        cmd = [sys.executable, "-m", "t2t.cli", "pipeline", "--config", recipe,
               *[a for o in overrides for a in ("--set", o)], "--until", until]
        log.parent.mkdir(parents=True, exist_ok=True)
        start = log.stat().st_size if log.exists() else 0
        load, t0 = load_now(), time.time()
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(cmd[1:])}\n")
            out.flush()
            child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

        def forward(signum, _frame):
            self.stop_signal = signum
            child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            while True:
                try:
                    rc = child.wait()
                    break
                except KeyboardInterrupt:  # the child has its own SIGINT from the terminal: let it checkpoint
                    self.stop_signal = signal.SIGINT
        finally:
            signal.signal(signal.SIGTERM, previous)
        seconds = round(time.time() - t0, 1)
        if self.stop_signal is not None:
            raise SystemExit(f"stopped during {until} ({log}); rerun the same command to resume")
        if rc != 0:
            raise StepFailed(f"t2t pipeline --until {until} failed (exit {rc}); see {log}; rerun to resume")
        said = log.read_text(errors="replace")[start:]
        skipped = re.search(rf"\] {re.escape(until)}: (up to date|taken back)", said) is not None
        return {"seconds": seconds, "load_before": load, "load_after": load_now(), "skipped": skipped}

    def run_steps(self, where: tuple[str, str], recipe: str, overrides: list[str], cfg, until_last: str) -> dict:
        """Every pipeline step up to `until_last`, each timed once (a step finished earlier keeps its time); the
        timings go to state[where[0]][where[1]]["timings"]."""
        from t2t.pipeline import step_names

        section, name = where
        steps = step_names(cfg)
        timings = dict(self.state.get(section, {}).get(name, {}).get("timings", {}))
        for step in steps[:steps.index(until_last) + 1]:
            if step in timings:
                continue
            print(f"{name}: {step}", flush=True)
            timings[step] = self.pipeline(recipe, overrides, step, self.logs / f"{name}.log")
            self.remember(section, name, "timings", timings)
        return timings

    # ------------------------------------------------------------------ budget

    def probe(self, key: str, run: Run, stage: str) -> float:
        """Seconds per step of `key` (objective/attention/pooling), timed once on this machine with `run`'s recipe."""
        from t2t.run_paths import checkpoints_dir, metrics_file

        if key not in self.state.get("probes", {}):
            slug = re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")
            probe_dir = self.work / "probes" / slug
            cfg, _ = arm_config(self.study, run)
            extra = probe_overrides(cfg, stage, self.study.probe_steps)
            cfg, overrides = arm_config(self.study, run, extra, run_dir=probe_dir)
            print(f"timing probe {key}: {self.study.probe_steps} steps", flush=True)
            timings = self.run_steps(("probe_runs", slug), recipe_arg(run.arm.recipe), overrides, cfg,
                                     f"{stage}:train")
            rows = metrics_rows(metrics_file(cfg, stage))
            shutil.rmtree(checkpoints_dir(cfg, stage), ignore_errors=True)  # 570 MB each for SmolLM2; not needed
            train = timings[f"{stage}:train"]
            self.remember("probes", key, {
                "seconds_per_step": seconds_per_step(rows), "step_s": [round(r["step_s"], 3) for r in rows],
                "load_before": train["load_before"], "load_after": train["load_after"], "machine": machine(),
                "arm": run.arm.name, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        return self.state["probes"][key]["seconds_per_step"]

    def steps_of(self, run: Run, cfg) -> dict[str, int]:
        """The run's steps, fixed the first time (a later probe or budget edit never retrains a started run)."""
        known = self.run_state(run).get("steps")
        if known:
            return known
        if run.arm.fixed_steps:
            per_step = {s: 1.0 for s in cfg.stage_names}  # not read for fixed steps
        else:
            per_step = {s: self.probe(probe_key(cfg, s), run, s) for s in cfg.stage_names}
        minutes = self.study.budget_minutes * (run.multiplier or 1)
        steps = stage_steps(run.arm.budget, per_step, minutes, self.study.max_steps)
        self.remember("runs", run.name, "steps", steps)
        return steps

    # ------------------------------------------------------------------ one run

    def run(self, run: Run) -> None:
        from t2t.run_paths import base_export_dir, checkpoints_dir, export_dir, metrics_file

        cfg, overrides = arm_config(self.study, run)
        if run.arm.trained:
            steps = self.steps_of(run, cfg)
            extra = step_overrides(cfg, steps, run.curve, self.study.curve_points)
            cfg, overrides = arm_config(self.study, run, extra)
            until = f"{cfg.stage_names[-1]}:train"
        else:
            steps, until = {}, "base"
        recipe = recipe_arg(run.arm.recipe)
        self.remember("runs", run.name, "command", " ".join(
            ["t2t pipeline --config", recipe, *[f"--set '{o}'" for o in overrides], "--until", until]))
        self.remember("runs", run.name, "plan", {"arm": run.arm.name, "variant": run.variant, "seed": run.seed,
                                                 "multiplier": run.multiplier, "steps": steps})
        self.run_steps(("runs", run.name), recipe, overrides, cfg, until)
        if run.arm.trained:
            train = {s: round(sum(r["step_s"] for r in metrics_rows(metrics_file(cfg, s))) / 60, 2)
                     for s in cfg.stage_names}
            self.remember("runs", run.name, "train_minutes", train)
        model = export_dir(cfg, cfg.stage_names[-1]) if run.arm.trained else base_export_dir(cfg)
        self.remember("runs", run.name, "model", str(model))
        if "hit@10" not in self.run_state(run):
            self.remember("runs", run.name, "hit@10", self.alignment(model))
        if run.curve and "curve" not in self.run_state(run):
            self.remember("runs", run.name, "curve", self.curve(cfg))
        for stage in cfg.stage_names if run.arm.trained else []:  # finished: no resume needs them (disk)
            shutil.rmtree(checkpoints_dir(cfg, stage), ignore_errors=True)
        self.remember("runs", run.name, "done", True)

    def alignment(self, model: Path) -> dict:
        import itertools

        from t2t.data.corpus import iter_texts
        from t2t.eval.alignment import token_alignment
        from t2t.model import load

        start = self.study.texts  # the sentences after the training texts: no arm trained on them
        texts = [t.text for t in itertools.islice(iter_texts(self.study.corpus), start, start + self.study.heldout)]
        return token_alignment(load(model), texts, k=10)

    def curve(self, cfg) -> list[dict]:
        """Every kept checkpoint of every stage on the curve tasks, at its training minutes (the steps' `step_s`
        summed, earlier stages' included). The checkpoints' exports and the checkpoints go after (disk)."""
        from t2t.eval.series import run_series, series_dir
        from t2t.run_paths import checkpoints_dir, metrics_file

        points, offset = [], 0.0
        e = self.study.eval
        for stage in cfg.stage_names:
            rows = metrics_rows(metrics_file(cfg, stage))
            minutes, total = {}, 0.0
            for r in rows:
                total += r["step_s"] / 60
                minutes[r["step"]] = total
            series = run_series(cfg, str(checkpoints_dir(cfg, stage)), 1, None, tasks=self.study.curve_tasks,
                                workers=0, batch_size=e["batch_size"], max_samples=e["max_samples"], dtype=e["dtype"])
            for step, row in series["rows"].items():
                points.append({"stage": stage, "step": int(step), "minutes": round(offset + minutes[int(step)], 3),
                               "scores": row["scores"]})
            offset += total
            shutil.rmtree(series_dir(cfg, stage) / "models", ignore_errors=True)
            shutil.rmtree(checkpoints_dir(cfg, stage), ignore_errors=True)
        return points

    def evaluate(self, models: dict[str, Path | str]) -> dict:
        from t2t.eval import run_eval

        e = self.study.eval
        return run_eval([str(p) for p in models.values()], tasks=e["tasks"], workers=0,
                        out_dir=str(self.work / "eval"), names=list(models), batch_size=e["batch_size"],
                        max_samples=e["max_samples"], dtype=e["dtype"])

    def references(self) -> dict[str, str]:
        from t2t.eval.tfidf import fit_tfidf

        out = {}
        for name in self.study.references:
            if name == "tfidf":
                path = self.work / "tfidf"
                if not (path / "tfidf_config.json").exists():
                    fit_tfidf(self.study.corpus, path, max_texts=self.study.texts)
                out[name] = str(path)
            else:
                out[name] = name  # a packaged model t2t eval knows by name (all-MiniLM-L6-v2)
        return out

    # ------------------------------------------------------------------ results

    def results(self, runs: list[Run], session_minutes: float) -> dict:
        """Everything report.py renders, from the state and one (cached) evaluation of every finished model."""
        done = {r.name: self.run_state(r)["model"] for r in runs if self.run_state(r).get("done")}
        models = {**done, **self.references()}
        table = self.evaluate(models) if models else {"models": [], "tasks": [], "scores": {}, "category_means": {},
                                                      "overall_mean": {}, "errors": {}}
        s = self.study
        arms = []
        for a in s.arms:
            model = arm_config(s, Run(a, a.seeds[0]))[0].model  # the pooling and prompt in effect, defaults included
            arms.append({"name": a.name, "label": a.label, "recipe": recipe_arg(a.recipe), "set": a.set,
                         "source": a.source, "pooling": model.pooling, "attention": model.attention,
                         "prompt": model.template, "seeds": list(a.seeds), "multipliers": list(a.multipliers),
                         "budget": json.loads(json.dumps(a.budget, default=str))})  # fractions as "2/3"
        meta = {"study": os.path.relpath(s.path, REPO), "smoke": s.smoke, "budget_minutes": s.budget_minutes,
                "multipliers": s.multipliers, "seeds": s.seeds, "corpus": s.corpus, "texts": s.texts,
                "heldout": s.heldout, "eval": s.eval, "curve_tasks": s.curve_tasks, "max_steps": s.max_steps,
                "references": s.references, "goals": s.goals, "arms": arms, "planned": [r.name for r in runs],
                "probes": self.state.get("probes", {}), "machine": machine(),
                "session_minutes": round(session_minutes, 1)}
        return {"meta": meta, "runs": {r.name: {**self.run_state(r), "arm": r.arm.name, "variant": r.variant,
                                                "seed": r.seed, "multiplier": r.multiplier}
                                       for r in runs if r.name in self.state.get("runs", {})},
                "table": relative_paths(table)}


def relative_paths(table: dict) -> dict:
    """Model paths relative to the repository (RESULTS.md is committed; machines differ)."""
    def rel(p: str) -> str:
        return os.path.relpath(p, REPO) if os.path.isabs(p) else p

    return dict(table, models=[dict(m, path=rel(m["path"])) for m in table["models"]])


def planned_steps(study: Study, run: Run, probes: dict) -> str:
    """The steps a run will get, as far as the probes recorded so far tell."""
    if not run.arm.trained:
        return ""
    cfg, _ = arm_config(study, run)
    keys = {s: probe_key(cfg, s) for s in cfg.stage_names}
    if not run.arm.fixed_steps and not all(k in probes for k in keys.values()):
        return "after probing " + ", ".join(sorted({k for k in keys.values() if k not in probes}))
    per_step = {s: probes[k]["seconds_per_step"] if k in probes else 1.0 for s, k in keys.items()}
    steps = stage_steps(run.arm.budget, per_step, study.budget_minutes * (run.multiplier or 1), study.max_steps)
    return ", ".join(f"{s} {n}" for s, n in steps.items())


def print_plan(study: Study, runs: list[Run], state: dict) -> None:
    print(f"{shown(study.path)}: B = {study.budget_minutes:g} min{' (smoke)' if study.smoke else ''}; "
          f"{len(runs)} runs, in this order:")
    probes = state.get("probes", {})
    for run in runs:
        s = state.get("runs", {}).get(run.name, {})
        status = "done" if s.get("done") else ("started" if s else "to run")
        budget = ("training-free" if not run.arm.trained else "fixed steps" if run.arm.fixed_steps
                  else f"{study.budget_minutes * run.multiplier:g} min")
        steps = ", ".join(f"{k} {n}" for k, n in s["steps"].items()) if s.get("steps") else \
            planned_steps(study, run, probes)
        print(f"  {run.name:24} {budget:14} {status:8} {steps}")
    if probes:
        print("probes (s/step): " + ", ".join(f"{k} {v['seconds_per_step']:.2f}" for k, v in probes.items()))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=str(STUDY), help="the study file (default: study.yaml beside this script)")
    p.add_argument("--smoke", action="store_true", help="study.yaml's `smoke` values: every arm in minutes")
    p.add_argument("--only", help="run only this arm (all its seeds and budgets), variant or run")
    p.add_argument("--until-minutes", type=float, default=0.0, help="start no new run after this long (0: all)")
    p.add_argument("--plan", action="store_true", help="print the runs and their status; run nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    study = load_study(args.study, smoke=args.smoke)
    runs = plan_runs(study, args.only)
    os.chdir(REPO)  # the recipes' relative paths (corpus, ds_configs) are relative to the repository
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.plan:
        state_file = study.work / "study.json"
        print_plan(study, runs, json.loads(state_file.read_text()) if state_file.exists() else {})
        return 0
    if not Path(study.corpus).exists():
        raise UserError(f"{shown(study.path)}: corpus: {study.corpus} does not exist (relative to the repository)")
    for run in runs:  # every arm's recipe and overrides load before anything runs: a bad prompt stops here
        arm_config(study, run)
    sys.path.insert(0, str(HERE))
    from report import write_results  # bench/quality/v3/report.py

    driver = Driver(study)
    all_runs = plan_runs(study)
    started = time.time()
    for run in runs:
        if driver.run_state(run).get("done"):
            print(f"{run.name}: done earlier, skipped", flush=True)
            continue
        if args.until_minutes and time.time() - started > args.until_minutes * 60:
            print(f"--until-minutes {args.until_minutes:g} reached: {run.name} and the runs after it are left for "
                  "a rerun", flush=True)
            break
        t0 = time.time()
        driver.run(run)
        driver.remember("runs", run.name, "session_seconds", round(time.time() - t0, 1))
        write_results(study.results, driver.results(all_runs, (time.time() - started) / 60))
        print(f"{run.name}: done in {time.time() - t0:.0f} s; wrote {study.results / 'RESULTS.md'}", flush=True)
    write_results(study.results, driver.results(all_runs, (time.time() - started) / 60))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"run.py: {e}", file=sys.stderr)
        sys.exit(2)
