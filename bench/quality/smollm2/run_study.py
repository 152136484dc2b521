"""Study v2: does Text2Token beat LLM2Vec-unsupervised from the same pretrained LLM (SmolLM2-135M-Instruct)?

    .venv/bin/python bench/quality/smollm2/run_study.py                 # every arm, in priority order; resumable
    .venv/bin/python bench/quality/smollm2/run_study.py --until-minutes 90   # stop starting new arms after 90 min
    .venv/bin/python bench/quality/smollm2/report.py                    # re-render RESULTS.md from results.json

Every trained arm starts from the same SmolLM2-135M-Instruct (converted once from the packaged GGUF) and trains
LoRA adapters (r 16, alpha 32, every decoder projection: the setting of both papers) for the same wall-clock
budget on this machine, with DeepSpeed ZeRO-3 on 2 CPU ranks exactly as `t2t train` runs. A short timing
probe per objective turns the budget into steps. Arms, in the order they run (the first ones answer the
issue's main question; a later session resumes where one stops):

    mean-untrained        (1) training-free, mean pooling
    prompteol-untrained   (2) training-free, PromptEOL prompt, last-token pooling
    t2t-s1                (3) Text2Token stage 1 (PromptEOL/last, causal): the paper's main setting
    t2t-s12               (4) (3)'s checkpoint at 3/4 of the budget, then stage 2 for the last quarter
    simcse                (6) SimCSE alone (LLM2Vec's recipe without MNTP: bidirectional, mean pooling)
    llm2vec               (7) recipes/llm2vec.yaml: bidirectional → MNTP → merge → SimCSE, equal step counts
    ... seed 1 of (3), (4), (7)
    t2t-s1-long, llm2vec-long   (3) and (7) again at twice the budget (seed 0)
    t2t-s12-tau1e-4, -tau1e-6   (4) with stage-2 τ 1e-4 and 1e-6 instead of 1e-5 (seed 0, same stage-1 model)
    llm2vec-long-mntp           (7)-long's MNTP export alone: what SimCSE adds or takes on top of it
    t2t-s1-mean, t2t-s1-bidir   (5) Text2Token stage 1 with mean pooling, causal and bidirectional
plus TF-IDF fitted on the training texts (lexical floor) and all-MiniLM-L6-v2 (supervised ceiling).

Evaluation: STSBenchmark and BIOSSES in full (the README's and the issue's reference numbers are on the full
sets); SciFact, Banking77Classification, TwentyNewsgroupsClustering and TwitterURLCorpus on a seeded sample of
1,000 rows per split (`--eval-cap`): at about 23 texts/s for SmolLM2 in fp32 on 2 cores the full four would
cost half an hour per model. Token alignment (hit@10) on held-out sentences for every model with an LM head.
Results go to RESULTS.md, results.json and scores.png here after every arm; work lives in runs/quality-smollm2/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
T2T_RECIPE = HERE / "text2token.yaml"
LLM2VEC_RECIPE = REPO / "recipes" / "llm2vec.yaml"
GLOBAL_BATCH = 32  # 2 ranks × micro batch 16, every arm
FULL_TASKS = ["STSBenchmark", "BIOSSES"]
CAPPED_TASKS = ["SciFact", "Banking77Classification", "TwentyNewsgroupsClustering", "TwitterURLCorpus"]
TAUS = ["1e-4", "1e-6"]  # stage-2 τ arms beside the recipe's 1e-5: the rest of the paper's {1e-4, 1e-5, 1e-6}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="../shared/data/train_corpus", help="training corpus (file or directory)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget of every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of arms (3), (4) and (7)")
    p.add_argument("--texts", type=int, default=8000, help="training texts (at least one epoch of the longest arm)")
    p.add_argument("--heldout", type=int, default=500, help="held-out sentences for token alignment")
    p.add_argument("--eval-cap", type=int, default=1000, help="rows per split of the four large tasks")
    p.add_argument("--until-minutes", type=float, default=0.0, help="start no new arm after this long (0 = all)")
    p.add_argument("--work", default="runs/quality-smollm2", help="working directory (models, shards, logs, evals)")
    return p.parse_args(argv)


def enter_repo_offline() -> None:
    """Work from the repository root (the recipes' relative paths), offline, DeepSpeed on CPU."""
    os.chdir(REPO)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load_now() -> list[float]:
    """The machine's 1/5/15-minute load averages: recorded with every timing (the machine is shared)."""
    return [round(x, 2) for x in os.getloadavg()]


class Study:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_file = self.work / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def remember(self, key: str, value) -> None:
        from t2t.data.files import write_json_atomic

        self.state[key] = value
        write_json_atomic(self.state_file, self.state)

    # ------------------------------------------------------------------ recipes

    def common(self, recipe: Path) -> list[str]:
        """Overrides every arm of `recipe` shares: the study's backbone, corpus and shards."""
        shards = "shards-llm2vec" if recipe == LLM2VEC_RECIPE else "shards"
        return [f"model.path={self.work}/base", f"data.corpus={self.args.corpus}",
                f"data.max_texts={self.args.texts}", f"data.shards_dir={self.work}/{shards}",
                f"eval.out_dir={self.work}/eval", "train.keep_checkpoints=2"]

    @staticmethod
    def cfg(recipe: Path, overrides: list[str]):
        from t2t.config import load_config

        return load_config(recipe, overrides)

    def train(self, name: str, recipe: Path, overrides: list[str], stage: str) -> Path:
        """Train stage `stage` of arm `name` (resumes if interrupted); records its wall time and the load."""
        from t2t.run_paths import export_dir
        from t2t.train import launch_local, stage_complete

        cfg = self.cfg(recipe, overrides)
        if not stage_complete(cfg, stage):
            self.targets(recipe, overrides, stage)
            print(f"training {name} ({stage}, {cfg.stage(stage).steps} steps)", flush=True)
            load, t0 = load_now(), time.time()
            launch_local(str(recipe), overrides, stage, cfg.train.nproc, self.logs / f"{name}-{stage}.log")
            self.remember(f"seconds/{name}/{stage}", dict(seconds=round(time.time() - t0, 1), load_before=load,
                                                           load_after=load_now(), steps=cfg.stage(stage).steps))
        return export_dir(cfg, stage)

    def targets(self, recipe: Path, overrides: list[str], stage: str, timed: str = "") -> None:
        from t2t.data.target_job import is_complete
        from t2t.jobs.targets import run_targets

        cfg = self.cfg(recipe, overrides)
        if not is_complete(cfg, stage):
            load, t0 = load_now(), time.time()
            run_targets(cfg, stage, overwrite=True)
            if timed:
                self.remember(f"targets_seconds/{timed}", dict(seconds=round(time.time() - t0, 1), load_before=load,
                                                               load_after=load_now()))

    # ------------------------------------------------------------------ budget

    def probe(self, objective: str) -> float:
        """Seconds per optimizer step of `objective` (median of steps 2-6 of a short run on this machine)."""
        from t2t.run_paths import metrics_file

        key = f"seconds_per_step/{objective}"
        if key not in self.state:
            recipe, stage, extra = {"t2t": (T2T_RECIPE, "stage1", []),
                                    "mntp": (LLM2VEC_RECIPE, "mntp", []),
                                    "simcse": (LLM2VEC_RECIPE, "simcse", ["stages.simcse.start=base"])}[objective]
            overrides = self.common(recipe) + [f"run_dir={self.work}/probe-{objective}",
                                               f"stages.{stage}.steps=6"] + extra
            self.train(f"probe-{objective}", recipe, overrides, stage)
            rows = [json.loads(line) for line in metrics_file(self.cfg(recipe, overrides), stage).read_text().splitlines()]
            self.remember(key, GLOBAL_BATCH / statistics.median(r["samples_per_s"] for r in rows[1:]))
        return self.state[key]

    def steps(self, minutes: float) -> dict:
        budget = minutes * 60
        t2t, mntp, simcse = (self.probe(o) for o in ("t2t", "mntp", "simcse"))
        pair = max(1, int(budget / (mntp + simcse)))  # LLM2Vec: as many MNTP steps as SimCSE steps
        total = max(4, int(budget / t2t))
        return dict(t2t=total, t2t_stage1_part=int(total * 0.75), t2t_stage2=total - int(total * 0.75),
                    simcse=max(1, int(budget / simcse)), llm2vec_each=pair)

    # ------------------------------------------------------------------ arms

    def base_export(self, name: str, pooling: str) -> Path:
        """The untrained backbone with `pooling` (its default prompt): a training-free arm."""
        from t2t.model import export, from_config

        out = self.work / name
        if not (out / "t2t_config.json").exists():
            cfg = self.cfg(T2T_RECIPE, self.common(T2T_RECIPE) + [f"model.pooling={pooling}"])
            export(from_config(cfg.model, dtype="float32"), out)
        return out

    def t2t_stage1(self, arm: str, seed: int, steps: int, extra: list[str] = (), save_at: int = 0) -> tuple[Path, list]:
        overrides = self.common(T2T_RECIPE) + [f"run_dir={self.work}/{arm}-seed{seed}", f"seed={seed}",
                                               f"stages.stage1.steps={steps}", *extra]
        if save_at:
            overrides.append(f"train.save_every={save_at}")
        return self.train(f"{arm}-seed{seed}", T2T_RECIPE, overrides, "stage1"), overrides

    def t2t_stage12(self, seed: int, steps: dict, stage1_overrides: list[str], tau: str = "") -> Path:
        """Stage 2 from the stage-1 arm's checkpoint at 3/4 of its steps, for the remaining quarter; with `tau`,
        at that τ instead of the recipe's (the stage-1 model is the one the recipe's τ arm starts from)."""
        from t2t.run_paths import checkpoints_dir
        from t2t.train import stage_complete
        from t2t.train.checkpoint import tag_for
        from t2t.train.export import export_checkpoint

        name = f"t2t-s12-tau{tau}-seed{seed}" if tau else f"t2t-s12-seed{seed}"
        arm = self.work / name
        m1 = self.work / f"t2t-s12-seed{seed}" / "stage1-model"
        if not (m1 / "t2t_config.json").exists():
            cfg1 = self.cfg(T2T_RECIPE, stage1_overrides)
            export_checkpoint(cfg1, "stage1", checkpoint=checkpoints_dir(cfg1, "stage1") / tag_for(
                steps["t2t_stage1_part"]), out=m1)
        texts = max(512, math.ceil(steps["t2t_stage2"] * GLOBAL_BATCH / 256) * 256)  # one epoch, two shards at least
        overrides = self.common(T2T_RECIPE) + [
            f"run_dir={arm}", f"seed={seed}", "stages.stage2.start=base", f"model.path={m1}", "model.gguf=",
            f"data.shards_dir={arm}/shards", f"stages.stage2.targets.max_texts={texts}",
            f"stages.stage2.steps={steps['t2t_stage2']}"] + ([f"stages.stage2.targets.tau={tau}"] if tau else [])
        if not stage_complete(self.cfg(T2T_RECIPE, overrides), "stage2"):  # a finished arm's targets stay as made
            self.targets(T2T_RECIPE, overrides, "stage2", timed=name)
        return self.train(name, T2T_RECIPE, overrides, "stage2")

    def simcse(self, seed: int, steps: int) -> Path:
        overrides = self.common(LLM2VEC_RECIPE) + [f"run_dir={self.work}/simcse-seed{seed}", f"seed={seed}",
                                                   "stages.simcse.start=base", f"stages.simcse.steps={steps}"]
        return self.train(f"simcse-seed{seed}", LLM2VEC_RECIPE, overrides, "simcse")

    def llm2vec(self, arm: str, seed: int, each: int, through: str = "simcse") -> Path:
        """The LLM2Vec recipe's stages up to `through` ("mntp": its MNTP export, before SimCSE)."""
        overrides = self.common(LLM2VEC_RECIPE) + [f"run_dir={self.work}/{arm}-seed{seed}", f"seed={seed}",
                                                   f"stages.mntp.steps={each}", f"stages.simcse.steps={each}"]
        path = self.train(f"{arm}-seed{seed}", LLM2VEC_RECIPE, overrides, "mntp")
        return path if through == "mntp" else self.train(f"{arm}-seed{seed}", LLM2VEC_RECIPE, overrides, "simcse")

    def tfidf(self) -> Path:
        from t2t.eval.tfidf import fit_tfidf

        out = self.work / "tfidf"
        if not (out / "tfidf_config.json").exists():
            fit_tfidf(self.args.corpus, out, max_texts=self.args.texts)
        return out

    # ------------------------------------------------------------------ measurement

    def heldout_texts(self) -> list[str]:
        """Sentences after the training texts: no arm has trained on them."""
        import itertools

        from t2t.data.corpus import iter_texts

        start = self.args.texts
        return [t.text for t in itertools.islice(iter_texts(self.args.corpus), start, start + self.args.heldout)]

    def alignment(self, models: dict[str, Path]) -> dict[str, dict]:
        from t2t.eval.alignment import token_alignment
        from t2t.model import load

        texts = None
        for name, path in models.items():
            key = f"alignment/{name}"
            if key not in self.state:
                texts = texts or self.heldout_texts()
                self.remember(key, token_alignment(load(path), texts, k=10))
        return {name: self.state[f"alignment/{name}"] for name in models}

    def evaluate(self, models: dict[str, str]) -> dict:
        """Both task groups for every model (cached per model and task), merged into one table."""
        from t2t.eval import run_eval

        names, paths = list(models), [str(p) for p in models.values()]
        full = run_eval(paths, FULL_TASKS, workers=2, out_dir=str(self.work / "eval-full"), names=names,
                        batch_size=32, dtype="bfloat16")
        capped = run_eval(paths, CAPPED_TASKS, workers=2, out_dir=str(self.work / "eval-capped"), names=names,
                          batch_size=32, max_samples=self.args.eval_cap, dtype="bfloat16")
        return merge_tables(full, capped)


def merge_tables(first: dict, second: dict) -> dict:
    """One results table from two runs over the same models on different tasks (means recomputed)."""
    from t2t.eval.report import _mean

    tasks = first["tasks"] + [dict(t, max_samples=second["max_samples"]) for t in second["tasks"]]
    categories = list(dict.fromkeys(t["category"] for t in tasks))
    table = dict(first, tasks=tasks, max_samples=0, scores={}, category_means={}, overall_mean={})
    for key in ("status", "errors", "seconds"):
        table[key] = {m: {**first[key].get(m, {}), **second[key].get(m, {})} for m in first[key]}
    for m in (m["name"] for m in first["models"]):
        row = {**first["scores"][m], **second["scores"][m]}
        table["scores"][m] = row
        table["category_means"][m] = {c: _mean([row[t["name"]] for t in tasks if t["category"] == c])
                                      for c in categories}
        table["overall_mean"][m] = _mean([row[t["name"]] for t in tasks])
    return table


def arm_plan(study: Study, args) -> list[tuple[str, callable]]:
    """(model name, how to make it) in the order the study runs them."""
    s, s2 = study.steps(args.minutes), study.steps(2 * args.minutes)
    plan = [("mean-untrained", lambda: study.base_export("mean-untrained", "mean")),
            ("prompteol-untrained", lambda: study.base_export("prompteol-untrained", "last"))]
    for i, seed in enumerate(args.seeds):
        stage1 = {}

        def s1(seed=seed, stage1=stage1):
            path, stage1["overrides"] = study.t2t_stage1("t2t-s1", seed, s["t2t"], save_at=s["t2t_stage1_part"])
            return path

        def s12(tau="", seed=seed, stage1=stage1):
            if "overrides" not in stage1:
                s1(seed, stage1)
            return study.t2t_stage12(seed, s, stage1["overrides"], tau=tau)

        plan += [(f"t2t-s1-seed{seed}", s1), (f"t2t-s12-seed{seed}", s12)]
        if i == 0:
            plan.append((f"simcse-seed{seed}", lambda seed=seed: study.simcse(seed, s["simcse"])))
        plan.append((f"llm2vec-seed{seed}", lambda seed=seed: study.llm2vec("llm2vec", seed, s["llm2vec_each"])))
    seed = args.seeds[0]
    s12_first_seed = dict(plan)[f"t2t-s12-seed{seed}"]
    plan += [(f"t2t-s1-long-seed{seed}", lambda: study.t2t_stage1("t2t-s1-long", seed, s2["t2t"])[0]),
             (f"llm2vec-long-seed{seed}", lambda: study.llm2vec("llm2vec-long", seed, s2["llm2vec_each"])),
             *[(f"t2t-s12-tau{tau}-seed{seed}", lambda tau=tau: s12_first_seed(tau)) for tau in TAUS],
             (f"llm2vec-long-mntp-seed{seed}", lambda: study.llm2vec("llm2vec-long", seed, s2["llm2vec_each"], "mntp")),
             (f"t2t-s1-mean-seed{seed}", lambda: study.t2t_stage1("t2t-s1-mean", seed, s["t2t"],
                                                                   ["model.pooling=mean"])[0]),
             (f"t2t-s1-bidir-seed{seed}", lambda: study.t2t_stage1("t2t-s1-bidir", seed, s["t2t"], [
                 "model.pooling=mean", "model.attention=bidirectional"])[0])]
    return plan


def main(argv=None) -> int:
    args = parse_args(argv)
    enter_repo_offline()
    if not Path(args.corpus).exists():
        raise SystemExit(f"corpus {args.corpus} does not exist (pass --corpus)")
    from report import write_results  # bench/quality/smollm2/report.py

    study = Study(args)
    started = time.time()
    plan = arm_plan(study, args)
    references = {"tfidf": study.tfidf(), "all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}
    done: dict[str, Path] = {}
    for name, make in plan:
        if args.until_minutes and time.time() - started > args.until_minutes * 60:
            print(f"--until-minutes {args.until_minutes:g} reached: {name} and the arms after it are left "
                  "for a rerun", flush=True)
            break
        done[name] = make()
        table = study.evaluate({**done, **references})
        alignment = study.alignment(done)
        write_results(HERE, table, alignment, study.state, dict(
            minutes=args.minutes, seeds=args.seeds, corpus=args.corpus, texts=args.texts, heldout=args.heldout,
            eval_cap=args.eval_cap, steps=study.steps(args.minutes), steps_long=study.steps(2 * args.minutes),
            planned=[n for n, _ in plan], session_minutes=round((time.time() - started) / 60, 1)))
        print(f"{name}: done; wrote {HERE / 'RESULTS.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
