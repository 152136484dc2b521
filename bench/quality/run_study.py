"""The laptop-scale quality study: Text2Token against unsupervised SimCSE from the same random start.

    .venv/bin/python bench/quality/run_study.py                  # 10-minute arms: about 90 min on 2 cores
    .venv/bin/python bench/quality/run_study.py --minutes 20     # the 20-minute arms of the issue

Arms, each trained from the same randomly initialised 4-layer Llama (bench/quality/study.yaml)
for the same wall-clock budget, with DeepSpeed ZeRO-3 on 2 CPU ranks, exactly as `t2t train` runs:
    t2t-stage1   Text2Token stage 1 (data-driven targets) for the whole budget
    t2t-stage2   stage 1 for (1 - stage2_share) of the budget (the stage-1 arm's checkpoint at
                 that step), then stage 2 (targets from that model) for the rest
    simcse       unsupervised SimCSE (two dropout views, in-batch negatives) for the whole budget
    untrained    the start
plus two reference points: TF-IDF fitted on the same training texts (the lexical floor) and
the real all-MiniLM-L6-v2 (a supervised ceiling). A budget becomes a step count through a short
timing probe of each objective on this machine, so every arm gets the same time, not the same steps.

Every model is evaluated on the six local tasks (`t2t eval`) and, where it has an LM head
trained or not, on token alignment (hit@10 of its top LM-head tokens against the text's own
content tokens, on held-out sentences). Results go to bench/quality/RESULTS.md (tables, the
discussion in bench/quality/DISCUSSION.md, the plot scores.png) and results.json. Work lives in
runs/quality/; a rerun skips every finished piece. bench/quality/ablations.py varies one knob at a
time (stage-2 τ, pooling, attention) on top of this study's runs.
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

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RECIPE = HERE / "study.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="../shared/data/train_corpus", help="training corpus (file or directory)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget of every arm")
    p.add_argument("--stage2-share", type=float, default=0.25, help="share of the budget the stage-2 arm spends in stage 2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="training seeds (data order, dropout); the first runs every arm, the others the trained arms")
    p.add_argument("--heldout", type=int, default=1000, help="held-out sentences for token alignment")
    p.add_argument("--work", default="runs/quality", help="working directory (models, shards, logs, eval cache)")
    return p.parse_args(argv)


def enter_repo_offline() -> None:
    """Work from the repository root (the recipe's relative paths), offline, DeepSpeed on CPU."""
    os.chdir(REPO)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


class Study:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_file = self.work / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    # ------------------------------------------------------------------ bookkeeping

    def remember(self, key: str, value) -> None:
        self.state[key] = value
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_file)

    def common(self) -> list[str]:
        return [f"model.path={self.work}/base", f"model.tiny.tokenizer_corpus={self.args.corpus}",
                f"data.corpus={self.args.corpus}", f"data.shards_dir={self.work}/shards",
                f"data.max_texts={self.state['texts']}"]

    def cfg(self, overrides: list[str]):
        from t2t.config import load_config

        return load_config(RECIPE, overrides)

    def train(self, name: str, overrides: list[str], stage: str) -> Path:
        """Train stage `stage` (a name: stage1, stage2) of one arm (resumes if interrupted); returns its export and
        records its wall time."""
        from t2t.run_paths import export_dir
        from t2t.train import launch_local, stage_complete

        cfg = self.cfg(overrides)
        if not stage_complete(cfg, stage):
            print(f"training {name} ({stage}, {cfg.stage(stage).steps} steps)", flush=True)
            t0 = time.time()
            launch_local(str(RECIPE), overrides, stage, cfg.train.nproc, self.logs / f"{name}.log")
            self.remember(f"seconds/{name}", time.time() - t0)
        return export_dir(cfg, stage)

    # ------------------------------------------------------------------ pieces

    def base(self) -> Path:
        from t2t.model import export, from_config

        out = self.work / "base_export"
        if not (out / "t2t_config.json").exists():
            export(from_config(self.cfg([f"model.path={self.work}/base",
                                         f"model.tiny.tokenizer_corpus={self.args.corpus}"]).model), out)
        return out

    def probe(self, objective: str, lr: float) -> float:
        """Seconds per optimizer step of `objective`, measured over a short run on this machine."""
        from t2t.run_paths import metrics_file

        key = f"seconds_per_step/{objective}"
        if key not in self.state:
            overrides = self.common() + [f"run_dir={self.work / f'probe-{objective}'}",
                                         f"stages.stage1.objective={objective}", "stages.stage1.steps=30",
                                         f"stages.stage1.lr={lr}"]
            self.train(f"probe-{objective}", overrides, "stage1")
            rows = [json.loads(line) for line in metrics_file(self.cfg(overrides), "stage1").read_text().splitlines()]
            # samples_per_s is the global batch (64 texts) over the step's time; the first steps warm up
            self.remember(key, 64 / statistics.median(r["samples_per_s"] for r in rows[5:]))
        return self.state[key]

    def targets(self, stage: str, overrides: list[str], timed: str = "") -> None:
        from t2t.data.manifest import is_complete
        from t2t.ray_jobs.targets import run_targets

        cfg = self.cfg(overrides)
        if not is_complete(cfg, stage):
            t0 = time.time()
            run_targets(cfg, stage, overwrite=True)  # shards of other parameters (the probes' smaller set) go
            if timed:
                self.remember(f"targets_seconds/{timed}", time.time() - t0)

    def stage1_arm(self, seed: int, steps: int, stage1_part: int) -> tuple[Path, list[str]]:
        overrides = self.common() + [f"run_dir={self.work}/t2t-stage1-seed{seed}", f"seed={seed}",
                                     f"stages.stage1.steps={steps}", f"train.save_every={stage1_part}"]
        return self.train(f"t2t-stage1-seed{seed}", overrides, "stage1"), overrides

    def stage1_checkpoint(self, seed: int, stage1_overrides: list[str], stage1_part: int) -> Path:
        """The stage-1 arm's checkpoint at step `stage1_part`, exported: where the stage-2 arms start."""
        from t2t.run_paths import checkpoints_dir
        from t2t.train.checkpoint import export_checkpoint, tag_for

        m1 = self.work / f"t2t-stage2-seed{seed}" / "stage1-model"
        if not (m1 / "t2t_config.json").exists():
            cfg1 = self.cfg(stage1_overrides)
            export_checkpoint(cfg1, "stage1", checkpoint=checkpoints_dir(cfg1, "stage1") / tag_for(stage1_part),
                              out=m1)
        return m1

    @staticmethod
    def stage2_name(seed: int, tau: float | None = None) -> str:
        return f"t2t-stage2-seed{seed}" if tau is None else f"t2t-stage2-tau{tau:g}-seed{seed}"

    def stage2_overrides(self, seed: int, m1: Path, stage2_steps: int, tau: float | None = None) -> list[str]:
        """The overrides of a stage-2 arm: stage2 starts from `m1` (`start: base` with `model.path` = the exported
        stage-1 checkpoint), computes its targets with it and trains it; the arm's own `<run_dir>/stage1` is unused."""
        arm = self.work / self.stage2_name(seed, tau)
        texts = max(4000, math.ceil(stage2_steps * 64 / 2000) * 2000)  # one epoch of stage 2, two shards at least
        overrides = self.common() + [
            f"run_dir={arm}", f"seed={seed}",
            "stages.stage2.start=base", f"model.path={m1}", "model.tiny=null", "model.gguf=",
            f"data.shards_dir={arm}/shards", f"stages.stage2.targets.max_texts={texts}",
            f"stages.stage2.steps={stage2_steps}"]
        if tau is not None:
            overrides.append(f"stages.stage2.targets.tau={tau}")
        return overrides

    def stage2_arm(self, seed: int, stage1_overrides: list[str], stage1_part: int, stage2_steps: int,
                   tau: float | None = None) -> Path:
        """Stage 2 from the stage-1 arm's checkpoint at `stage1_part`; a `tau` other than the recipe's is an ablation."""
        m1 = self.stage1_checkpoint(seed, stage1_overrides, stage1_part)
        name = self.stage2_name(seed, tau)
        overrides = self.stage2_overrides(seed, m1, stage2_steps, tau)
        self.targets("stage2", overrides, timed=name)
        return self.train(name, overrides, "stage2")

    def simcse_arm(self, seed: int, steps: int, lr: float) -> Path:
        overrides = self.common() + [f"run_dir={self.work}/simcse-seed{seed}", f"seed={seed}",
                                     "stages.stage1.objective=simcse", f"stages.stage1.steps={steps}",
                                     f"stages.stage1.lr={lr}"]
        return self.train(f"simcse-seed{seed}", overrides, "stage1")

    def tfidf(self) -> Path:
        from t2t.eval.tfidf import fit_tfidf

        out = self.work / "tfidf"
        if not (out / "tfidf_config.json").exists():
            fit_tfidf(self.args.corpus, out, max_texts=self.state["texts"])
        return out

    def heldout_texts(self) -> list[str]:
        """Sentences after the training texts: no model has seen them."""
        import itertools

        from t2t.data.corpus import iter_texts

        start = self.state["texts"]
        return [t.text for t in itertools.islice(iter_texts(self.args.corpus), start, start + self.args.heldout)]

    def alignment(self, models: dict[str, Path]) -> dict[str, dict]:
        from t2t.eval.alignment import token_alignment
        from t2t.model import load

        texts = self.heldout_texts()
        result = {}
        for name, path in models.items():
            key = f"alignment/{name}"
            if key not in self.state:
                self.remember(key, token_alignment(load(path), texts, k=10))
            result[name] = self.state[key]
        return result


