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
The study file is read by study_file.py, and made into runs and overrides by study_plan.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # study_file.py, study_plan.py and report.py beside this file
    sys.path.insert(0, str(HERE))

from study_file import REPO, STUDY, Run, Study, UserError, load_study, shown  # noqa: E402
from study_plan import (arm_config, plan_runs, print_plan, probe_key, probe_overrides, recipe_arg,  # noqa: E402
                        stage_steps, step_overrides)


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
