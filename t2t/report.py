"""The pipeline's report: `<run_dir>/report.md` with loss curves and per-task score bars as PNG files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from t2t.config import Config


def read_metrics(path: Path) -> list[dict]:
    """The rank-0 metrics lines of one training stage (empty when the stage has not logged)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(rows: list[dict], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("KL(target ‖ student)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_report(cfg: Config, config_path: str, overrides: list[str]) -> Path:
    run_dir = Path(cfg.run_dir)
    lines = [f"# t2t pipeline report: {cfg.name}", "",
             f"Recipe `{config_path}`" + (f" with overrides `{' '.join(overrides)}`" if overrides else "") + ".",
             f"Backbone: `{cfg.model.path}`" + (" (tiny random Llama)" if cfg.model.tiny else "") +
             f", pooling `{cfg.model.pooling}`, attention `{cfg.model.attention}`, max length {cfg.model.max_length}.",
             ""]
    lines += ["## Training", "", "| stage | steps | lr | first loss | last loss | samples/s |", "|---|---|---|---|---|---|"]
    plots = []
    for stage in (1, 2):
        rows = read_metrics(run_dir / f"stage{stage}" / "metrics.jsonl")
        if not rows:
            continue
        sc = getattr(cfg.train, f"stage{stage}")
        head, tail = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
        first = sum(r["loss"] for r in head) / len(head)
        last = sum(r["loss"] for r in tail) / len(tail)
        speed = sum(r.get("samples_per_s", 0.0) for r in rows) / len(rows)
        lines.append(f"| {stage} | {rows[-1]['step']} | {sc.lr:g} | {first:.4f} | {last:.4f} | {speed:.1f} |")
        png = run_dir / f"loss_stage{stage}.png"
        plot_loss(rows, f"stage {stage} training loss", png)
        plots.append(f"![stage {stage} loss]({png.name})")
    lines += ["", "First/last loss are means over the first/last tenth of the logged steps.", ""] + plots + [""]

    results_dir = Path(cfg.eval.out_dir)
    table = results_dir / "results.md"
    lines += ["## Evaluation", ""]
    if table.exists():
        lines += [table.read_text().strip(), ""]
        chart = results_dir / "scores.png"
        if chart.exists():
            shutil.copyfile(chart, run_dir / "scores.png")
            lines += ["![per-task scores](scores.png)", ""]
        lines += _stsb_verdict(results_dir / "results.json")
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"report: {out}")
    return out


def _stsb_verdict(results_json: Path) -> list[str]:
    """One sentence saying whether stage-1 training beat the random start on STSBenchmark."""
    if not results_json.exists():
        return []
    table = json.loads(results_json.read_text())
    names = [m["name"] for m in table["models"]]
    scores = [table["scores"][n].get("STSBenchmark") for n in names]
    if len(names) < 2 or scores[0] is None or scores[1] is None:
        return []
    return [f"STSBenchmark (Spearman ×100): {names[1]} {scores[1]:.2f} vs {names[0]} {scores[0]:.2f} "
            f"({scores[1] - scores[0]:+.2f} points).", ""]
