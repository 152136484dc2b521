"""Result tables (Markdown, JSON) and a bar chart, for one model or several side by side.

Scores are main scores in points (x100), as MTEB reports them. A category mean is given only
when every task of that category has a score, and the overall mean (over tasks, as MTEB's
"Mean (Task)") only when every task has one, so a failed task never silently lifts a mean.
"""

from __future__ import annotations

import json
from pathlib import Path

from t2t.data.files import atomic_path, write_text_atomic


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def build_table(models, tasks, scores: dict, status: dict, errors: dict, seconds: dict,
                task_sources: dict | None = None, max_samples: int = 0) -> dict:
    """The results table as plain data: per model, per task main score, per-category means, overall mean."""
    task_rows = [{"name": t.metadata.name, "category": t.metadata.type, "main_score": t.metadata.main_score,
                  "splits": list(t.eval_splits), "source": (task_sources or {}).get(t.metadata.name, ""),
                  "dataset_revision": t.metadata.revision} for t in tasks]
    categories = list(dict.fromkeys(r["category"] for r in task_rows))
    table = {
        "models": [{"name": m.name, "path": m.path, "kind": m.kind, "mteb_name": m.mteb_name, "revision": m.revision,
                    **({"settings": m.settings.as_dict(with_dtype=False)} if m.settings else {})} for m in models],
        "tasks": task_rows,
        "scores": {}, "category_means": {}, "overall_mean": {},
        "status": status, "errors": errors, "seconds": seconds, "max_samples": max_samples,
    }
    for m in models:
        row = {r["name"]: scores[m.name].get(r["name"]) for r in task_rows}
        table["scores"][m.name] = row
        table["category_means"][m.name] = {
            c: _mean([row[r["name"]] for r in task_rows if r["category"] == c]) for c in categories}
        table["overall_mean"][m.name] = _mean(list(row.values()))
    return table


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def to_markdown(table: dict) -> str:
    names = [m["name"] for m in table["models"]]
    lines = []
    if table["max_samples"]:
        lines += [f"Smoke-test run: every local task capped at {table['max_samples']} samples per split; "
                  "scores are not comparable to full runs.", ""]
    lines += ["| category | task | metric | " + " | ".join(names) + " |",
              "|---|---|---|" + "---:|" * len(names)]
    for r in table["tasks"]:
        cells = [_fmt(table["scores"][n][r["name"]]) for n in names]
        lines.append(f"| {r['category']} | {r['name']} | {r['main_score']} | " + " | ".join(cells) + " |")
    for c in dict.fromkeys(r["category"] for r in table["tasks"]):
        cells = [_fmt(table["category_means"][n][c]) for n in names]
        lines.append(f"| {c} | **mean** | | " + " | ".join(cells) + " |")
    lines.append("| **all** | **mean (task)** | | " + " | ".join(_fmt(table["overall_mean"][n]) for n in names) + " |")
    failures = [(n, t, e) for n in names for t, e in table["errors"][n].items()]
    if failures:
        lines += ["", "Failed (rerun the same command to retry only these):", ""]
        lines += [f"- {n} / {t}: {e.splitlines()[0] if e else e}" for n, t, e in failures]
    for m in table["models"]:
        lines.append("")
        lines.append(f"`{m['name']}`: {m['kind']} directory {m['path']} (mteb name {m['mteb_name']}, "
                     f"revision {m['revision']})")
        if m.get("settings"):  # a plain directory: how the recipe had it embedded
            lines.append("embedded with the recipe's " + ", ".join(f"{k} {v!r}" for k, v in m["settings"].items()))
    return "\n".join(lines) + "\n"


def plot_scores(table: dict, path: Path) -> None:
    """Grouped bars: one group per task plus the overall mean, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [m["name"] for m in table["models"]]
    labels = [r["name"] for r in table["tasks"]] + ["mean (task)"]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 1.5), 4.5))
    for i, n in enumerate(names):
        values = [table["scores"][n][r["name"]] for r in table["tasks"]] + [table["overall_mean"][n]]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [np.nan if v is None else v for v in values], width, label=n)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("main score (x100)")
    ax.set_title("MTEB main scores" + (f" (capped at {table['max_samples']} samples)" if table["max_samples"] else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_reports(table: dict, out_dir: Path) -> None:
    """`results.json`, `results.md` and `scores.png` in `out_dir`, each written under a temporary name first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # non-ASCII escaped as \uXXXX, as results.json always had it (write_json_atomic would write UTF-8)
    write_text_atomic(out_dir / "results.json", json.dumps(table, indent=2) + "\n")
    write_text_atomic(out_dir / "results.md", to_markdown(table))
    with atomic_path(out_dir / "scores.png") as tmp:
        plot_scores(table, tmp)
