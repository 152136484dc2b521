"""A checkpoint series: every saved checkpoint of a stage exported and evaluated, a score-vs-step table, the best step.

    t2t eval --config R --checkpoints runs/demo/stage1/checkpoints [--every 100] --tasks SciFact
    t2t export --config R --stage stage1 --best SciFact        # the best step on SciFact → runs/demo/stage1/best-SciFact

The authors of the paper picked their checkpoint this way (each saved step evaluated on SciFact). Each
checkpoint is exported once into `<series>/models/stepN` (kept: a rerun exports only new checkpoints), the
exports are evaluated side by side by `t2t eval`'s runner (Ray workers, cached per model and task), and
`series.json`, `series.md` and `series.png` go to `<run_dir>/<stage>/series/` (or `--out`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from t2t import run_paths
from t2t.config import Config
from t2t.data.files import atomic_path, write_json_atomic, write_text_atomic
from t2t.errors import UserError
from t2t.eval.report import _fmt

log = logging.getLogger(__name__)


def series_dir(cfg: Config, stage: str) -> Path:
    return run_paths.stage_dir(cfg, stage) / "series"


def stage_of(cfg: Config, checkpoints: Path) -> str:
    """The recipe's stage whose checkpoints `checkpoints` holds (`<run_dir>/<stage>/checkpoints`)."""
    for stage in cfg.stage_names:
        if checkpoints.resolve() == run_paths.checkpoints_dir(cfg, stage).resolve():
            return stage
    raise UserError(f"--checkpoints {checkpoints} is not the checkpoints directory of a stage of the recipe "
                    f"(those are {', '.join(str(run_paths.checkpoints_dir(cfg, s)) for s in cfg.stage_names)})")


def run_series(cfg: Config, checkpoints: str, every: int = 1, out: str | None = None, **eval_kw) -> dict:
    """Export and evaluate the complete checkpoints in `checkpoints` whose step is a multiple of `every`."""
    from t2t.eval import run_eval
    from t2t.train.checkpoint import complete_tags, step_of
    from t2t.train.export import TRAIN_INFO, CheckpointUnreadable, export_checkpoint

    if every < 1:
        raise UserError(f"--every must be at least 1, got {every}")
    ckpt_dir = Path(checkpoints)
    stage = stage_of(cfg, ckpt_dir)
    tags = [t for t in complete_tags(ckpt_dir) if (ckpt_dir / t).is_dir() and step_of(t) % every == 0]
    if not tags:
        raise UserError(f"{ckpt_dir} holds no complete checkpoint whose step is a multiple of {every}")
    root = Path(out) if out else series_dir(cfg, stage)
    models, skipped = [], {}
    for tag in tags:
        model = root / "models" / tag
        if not (model / TRAIN_INFO).is_file():  # written last: an export without it is unfinished
            try:  # one unreadable checkpoint is named and skipped; the series goes on
                export_checkpoint(cfg, stage, ckpt_dir / tag, model)
            except CheckpointUnreadable as e:
                skipped[tag] = e.problem  # without export's hint: `eval` has no --checkpoint
                log.warning("skipping checkpoint %s: %s", ckpt_dir / tag, e.problem)
                continue
        models.append(model)
    if not models:
        raise UserError(f"no checkpoint in {ckpt_dir} could be exported: " + "; ".join(skipped.values()))
    tags = [t for t in tags if t not in skipped]
    steps = [step_of(t) for t in tags]
    table = run_eval([str(m) for m in models], names=[f"step{s}" for s in steps], out_dir=str(root), **eval_kw)
    tasks = [t["name"] for t in table["tasks"]]
    rows = {s: dict(checkpoint=str(ckpt_dir / t), model=str(m), scores=table["scores"][name],
                    mean=table["overall_mean"][name])
            for s, t, m, name in zip(steps, tags, models, (m["name"] for m in table["models"]))}
    best = {}
    for column in [*tasks, "mean"]:
        scored = {s: (r["mean"] if column == "mean" else r["scores"][column]) for s, r in rows.items()}
        scored = {s: v for s, v in scored.items() if v is not None}
        if scored:
            best[column] = max(scored, key=lambda s: (scored[s], -s))  # a tie goes to the earlier step
    series = dict(stage=stage, checkpoints=str(ckpt_dir), every=every, tasks=tasks,
                  rows={str(s): r for s, r in rows.items()}, best=best, skipped=skipped)
    write_json_atomic(root / "series.json", series)
    write_text_atomic(root / "series.md", to_markdown(series))
    plot_series(series, root / "series.png")
    return series


def to_markdown(series: dict) -> str:
    tasks = series["tasks"]
    lines = [f"# Checkpoint series: {series['checkpoints']}", "",
             "MTEB main scores (x100) per saved step; **bold**: the best step per column "
             f"(`t2t export --stage {series['stage']} --best TASK` exports it).", "",
             "| step | " + " | ".join([*tasks, "mean"]) + " |", "|---:|" + "---:|" * (len(tasks) + 1)]
    for step, row in series["rows"].items():
        values = [*(row["scores"][t] for t in tasks), row["mean"]]
        cells = [f"**{_fmt(v)}**" if series["best"].get(c) == int(step) else _fmt(v)
                 for c, v in zip([*tasks, "mean"], values)]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    for tag, why in series.get("skipped", {}).items():
        lines += ["", f"Skipped {tag}: {why}"]
    return "\n".join(lines) + "\n"


def plot_series(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(s) for s in series["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for task in [*series["tasks"], "mean"]:
        values = [r["mean"] if task == "mean" else r["scores"][task] for r in series["rows"].values()]
        ax.plot(steps, [float("nan") if v is None else v for v in values], marker="o", label=task,
                linewidth=2.5 if task == "mean" else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("main score (x100)")
    ax.set_title(f"{series['stage']}: score by checkpoint")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def best_checkpoint(cfg: Config, stage: str, task: str, series: str | None = None) -> tuple[Path, int]:
    """(checkpoint, step) of the best step on `task` ("mean": the mean over the series' tasks)."""
    path = Path(series) if series else series_dir(cfg, stage)
    file = path / "series.json" if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise UserError(f"no checkpoint series at {file}: run `t2t eval --config ... --checkpoints "
                        f"{run_paths.checkpoints_dir(cfg, stage)}` first")
    data = json.loads(file.read_text())
    if task not in data["best"]:
        raise UserError(f"{file} has no scores for {task!r}; it has {', '.join(data['best'])}")
    step = data["best"][task]
    checkpoint = Path(data["rows"][str(step)]["checkpoint"])
    if not checkpoint.is_dir():
        raise UserError(f"the best checkpoint on {task}, {checkpoint}, is gone (train.keep_checkpoints rotated it?); "
                        f"its export from the series is {data['rows'][str(step)]['model']}")
    return checkpoint, step
