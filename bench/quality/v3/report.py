"""Study v3's RESULTS.md, DISCUSSION.md, results.json and plots, from the numbers run.py gathers.

    .venv/bin/python bench/quality/v3/report.py                         # re-render bench/quality/v3/ from its results.json
    .venv/bin/python bench/quality/v3/report.py runs/quality-v3-smoke   # another results directory (a smoke run's)

A variant is an arm at one budget; its seeds are averaged and their spread (max − min) shown in brackets. Each goal
of issue #28 is read off the same numbers as met, missed or not established, with the figures: a lead counts only
beyond the seed spread of both sides, an arm not measured leaves its goal not established, and nothing here is
written by hand. No t2t import at module level (the tests render synthetic results in a fraction of a second).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE_LABELS = {"tfidf": "TF-IDF on the training texts (lexical floor)",
                    "all-MiniLM-L6-v2": "all-MiniLM-L6-v2 (supervised ceiling)"}
MET, MISSED, OPEN = "met", "missed", "not established"


# ---------------------------------------------------------------------------------------------------- numbers

def mean_spread(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (max(values) - min(values) if len(values) > 1 else None)


def cell(pair, scale: float = 1.0, digits: int = 2) -> str:
    mean, spread = pair
    if mean is None:
        return "—"
    return f"{mean * scale:.{digits}f}" + (f" [{spread * scale:.{digits}f}]" if spread is not None else "")


def budget_name(multiplier) -> str:
    return "B" if multiplier in (None, 1) else f"{multiplier:g}B"


def budget_label(multiplier) -> str:
    return "" if multiplier in (None, 1) else f" at {budget_name(multiplier)}"


def summarise(results: dict) -> dict[str, dict]:
    """Per variant (an arm at one budget, or a reference), in the study's arm order: its runs, their mean and
    spread per task, per category and overall, hit@10, steps and training minutes."""
    table, runs, meta = results["table"], results["runs"], results["meta"]
    scored = {m["name"] for m in table["models"]}
    categories = list(dict.fromkeys(t["category"] for t in table["tasks"]))
    members: dict[str, list[str]] = {}
    for name, run in runs.items():
        if name in scored and run.get("done"):
            members.setdefault(run["variant"], []).append(name)
    arm_order = {a["name"]: i for i, a in enumerate(meta["arms"])}
    labels = {a["name"]: a["label"] for a in meta["arms"]}
    order = sorted(members, key=lambda v: (arm_order[runs[members[v][0]]["arm"]],
                                           runs[members[v][0]]["multiplier"] or 0))
    summary = {}
    for variant in order + [r for r in meta.get("references", []) if r in scored]:
        names = members.get(variant, [variant])
        first = runs.get(names[0], {})
        arm, multiplier = first.get("arm", variant), first.get("multiplier")
        trained = bool(first.get("steps") or first.get("plan", {}).get("steps"))
        summary[variant] = {
            "arm": arm, "multiplier": multiplier, "runs": names, "trained": trained,
            "label": labels.get(arm, REFERENCE_LABELS.get(arm, arm)) + budget_label(multiplier),
            "overall": mean_spread([table["overall_mean"][n] for n in names]),
            "categories": {c: mean_spread([table["category_means"][n].get(c) for n in names]) for c in categories},
            "tasks": {t["name"]: mean_spread([table["scores"][n].get(t["name"]) for n in names])
                      for t in table["tasks"]},
            "hit@10": mean_spread([runs.get(n, {}).get("hit@10", {}).get("hit@10") for n in names]),
            "steps": first.get("steps", {}),
            "train_minutes": mean_spread([sum(runs[n]["train_minutes"].values()) for n in names
                                          if runs.get(n, {}).get("train_minutes")]),
            "curve": next((runs[n]["curve"] for n in names if runs.get(n, {}).get("curve")), None)}
    return summary


def beyond_spread(diff: float, spreads: list) -> tuple[str, str]:
    """(verdict, how the spread reads) for a difference between two variants: it counts only beyond the larger seed
    spread of the two, which needs two seeds of each."""
    if any(s is None for s in spreads):
        return OPEN, "one seed on at least one side, so no spread to compare with"
    margin = max(spreads)
    if diff > margin:
        return MET, f"beyond the larger seed spread, {margin:.2f}"
    if diff < -margin:
        return MISSED, f"behind by more than the larger seed spread, {margin:.2f}"
    return OPEN, f"within the larger seed spread, {margin:.2f}"


def seeds_text(v: dict) -> str:
    n = len(v["runs"])
    return f"{n} seed{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------------------- goals

def goal_lead(summary: dict, goals: dict, multiplier: float) -> list[dict]:
    """Goal 1 at one budget: Text2Token's best variant against each rival, six-task mean and per category."""
    at = budget_name(multiplier)
    ours = [v for v in summary.values() if v["arm"] in goals.get("text2token", []) and v["multiplier"] == multiplier
            and v["overall"][0] is not None]
    verdicts = []
    for rival_arm in goals.get("rivals", []):
        rival = next((v for v in summary.values() if v["arm"] == rival_arm and v["multiplier"] == multiplier
                      and v["overall"][0] is not None), None)
        title = f"Text2Token's best vs {rival_arm} at {at}"
        if not ours or rival is None:
            missing = " and ".join(x for x, ok in (("Text2Token", bool(ours)), (rival_arm, rival is not None))
                                   if not ok)
            verdicts.append({"goal": title, "status": OPEN, "text": f"{missing} not measured at {at} yet."})
            continue
        best = max(ours, key=lambda v: v["overall"][0])
        diff = best["overall"][0] - rival["overall"][0]
        status, how = beyond_spread(diff, [best["overall"][1], rival["overall"][1]])
        rows = []
        for c, pair in best["categories"].items():
            other = rival["categories"][c]
            if pair[0] is None or other[0] is None:
                rows.append((c, cell(pair), cell(other), "—", OPEN))
                continue
            d = pair[0] - other[0]
            rows.append((c, cell(pair), cell(other), f"{d:+.2f}", beyond_spread(d, [pair[1], other[1]])[0]))
        verdicts.append({"goal": title, "status": status, "categories": rows, "text": (
            f"{best['label']} ({seeds_text(best)}) {cell(best['overall'])} against {rival['label']} "
            f"({seeds_text(rival)}) {cell(rival['overall'])} on the six-task mean: {diff:+.2f}, {how}.")})
    return verdicts