def main(argv=None) -> int:
    args = parse_args(argv)
    enter_repo_offline()
    if not Path(args.corpus).exists():
        raise SystemExit(f"corpus {args.corpus} does not exist (pass --corpus)")
    study = Study(args)
    t2t_lr, simcse_lr = 1e-3, 3e-4
    started = time.time()

    base = study.base()
    study.state.setdefault("texts", 4000)  # two shards, one per rank: enough for the timing probes; raised below to one epoch of the budget
    study.targets("stage1", study.common())
    budget = args.minutes * 60
    t2t_step, simcse_step = study.probe("t2t", t2t_lr), study.probe("simcse", simcse_lr)
    steps = {"t2t": int(budget / t2t_step), "simcse": int(budget / simcse_step)}
    stage1_part = int(steps["t2t"] * (1 - args.stage2_share))
    stage2_steps = steps["t2t"] - stage1_part  # both stages cost the same per step (one forward, one backward)
    texts = math.ceil(max(steps.values()) * 64 / 2000) * 2000  # one epoch of the longest arm
    if study.state["texts"] != texts:
        study.remember("texts", texts)
    study.targets("stage1", study.common())
    print(f"budget {args.minutes} min: t2t {steps['t2t']} steps ({t2t_step:.2f} s/step), "
          f"simcse {steps['simcse']} steps ({simcse_step:.2f} s/step), {texts} training texts", flush=True)

    models: dict[str, Path] = {"untrained": base}
    for seed in args.seeds:
        m1, overrides1 = study.stage1_arm(seed, steps["t2t"], stage1_part)
        models[f"t2t-stage1-seed{seed}"] = m1
        models[f"t2t-stage2-seed{seed}"] = study.stage2_arm(seed, overrides1, stage1_part, stage2_steps)
        models[f"simcse-seed{seed}"] = study.simcse_arm(seed, steps["simcse"], simcse_lr)
    references = {"tfidf": study.tfidf(), "all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}

    from t2t.eval import run_eval

    all_models = {**models, **references}
    table = run_eval([str(p) for p in all_models.values()], workers=2, out_dir=str(study.work / "eval"),
                     names=list(all_models))
    alignment = study.alignment(models)

    from report import write_results  # bench/quality/report.py

    write_results(HERE, table, alignment, study.state, dict(
        minutes=args.minutes, stage2_share=args.stage2_share, seeds=args.seeds, corpus=args.corpus,
        steps=steps, stage1_part=stage1_part, stage2_steps=stage2_steps, texts=texts, heldout=args.heldout,
        lr=dict(t2t_stage1=t2t_lr, t2t_stage2=study.cfg([]).stage("stage2").lr, simcse=simcse_lr),
        total_minutes=(time.time() - started) / 60))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
