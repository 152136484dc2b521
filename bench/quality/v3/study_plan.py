"""A Study as runs: their order, each stage's steps for a budget of minutes, and the `t2t pipeline --set`
overrides that make an arm's recipe into one run (or a timing probe). Pure but for loading the recipe (t2t.config)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import yaml

from study_file import REPO, Run, Study, UserError, shown


def plan_runs(study: Study, only: str | None = None) -> list[Run]:
    """Every run, in the order the driver starts them: the training-free arms, then each budget (B first) and seed
    (the first seeds of every arm before the second ones), then the arms with fixed steps (the longest)."""
    runs = [Run(a) for a in study.arms if not a.trained]
    budgeted = [a for a in study.arms if a.trained and not a.fixed_steps]
    for m in sorted(set(study.multipliers)):
        for i in range(max((len(a.seeds) for a in budgeted), default=0)):
            if i < study.seeds_at.get(m, i + 1):  # `seeds_at`: the first N seeds of each arm at this budget
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