def goal_sts(summary: dict, goals: dict) -> dict:
    """Goal 2: the best Text2Token variant (any stage, or arm 5) on STSBenchmark ≥ the training-free PromptEOL + 3."""
    margin = goals.get("sts_margin", 3)
    title = f"STSBenchmark: Text2Token ≥ training-free PromptEOL + {margin:g}"
    base = summary.get(goals.get("sts_baseline", ""), {}).get("tasks", {}).get("STSBenchmark", (None, None))[0]
    ours = [v for v in summary.values() if v["arm"] in goals.get("sts", [])
            and v["tasks"].get("STSBenchmark", (None, None))[0] is not None]
    if base is None or not ours:
        missing = "the training-free PromptEOL" if base is None else "no Text2Token variant"
        return {"goal": title, "status": OPEN, "text": f"{missing} measured on STSBenchmark yet."}
    best = max(ours, key=lambda v: v["tasks"]["STSBenchmark"][0])
    score, spread = best["tasks"]["STSBenchmark"]
    diff = score - base
    spread_text = f", seed spread {spread:.2f}" if spread is not None else ""
    others = ", ".join(f"{v['label']} {cell(v['tasks']['STSBenchmark'])}" for v in ours if v is not best)
    pending = [a for a in goals.get("sts", []) if not any(v["arm"] == a for v in ours)]
    status = MET if diff >= margin else OPEN if pending else MISSED  # one arm still to come may meet it
    return {"goal": title, "status": status, "text": (
        f"best: {best['label']} {score:.2f} ({seeds_text(best)}{spread_text}) against {base:.2f}: {diff:+.2f} points "
        f"(goal {margin:+g})." + (f" The others: {others}." if others else "")
        + (f" Not measured yet: {', '.join(pending)}." if status == OPEN else ""))}


