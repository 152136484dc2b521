"""The pipeline's report: `<run_dir>/report.md` with loss curves and per-task score bars as PNG files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from t2t import run_paths
from t2t.config import Config
from t2t.data.files import write_text_atomic
from t2t.objectives import OBJECTIVES

START_MODEL = "{name}-M0-start"
"""The name the pipeline evaluates the untrained backbone under (`t2t.pipeline.Pipeline.step_eval`)."""


def read_metrics(path: Path) -> list[dict]:
    """The rank-0 metrics lines of one training stage (empty when the stage has not logged)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(rows: list[dict], title: str, out: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], lw=1.2, label="loss")
    parts = [k for k in rows[0] if k.startswith("loss_")]  # a `sum`'s parts, each its own (unweighted) mean
    for key in parts:
        ax.plot(steps, [r[key] for r in rows], lw=0.9, label=key.removeprefix("loss_"))
    if parts:
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_report(cfg: Config, config_path: str, overrides: list[str]) -> Path:
    run_dir = Path(cfg.run_dir)
    lines = [f"# t2t pipeline report: {cfg.name}", "",
             f"Recipe `{config_path}`" + (f" with overrides `{' '.join(overrides)}`" if overrides else "") + ".",
             f"Backbone: `{cfg.model.path}`" + _backbone_origin(cfg) +
             f", pooling `{cfg.model.pooling}`, attention `{cfg.model.attention}`, max length {cfg.model.max_length}.",
             ""]
    lines += ["## Training", "", "| stage | starts from | objective | targets | steps | lr | first loss | last loss "
              "| samples/s | tokens/s | MFU | compute / comm / optimizer / data wait |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    plots = []
    for stage in cfg.stages:
        objective = OBJECTIVES.get(stage.objective.name)
        rows = read_metrics(run_paths.metrics_file(cfg, stage.name))
        if not rows:
            continue
        head, tail = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
        first = sum(r["loss"] for r in head) / len(head)
        last = sum(r["loss"] for r in tail) / len(tail)
        targets = stage.targets.kind if objective.reads(stage.objective) else "— (reads tokens only)"
        lines.append(f"| {stage.name} | {stage.start} | {stage.objective.name} | {targets} | {rows[-1]['step']} "
                     f"| {stage.lr:g} | {first:.4f} | {last:.4f} | " + " | ".join(throughput(rows)) + " |")
        png = run_dir / f"loss_{stage.name}.png"
        plot_loss(rows, f"{stage.name} training loss", png, objective.loss_label(stage.objective))
        plots.append(f"![{stage.name} loss]({png.name})")
    lines += ["", "First/last loss are means over the first/last tenth of the logged steps. Throughput is over the "
              "logged steps after the first (which also warms up), tokens are real tokens (padding not counted), "
              "MFU is against the matmul peak the run measured (or `train.peak_flops`), and the last column splits "
              "the step time in percent (t2t/train/monitor.py).", ""] + plots + [""]

    results_dir = Path(cfg.eval.out_dir)
    table = results_dir / "results.md"
    lines += ["## Evaluation", ""]
    if table.exists():
        lines += [table.read_text().strip(), ""]
        chart = results_dir / "scores.png"
        if chart.exists():
            shutil.copyfile(chart, run_dir / "scores.png")
            lines += ["![per-task scores](scores.png)", ""]
        lines += verdict(results_dir / "results.json", START_MODEL.format(name=cfg.name))
    out = run_dir / "report.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    print(f"report: {out}")
    return out


PHASES = ("compute_s", "comm_s", "optimizer_s", "data_wait_s")


def measured(rows: list[dict]) -> dict | None:
    """A stage's measured throughput from its metrics lines, over the logged steps after the first (which also warms
    up): samples/s, tokens/s, MFU (None when a step's peak was unknown) and each phase's share of the step time.
    None when no line records its step time."""
    timed = [r for r in rows[1:] if r.get("step_s")] or [r for r in rows if r.get("step_s")]
    if not timed:
        return None
    seconds = sum(r["step_s"] for r in timed)
    mfus = [r.get("mfu") for r in timed]
    return {"samples_per_s": sum(r["samples_per_s"] * r["step_s"] for r in timed) / seconds,
            "tokens_per_s": sum(r["tokens_per_s"] * r["step_s"] for r in timed) / seconds,
            "mfu": None if None in mfus else sum(m * r["step_s"] for m, r in zip(mfus, timed)) / seconds,
            "shares": {k: sum(r.get(k, 0.0) for r in timed) / seconds for k in PHASES}}


def throughput(rows: list[dict]) -> list[str]:
    """samples/s, tokens/s, MFU and the step-time split of one stage's metrics, as table cells ("—": not logged)."""
    m = measured(rows)
    if m is None:
        return ["—"] * 4
    mfu = "unknown" if m["mfu"] is None else f"{m['mfu']:.3f}"
    split = " / ".join(f"{100 * m['shares'][k]:.0f}%" for k in PHASES)
    return [f"{m['samples_per_s']:.1f}", f"{m['tokens_per_s']:.0f}", mfu, split]


def _backbone_origin(cfg: Config) -> str:
    if cfg.model.tiny is not None:
        return " (tiny random Llama: from random weights the method has nothing to show)"
    if cfg.model.gguf:
        return f" (pretrained, converted from `{cfg.model.gguf}`)"
    return ""


def verdict(results_json: Path, start: str) -> list[str]:
    """What each other model gained or lost against the model named `start` (the backbone before training), per
    task and on the mean of the tasks, in plain words; nothing when `start` was not evaluated."""
    if not results_json.exists():
        return []
    table = json.loads(results_json.read_text())
    names = [m["name"] for m in table["models"]]
    tasks = [t["name"] for t in table["tasks"]]
    scores = table["scores"]
    if start not in names or len(names) < 2 or any(scores[start].get(t) is None for t in tasks):
        return []
    lines = ["### Against the start", "",
             f"Points gained (+) or lost (−) against `{start}`, the backbone before any training:", "",
             "| model | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    sentences = []
    for name in (n for n in names if n != start):
        deltas = {t: scores[name][t] - scores[start][t] for t in tasks if scores[name].get(t) is not None}
        if len(deltas) < len(tasks):
            continue
        mean = sum(deltas.values()) / len(deltas)
        lines.append(f"| {name} | " + " | ".join(f"{deltas[t]:+.2f}" for t in tasks) + f" | {mean:+.2f} |")
        won = [t for t in tasks if deltas[t] > 0]
        lost = [t for t in tasks if deltas[t] <= 0]
        sentences.append(f"`{name}` " + ("beats the start on every task" if not lost else
                                         "is no better than the start on any task" if not won else
                                         f"beats the start on {', '.join(won)} and does not on {', '.join(lost)}") +
                         f"; mean {mean:+.2f} points.")
    return lines + [""] + sentences + [""]
