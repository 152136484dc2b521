"""A 2×2 sweep against the four pipelines it replaces, wall time side by side in one run (target ≥ 1.5× faster).

    .venv/bin/python bench/bench_sweep.py            # about 15 min on 2 cores; results in runs/bench/sweep/

The grid is a stage-2 key (τ of the model-derived targets) × a training key (stage 2's lr) on a cut-down
recipes/tiny.yaml (2 layers, d 64; 30 + 6 steps on 2 ranks; STSBenchmark). The four pipelines run one after
another (`t2t pipeline`, each evaluating its start and both stages' models, as a user would run them); the
sweep runs the same four points (`t2t sweep`, a local Ray). Training holds both cores in either case, so the
sweep gains from its shared steps (the backbone, stage-1 targets and training once, stage-2 targets once per τ,
one evaluation of the start model) and from overlapping a targets or eval step with a training step. To tell the
two apart the sweep's serial time (the sum of its steps' own durations plus its evaluation) is reported too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "bench" / "sweep"
TAUS, LRS = ["1e-4", "1e-5"], ["2e-4", "1e-4"]


def recipe(work: Path) -> Path:
    r = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    corpus = str(REPO / "data" / "corpus" / "wiki_sentences_60k.txt.gz")
    r["name"], r["run_dir"] = "bench", "runs/bench-sweep"
    r["model"]["path"] = "runs/bench-sweep/base"
    r["model"]["tiny"].update(tokenizer_corpus=corpus, vocab_size=1000, tokenizer_train_texts=2000, hidden_size=64,
                              num_layers=2, num_heads=4, intermediate_size=128)
    r["data"].update(corpus=corpus, max_texts=1200, shards_dir="shards/bench-sweep", loader_workers=0)
    r["targets"].update(shard_size=300, workers=2)
    r["train"].update(micro_batch_size=8, save_every=50, nproc=2)
    r["eval"].update(tasks=["STSBenchmark"], workers=1, out_dir="runs/bench-sweep/eval")
    stage1, stage2 = r["stages"]
    stage1.update(steps=30, schedule="constant", warmup_steps=0)
    stage2.update(steps=6)
    stage2["targets"].update(max_texts=400)
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", DS_ACCELERATOR="cpu")
    t0 = time.time()
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    return time.time() - t0


def main() -> int:
    work = OUT / "work"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    path = recipe(work)
    t2t = [sys.executable, "-m", "t2t.cli"]
    load = {"before": os.getloadavg()}
    pipelines = []
    for tau in TAUS:
        for lr in LRS:
            name = f"tau{tau}-lr{lr}"
            sets = ["--set", f"stages.stage2.targets.tau={tau}", "--set", f"stages.stage2.lr={lr}",
                    "--set", f"run_dir=runs/p-{name}", "--set", f"data.shards_dir=shards/p-{name}",
                    "--set", f"eval.out_dir=runs/p-{name}/eval"]
            pipelines.append(timed([*t2t, "pipeline", "--config", str(path), *sets], work, OUT / f"pipeline-{name}.log"))
    load["between"] = os.getloadavg()
    sweep = timed([*t2t, "sweep", "--config", str(path), "--grid", f"stages.stage2.targets.tau={','.join(TAUS)}",
                   "--grid", f"stages.stage2.lr={','.join(LRS)}"], work, OUT / "sweep.log")
    load["after"] = os.getloadavg()
    nodes = [json.loads(f.read_text()) for f in (work / "runs" / "bench-sweep" / "nodes").iterdir()]
    steps_serial = sum(n["seconds"] for n in nodes)
    steps_wall = max(n["started"] + n["seconds"] for n in nodes) - min(n["started"] for n in nodes)
    serial = sweep - steps_wall + steps_serial  # the same sweep with its steps one after another
    result = dict(pipelines_s=pipelines, four_pipelines_s=sum(pipelines), sweep_s=sweep, sweep_steps=len(nodes),
                  sweep_steps_wall_s=steps_wall, sweep_steps_serial_s=steps_serial, sweep_serial_s=serial,
                  speedup=sum(pipelines) / sweep, speedup_shared_steps_alone=sum(pipelines) / serial,
                  load=load, cpus=os.cpu_count())
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