def goal_paper(summary: dict, goals: dict) -> dict:
    """Goal 3: LLM2Vec at its paper's steps against Text2Token given at most the same training minutes."""
    title = "LLM2Vec at its paper's steps vs Text2Token at the same wall-clock"
    paper = next((v for v in summary.values() if v["arm"] == goals.get("paper") and v["overall"][0] is not None), None)
    if paper is None or paper["train_minutes"][0] is None:
        return {"goal": title, "status": OPEN, "text": "LLM2Vec at its paper's steps has not finished yet."}
    minutes = paper["train_minutes"][0]
    ours = [v for v in summary.values() if v["arm"] in goals.get("text2token", []) and v["overall"][0] is not None
            and v["train_minutes"][0] is not None]
    if not ours:
        return {"goal": title, "status": OPEN, "text": "no Text2Token variant measured yet."}
    within = [v for v in ours if v["train_minutes"][0] <= minutes * 1.05]
    best = max(within or ours, key=lambda v: (v["train_minutes"][0], v["overall"][0]))
    ours_minutes = best["train_minutes"][0]
    diff = best["overall"][0] - paper["overall"][0]
    spreads = [s for s in (best["overall"][1], paper["overall"][1]) if s is not None]
    figures = (f"LLM2Vec ({', '.join(f'{k} {n}' for k, n in paper['steps'].items())} steps, {minutes:.0f} min of "
               f"training) {cell(paper['overall'])} against {best['label']} ({ours_minutes:.0f} min, "
               f"{seeds_text(best)}) {cell(best['overall'])} on the six-task mean: {diff:+.2f}")
    if not spreads:
        return {"goal": title, "status": OPEN, "text": figures + "; one seed on each side, so no spread to judge by."}
    margin = max(spreads)
    if ours_minutes > minutes * 1.05:
        status, how = OPEN, f"Text2Token had more minutes ({ours_minutes:.0f} against {minutes:.0f})"
    elif diff > margin:
        status, how = MET, f"beyond the seed spread {margin:.2f}, with at most LLM2Vec's minutes"
    elif diff < -margin and ours_minutes >= 0.9 * minutes:
        status, how = MISSED, f"behind by more than the seed spread {margin:.2f} at about the same minutes"
    elif diff < -margin:
        status, how = OPEN, (f"behind by more than the seed spread {margin:.2f}, but with {ours_minutes:.0f} of "
                             f"LLM2Vec's {minutes:.0f} min: no Text2Token run as long yet")
    else:
        status, how = OPEN, f"within the seed spread {margin:.2f}"
    return {"goal": title, "status": status, "text": f"{figures}; {how}."}


def curve_line(variant: dict, task: str) -> str:
    points = [p for p in variant["curve"] if p["scores"].get(task) is not None]
    if not points:
        return f"{variant['label']}: no {task} score on its curve."
    first, last = points[0], points[-1]
    peak = max(points, key=lambda p: p["scores"][task])
    return (f"{variant['label']}: {task} {first['scores'][task]:.2f} at {first['minutes']:.1f} min, peak "
            f"{peak['scores'][task]:.2f} at {peak['minutes']:.1f} min ({peak['stage']} step {peak['step']}), "
            f"{last['scores'][task]:.2f} at the end, {last['minutes']:.1f} min ({len(points)} checkpoint"
            f"{'s' if len(points) != 1 else ''})")


def goal_curves(summary: dict, task: str, arms: list[dict]) -> dict:
    """Goal 4: a score-vs-minutes curve for every trained variant (its first seed)."""
    title = "Score against minutes for every trained arm"
    trained = [v for v in summary.values() if v["trained"]]
    if not trained:
        return {"goal": title, "status": OPEN, "text": "no trained arm has finished yet."}
    missing = [v["label"] for v in trained if not v["curve"] or len(v["curve"]) < 2]
    lines = [curve_line(v, task) for v in trained if v["curve"]]
    pending = [a["name"] for a in arms
               if a["budget"] != "training-free" and not any(v["arm"] == a["name"] for v in trained)]
    status = MISSED if missing else OPEN if pending else MET
    text = f"{len(trained) - len(missing)} of {len(trained)} trained variants have a curve of two points or more"
    text += f"; none for {', '.join(missing)}." if missing else "."
    text += f" Not run yet: {', '.join(pending)}." if pending and not missing else ""
    return {"goal": title, "status": status, "text": text, "lines": lines}


