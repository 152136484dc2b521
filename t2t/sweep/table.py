"""The sweep's evaluation and its one table: `sweep.json`, `sweep.md`, one plot per swept key.

Every finished point's final model (its last stage's export) is evaluated on the recipe's `eval` tasks with
`t2t eval`'s own runner, on the sweep's Ray, cached per model and task in `<sweep>/eval/`; the model every
point starts from is evaluated once as the reference row. A model shared by several points (their grids
differ only in a key no step reads) is evaluated once.
"""

from __future__ import annotations

import json
from pathlib import Path

from t2t import run_paths
from t2t.data.files import atomic_path, write_json_atomic, write_text_atomic
from t2t.eval.report import _fmt, _mean


def evaluate_points(sweep, points: list, address: str) -> dict:
    """{"tasks": [...], "scores": {row: {task: score}}, "start_rows": [...]} for the finished points (and their
    start models), one `run_eval` per distinct eval setting."""
    from t2t.eval import run_eval

    groups: dict[str, list] = {}
    for p in points:
        e = p.cfg.eval
        groups.setdefault(json.dumps([e.tasks, e.benchmark, e.dtype, e.batch_size, e.workers]), []).append(p)
    tasks: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    start_rows: list[str] = []
    for group in groups.values():
        models: dict[str, str] = {}  # resolved model directory → the row that names it
        rows: dict[str, str] = {}  # row → resolved model directory
        for p in group:
            start = str(run_paths.base_export_dir(p.cfg).resolve())
            if start not in models:
                models[start] = "start" if not start_rows else f"start ({p.name})"
                start_rows.append(models[start])
            rows[models[start]] = start
        for p in group:
            final = str(run_paths.export_dir(p.cfg, p.cfg.stage_names[-1]).resolve())
            models.setdefault(final, p.name)
            rows[p.name] = final
        e = group[0].cfg.eval
        table = run_eval(list(models), tasks=e.tasks, benchmark=e.benchmark, workers=e.workers,
                         out_dir=str(sweep.dir / "eval"), batch_size=e.batch_size, dtype=e.dtype,
                         ray_address=address, names=list(models.values()))
        tasks.update({t["name"]: t for t in table["tasks"]})
        shown = dict(zip(models, (m["name"] for m in table["models"])))  # as the eval names them (made safe)
        for row, model in rows.items():
            scores[row] = table["scores"][shown[model]]
    return dict(tasks=list(tasks.values()), scores=scores, start_rows=start_rows)


def write_sweep(sweep, rows: dict[str, dict], evals: dict) -> dict:
    """Write sweep.json, sweep.md and the plots; returns the sweep.json content."""
    tasks = evals["tasks"]
    categories = list(dict.fromkeys(t["category"] for t in tasks))
    rows = {**{name: dict(status="reference") for name in evals["start_rows"]}, **rows}
    for name, row in rows.items():
        row["scores"] = {t["name"]: evals["scores"].get(name, {}).get(t["name"]) for t in tasks}
        row["category_means"] = {c: _mean([row["scores"][t["name"]] for t in tasks if t["category"] == c])
                                 for c in categories}
        row["overall_mean"] = _mean(list(row["scores"].values())) if tasks else None
    points = [n for n, r in rows.items() if r["status"] != "reference"]
    best = {}
    for column in [t["name"] for t in tasks] + [f"mean:{c}" for c in categories] + ["mean"]:
        values = {n: value_of(rows[n], column) for n in points if value_of(rows[n], column) is not None}
        if values:
            top = max(values.values())
            best[column] = [n for n, v in values.items() if v == top]
    result = dict(recipe=sweep.recipe, overrides=sweep.overrides, grid=sweep.grid, directory=str(sweep.dir),
                  tasks=tasks, categories=categories, rows=rows, best=best,
                  progress=dict(points=len(points), done=sum(rows[n]["status"] == "done" for n in points),
                                failed=sum(rows[n]["status"] == "failed" for n in points)))
    result["plots"] = write_plots(sweep, result)
    write_json_atomic(sweep.dir / "sweep.json", result)
    write_text_atomic(sweep.dir / "sweep.md", to_markdown(result))
    return result


def value_of(row: dict, column: str) -> float | None:
    if column == "mean":
        return row["overall_mean"]
    if column.startswith("mean:"):
        return row["category_means"][column[5:]]
    return row["scores"][column]


def to_markdown(result: dict) -> str:
    grid = " ".join(f"--grid {k}={','.join(v)}" for k, v in result["grid"].items())
    sets = " ".join(f"--set {o}" for o in result["overrides"])
    progress = result["progress"]
    lines = [f"# Sweep: {result['directory']}", "", f"`t2t sweep --config {result['recipe']} {sets} {grid}`".replace("  ", " "),
             "", f"{progress['points']} points: {progress['done']} done, {progress['failed']} failed. "
             "Scores are MTEB main scores (x100) of each point's final model; **bold** marks the best point per "
             "column.", ""]
    columns = [t["name"] for t in result["tasks"]] + [f"mean:{c}" for c in result["categories"]] + ["mean"]
    keys = list(result["grid"])
    header = ["point", *keys, *[c.replace("mean:", "mean ") for c in columns]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * (1 + len(keys)) + "---:|" * len(columns)]
    for name, row in result["rows"].items():
        if row["status"] == "failed":
            cells = [f"failed at {row['failed_step']}"] + [""] * (len(columns) - 1)
        else:
            cells = [f"**{_fmt(value_of(row, c))}**" if name in result["best"].get(c, []) else _fmt(value_of(row, c))
                     for c in columns]
        values = [row.get("assignments", {}).get(k, "") for k in keys]
        lines.append("| " + " | ".join([name, *values, *cells]) + " |")
    failed = [(n, r) for n, r in result["rows"].items() if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed points (rerun the same command: it redoes only what is missing or failed):", ""]
        lines += [f"- {n}: step {r['failed_step']} ({r['error']}); log {r['log']}" for n, r in failed]
    if result["plots"]:
        lines += [""] + [f"![{k}]({Path(p).name})" for k, p in result["plots"].items()]
    return "\n".join(lines) + "\n"


def write_plots(sweep, result: dict) -> dict[str, str]:
    """One PNG per swept key: the mean score against the key's values, one line per setting of the other keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2t.sweep.grid import labels

    if not result["tasks"]:
        return {}
    keys = list(result["grid"])
    label = labels(keys)
    points = {n: r for n, r in result["rows"].items() if r["status"] != "reference"}
    plots = {}
    for key in keys:
        values = result["grid"][key]
        lines: dict[str, dict[str, float]] = {}
        for row in points.values():
            others = ", ".join(f"{label[k]}={v}" for k, v in row["assignments"].items() if k != key) or "score"
            if row.get("overall_mean") is not None:
                lines.setdefault(others, {})[row["assignments"][key]] = row["overall_mean"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for others, by_value in lines.items():
            xs = [i for i, v in enumerate(values) if v in by_value]
            ax.plot(xs, [by_value[values[i]] for i in xs], marker="o", label=others)
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(key)
        ax.set_ylabel("mean main score (x100)")
        ax.set_title(f"{sweep.dir.name}: mean over {len(result['tasks'])} task(s)")
        if lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = sweep.dir / f"plot-{label[key].replace('.', '-')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        plots[key] = str(path)
    return plots
