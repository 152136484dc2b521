"""What the pre-checkpoint check costs on the real backbone, side by side with a training step in one run.

    DS_ACCELERATOR=cpu .venv/bin/python bench/bench_checks.py            # --repeats N (default 5)

Before each checkpoint the trainer checks the updated weights (t2t/train/checks.py, `problem_after_update`):
a no-grad forward of the step's last micro-batch (as before issue #25) and a no-grad forward of the fixed
random-token probe (new). SmolLM2-135M-Instruct as bench/bench_smollm2.py prepares it (same model, same stage-1
shards), one process with every core, a global batch of 32 at max length 64, PromptEOL `last` pooling, the
t2t objective, in bf16 where the CPU has it and fp32 otherwise. Best of N wall seconds each:

- step:  forward + sparse KL + backward of the batch (the model compute of one optimizer step);
- batch: the check's forward of the same batch (what every checkpoint already cost);
- probe: the probe's forward (what issue #25 adds);
- check: `problem_after_update` as the trainer calls it (both forwards and the all-reduce).

The probe's cost per optimizer step is probe / (save_every × step); the demo saves every 20 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bench_smollm2 import GLOBAL_BATCH, WORK, config, prepare  # noqa: E402  (bench/ is on sys.path as a script)


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--save-every", type=int, default=20, help="checkpoint interval to amortize over (the demo's)")
    args = p.parse_args()

    from t2t.data.stream import TargetReader
    from t2t.identity import EmbeddingIdentity
    from t2t.model import from_config
    from t2t.run_paths import shards_dir
    from t2t.train.checks import probe_batch, problem_after_update
    from t2t.train.engine import apply_trainable_policy
    from t2t.train.loss import objective_for

    prepare()
    dtype = "bfloat16" if torch.cpu._is_avx512_bf16_supported() else "float32"
    torch.set_num_threads(os.cpu_count() or 1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29581")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)  # the check all-reduces its verdict
    cfg = config(dtype)
    embedder = from_config(cfg.model)
    apply_trainable_policy(embedder.lm, cfg)
    embedder.train()
    settings = EmbeddingIdentity.of(cfg.model)
    shards = sorted(str(p) for p in shards_dir(cfg, "stage1").glob("t2t-*.tar"))
    reader = TargetReader(shards, embedder.tokenizer, settings, batch_size=GLOBAL_BATCH, seed=0, rank=0,
                          world_size=1, workers=0, shuffle_buffer=256)
    batch = next(reader)
    reader.close()
    objective = objective_for(cfg.stage("stage1").objective, cfg.seed)
    probe = probe_batch(len(embedder.tokenizer), settings.max_length, cfg.seed)

    def step():
        objective.loss(embedder, batch).total.backward()
        embedder.zero_grad(set_to_none=True)

    def batch_forward():
        with torch.no_grad():
            objective.loss(embedder, batch)

    def probe_forward():
        with torch.no_grad():
            embedder(**probe)

    load_before = os.getloadavg()
    seconds = {"step": best_of(step, args.repeats), "batch": best_of(batch_forward, args.repeats),
               "probe": best_of(probe_forward, args.repeats),
               "check": best_of(lambda: problem_after_update(embedder, objective, batch, probe), args.repeats)}
    assert problem_after_update(embedder, objective, batch, probe) is None, "the untrained model must pass"
    result = {"dtype": dtype, "threads": torch.get_num_threads(), "seconds": seconds,
              "probe_over_step": seconds["probe"] / seconds["step"],
              "probe_per_step_at_save_every": seconds["probe"] / (args.save_every * seconds["step"]),
              "save_every": args.save_every, "load_average_before_after": [load_before, os.getloadavg()],
              "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx": torch.cpu._is_amx_tile_supported()}
    torch.distributed.destroy_process_group()
    out = WORK / "results_checks.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    s = seconds
    print(f"checks ({dtype}, {result['threads']} threads): step {s['step']:.3f} s, check's batch forward "
          f"{s['batch']:.3f} s, probe forward {s['probe']:.3f} s, whole check {s['check']:.3f} s; probe / step "
          f"{result['probe_over_step']:.3f}, per step at save_every {args.save_every}: "
          f"{result['probe_per_step_at_save_every']:.4f}\nresults in {out}")


if __name__ == "__main__":
    main()