def all_goals(summary: dict, meta: dict) -> list[dict]:
    goals = meta["goals"]
    verdicts = [g for m in meta["multipliers"] for g in goal_lead(summary, goals, m)]
    verdicts += [goal_sts(summary, goals), goal_paper(summary, goals),
                 goal_curves(summary, meta["curve_tasks"][0], meta["arms"])]
    return verdicts


# ---------------------------------------------------------------------------------------------------- documents

def goal_lines(verdicts: list[dict]) -> list[str]:
    return [f"- {g['goal']}: **{g['status']}**. {g['text']}" for g in verdicts]


def discussion(summary: dict, meta: dict, verdicts: list[dict]) -> str:
    lines = ["# Study v3: discussion, read off the numbers", "",
             f"Generated by bench/quality/v3/report.py from results.json ({len(summary)} variants measured, "
             f"{len(meta['planned'])} runs planned). Each goal of issue #28 is met, missed or not established; a "
             "lead counts only beyond the larger seed spread of the two sides, so one seed never establishes one."]
    if meta.get("smoke"):
        lines += ["", f"**This is a smoke run** ({meta['max_steps']} steps per stage at most, "
                      f"{', '.join(meta['eval']['tasks'])} on {meta['eval']['max_samples'] or 'all'} rows): its "
                      "numbers check the driver, not the methods."]
    for g in verdicts:
        lines += ["", f"## {g['goal']}: {g['status']}", "", g["text"]]
        if g.get("categories"):
            lines += ["", "| category | Text2Token's best | rival | difference | verdict |", "|---|---:|---:|---:|---|",
                      *[f"| {c} | {a} | {b} | {d} | {s} |" for c, a, b, d, s in g["categories"]]]
        if g.get("lines"):
            lines += [""] + [f"- {line}" for line in g["lines"]]
    return "\n".join(lines) + "\n"


def setup_lines(results: dict) -> list[str]:
    meta = results["meta"]
    m = meta["machine"]
    flags = ", ".join(m.get("bf16_flags") or []) or "none: t2t trains and evaluates in fp32"
    lines = [f"- Machine: {m.get('cpu') or 'unknown CPU'}, {m.get('cpus')} CPUs, native bf16 flags: {flags}.",
             f"- Corpus `{meta['corpus']}`: the first {meta['texts']} sentences train every arm; the next "
             f"{meta['heldout']} are held out for token alignment.",
             f"- Budget B = {meta['budget_minutes']:g} min of optimizer steps per arm (target computation timed "
             f"apart), at {', '.join(budget_name(x) for x in meta['multipliers'])}; steps from one timing probe per kind "
             "of training step (seconds per step: the median of `step_s`, first step left out):"]
    for key, p in meta.get("probes", {}).items():
        lines.append(f"  - {key}: {p['seconds_per_step']:.2f} s/step (load {p['load_before']} → {p['load_after']}, "
                     f"{p['at']})")
    e = meta["eval"]
    lines.append(f"- Evaluation: {', '.join(e['tasks'])}" + (f", {e['max_samples']} rows per split" if
                                                             e["max_samples"] else " in full") +
                 f"; the curves on {', '.join(meta['curve_tasks'])}. `m [s]`: mean over seeds [spread, max − min].")
    if meta.get("max_steps"):
        lines.append(f"- Smoke: every stage capped at {meta['max_steps']} steps.")
    return lines


def budget_text(arm: dict) -> str:
    budget = arm["budget"]
    if budget == "training-free":
        return budget
    at = " at " + ", ".join(budget_name(x) for x in arm["multipliers"])
    if "shares" in budget:
        return "shares " + ", ".join(f"{s} {v}" for s, v in budget["shares"].items()) + at
    if "equal_steps" in budget:
        return "equal steps" + at
    return "steps " + ", ".join(f"{s} {n}" for s, n in budget["steps"].items())


