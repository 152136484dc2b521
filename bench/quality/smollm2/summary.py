"""A study's numbers summarised per arm: the mean over seeds with the spread (max − min), per task, per category
and overall, token alignment, one plot. Study v2's report.py renders them (study v1's own driver was removed; its
RESULTS.md, ABLATIONS.md and plot in bench/quality/ stay as the record)."""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path


def arm_of(model: str) -> str:
    return re.sub(r"-seed\d+$", "", model)


def arms_in(table: dict, arms: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(arm, label) of every arm of `arms` present in the table, in that order."""
    present = {arm_of(m["name"]) for m in table["models"]}
    return [(arm, label) for arm, label in arms if arm in present]


def _summary(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (max(values) - min(values) if len(values) > 1 else None)


def _cell(mean: float | None, spread: float | None, scale: float = 1.0) -> str:
    if mean is None:
        return "—"
    return f"{mean * scale:.2f}" + (f" [{spread * scale:.2f}]" if spread is not None else "")


def summarise(table: dict, alignment: dict, arms: list[tuple[str, str]]) -> dict:
    """Per arm: seeds, per-category and overall means over seeds (with spread), alignment."""
    categories = list(dict.fromkeys(t["category"] for t in table["tasks"]))
    result = {}
    for arm, _ in arms_in(table, arms):
        members = [m["name"] for m in table["models"] if arm_of(m["name"]) == arm]
        row = {"models": members,
               "overall": _summary([table["overall_mean"][m] for m in members]),
               "categories": {c: _summary([table["category_means"][m][c] for m in members]) for c in categories},
               "tasks": {t["name"]: _summary([table["scores"][m][t["name"]] for m in members])
                         for t in table["tasks"]}}
        for metric in ("hit@10", "precision@10"):
            row[metric] = _summary([alignment[m][metric] if m in alignment else None for m in members])
        result[arm] = row
    return result


def plot(summary: dict, path: Path, title: str) -> None:  # in arms_in's order
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(summary)
    categories = list(next(iter(summary.values()))["categories"]) + ["overall"]
    x = np.arange(len(categories))
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(10.5, 4.5))
    for i, arm in enumerate(arms):
        pairs = [summary[arm]["categories"][c] for c in categories[:-1]] + [summary[arm]["overall"]]
        means = [np.nan if m is None else m for m, _ in pairs]
        spreads = [0 if s is None else s / 2 for _, s in pairs]
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, means, width, yerr=spreads, capsize=2, label=arm)
    ax.set_xticks(x, categories, rotation=20, ha="right")
    ax.set_ylabel("main score (x100), mean over seeds")
    ax.set_title(f"{title} (error bars: half the spread over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # clear of the bars
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def relative_paths(table: dict) -> dict:
    """The table with model paths relative to the repository (RESULTS.md is committed; machines differ)."""
    repo = Path(__file__).resolve().parents[3]
    return dict(table, models=[dict(m, path=os.path.relpath(m["path"], repo)) for m in table["models"]])