def arms_lines(meta: dict) -> list[str]:
    lines = ["| arm | recipe | pooling, attention | prompt | budget | seeds | source |", "|---|---|---|---|---|---|---|"]
    for a in meta["arms"]:
        prompt = a.get("prompt", "").replace("|", "\\|")
        seeds = "—" if a["budget"] == "training-free" else ", ".join(map(str, a["seeds"]))
        lines.append(f"| {a['name']} | {a['recipe']} | {a.get('pooling', '')}, {a.get('attention', '')} | "
                     f"`{prompt}` | {budget_text(a)} | {seeds} | {a['source']} |")
    return lines


def timing_lines(results: dict) -> list[str]:
    lines = ["| run | step | seconds | load (1/5/15 min) before → after |", "|---|---|---:|---|"]
    for name, run in results["runs"].items():
        for step, t in run.get("timings", {}).items():
            seconds = "finished earlier" if t.get("skipped") else f"{t['seconds']:.0f}"
            lines.append(f"| {name} | {step} | {seconds} | {t['load_before']} → {t['load_after']} |")
    return lines


def results_md(results: dict, summary: dict, verdicts: list[dict]) -> str:
    meta, table = results["meta"], results["table"]
    categories = list(dict.fromkeys(t["category"] for t in table["tasks"]))
    tasks = [t["name"] for t in table["tasks"]]
    done = {n for n, r in results["runs"].items() if r.get("done")}
    missing = [n for n in meta["planned"] if n not in done]
    lines = ["# Study v3: Text2Token against the methods a user would pick instead (SmolLM2-135M-Instruct)", "",
             f"Reproduce: `.venv/bin/python bench/quality/v3/run.py{' --smoke' if meta.get('smoke') else ''}` "
             f"(resumable; this session {meta['session_minutes']:.0f} min). Generated by bench/quality/v3/report.py "
             "from results.json; the discussion is DISCUSSION.md, also generated.", "",
             "## Setup", "", *setup_lines(results), "", "### Arms", "", *arms_lines(meta), "",
             "## Progress", "",
             f"{len(done)} of the {len(meta['planned'])} planned runs finished."
             + (f" Not yet: {', '.join(missing)}." if missing else " Every planned run is in."), "",
             "## Goals (measured, not promised)", "", *goal_lines(verdicts), "",
             "## Summary", "",
             "| variant | " + " | ".join(categories) + " | mean (task) | STSBenchmark | hit@10 | seeds | steps | "
             "training min |", "|---|" + "---:|" * (len(categories) + 6)]
    for v in summary.values():
        steps = ", ".join(f"{s} {n}" for s, n in v["steps"].items()) or "—"
        lines.append(f"| {v['label']} | " + " | ".join(cell(v["categories"][c]) for c in categories)
                     + f" | {cell(v['overall'])} | {cell(v['tasks'].get('STSBenchmark', (None, None)))} | "
                     f"{cell(v['hit@10'], scale=100)} | {len(v['runs']) if v['trained'] else '—'} | {steps} | "
                     f"{cell(v['train_minutes'], digits=1)} |")
    lines += ["", "hit@10 (x100): share of held-out sentences where one of the embedding's 10 most probable LM-head "
              "tokens is one of the sentence's own content tokens.", "", "![scores](scores.png)", "",
              "## Per task (mean over seeds [spread])", "",
              "| variant | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    lines += [f"| {v['label']} | " + " | ".join(cell(v["tasks"][t]) for t in tasks) + " |" for v in summary.values()]
    task = meta["curve_tasks"][0]
    curves = [v for v in summary.values() if v["curve"]]
    lines += ["", f"## {task} against training minutes (first seed)", ""]
    if curves:
        lines += ["![curves](curves.png)", "", "| variant | stage | step | minutes | " + task + " |",
                  "|---|---|---:|---:|---:|"]
        for v in curves:
            lines += [f"| {v['label']} | {p['stage']} | {p['step']} | {p['minutes']:.1f} | "
                      f"{cell((p['scores'].get(task), None))} |" for p in v["curve"]]
    else:
        lines.append("No curve yet.")
    lines += ["", "## Measured wall times (each pipeline step of each run)", "", *timing_lines(results),
              "", "## Every model", "", "| model | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for m in table["models"]:
        n = m["name"]
        lines.append(f"| {n} | " + " | ".join(cell((table["scores"][n].get(t), None)) for t in tasks)
                     + f" | {cell((table['overall_mean'][n], None))} |")
    if results.get("gpu"):
        lines += ["", *gpu_lines(results["gpu"])]
    errors = {n: e for n, e in table.get("errors", {}).items() if e}
    if errors:
        lines += ["", "Failed evaluations (a rerun retries them): " + "; ".join(
            f"{n} {t}: {msg}" for n, e in errors.items() for t, msg in e.items())]
    return "\n".join(lines) + "\n"


def gpu_lines(gpu: dict) -> list[str]:
    """The GPU table (gpu.sh's gpu_results.json): arms 2, 3, 4 at the papers' steps, scaled to fit the minutes."""
    scale = gpu.get("scale")
    lines = [f"## GPU: {gpu['device']}{' (smoke)' if gpu.get('smoke') else ''}", "",
             f"bench/quality/v3/gpu.sh: the papers' step counts, the stages after Text2Token's stage 1 scaled by "
             f"{scale if scale is not None else '—'} to end within the minutes ({gpu.get('seconds', 0):.0f} s in "
             f"all); {gpu['dtype']}, global batch {gpu['batch']}, corpus `{gpu['corpus']}`; STSBenchmark and BIOSSES "
             "scored as mteb does (Spearman × 100 of the cosine similarities), on the GPU.", "",
             "| model | steps | training s | STSBenchmark | BIOSSES |", "|---|---|---:|---:|---:|"]
    for name, scores in gpu.get("scores", {}).items():
        run = next((r for n, r in gpu.get("runs", {}).items() if n.startswith(name + "-seed")), {})
        steps = ", ".join(f"{s} {n}" for s, n in run.get("steps", {}).items()) or "—"
        train = sum(run.get("train_s", {}).values()) if run.get("train_s") else None
        lines.append(f"| {name} | {steps} | {'—' if train is None else f'{train:.0f}'} | "
                     f"{cell((scores.get('STSBenchmark'), None))} | {cell((scores.get('BIOSSES'), None))} |")
    return lines


# ---------------------------------------------------------------------------------------------------- plots

def plot_scores(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(summary)
    categories = list(next(iter(summary.values()))["categories"]) + ["mean"]
    x = np.arange(len(categories))
    width = 0.85 / len(variants)
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, name in enumerate(variants):
        v = summary[name]
        pairs = [v["categories"][c] for c in categories[:-1]] + [v["overall"]]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, [np.nan if m is None else m for m, _ in pairs], width,
               yerr=[0 if s is None else s / 2 for _, s in pairs], capsize=2, label=v["label"])
    ax.set_xticks(x, categories, rotation=20, ha="right")
    ax.set_ylabel("main score (x100), mean over seeds")
    ax.set_title(f"{title} (error bars: half the seed spread)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(summary: dict, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for v in summary.values():
        points = [p for p in v["curve"] or [] if p["scores"].get(task) is not None]
        if points:
            ax.plot([p["minutes"] for p in points], [p["scores"][task] for p in points], marker="o", label=v["label"])
    ax.set_xlabel("training minutes (optimizer steps)")
    ax.set_ylabel(f"{task} (x100)")
    ax.set_title(f"{task} against training minutes, first seed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(out_dir: str | Path, results: dict, plots: bool = True) -> None:
    """results.json, RESULTS.md, DISCUSSION.md and (with `plots`) scores.png and curves.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "gpu" not in results and (out / "gpu_results.json").is_file():  # gpu.sh's table, copied in by hand
        results = {**results, "gpu": json.loads((out / "gpu_results.json").read_text())}
    summary = summarise(results)
    verdicts = all_goals(summary, results["meta"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "RESULTS.md").write_text(results_md(results, summary, verdicts))
    (out / "DISCUSSION.md").write_text(discussion(summary, results["meta"], verdicts))
    if plots and summary:
        plot_scores(summary, out / "scores.png", "Study v3 on SmolLM2-135M: category means")
        if any(v["curve"] for v in summary.values()):
            plot_curves(summary, results["meta"]["curve_tasks"][0], out / "curves.png")


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    write_results(folder, json.loads((folder / "results.json").read_text()))
    print(f"wrote {folder / 'RESULTS.md'} and {folder / 'DISCUSSION.md'}")
