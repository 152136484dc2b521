"""One ZeRO-3 optimizer step per objective on a fixed global batch of 8 texts; rank 0 saves losses and full gradients.

Run by tests/test_train_sharding.py, once as 2 ranks and once as 1 process (the same global batch):

    torchrun --standalone --nproc_per_node 2 tests/dist_step_check.py RECIPE OUT.pt
    python tests/dist_step_check.py RECIPE OUT.pt

`t2t` and `mntp`: 2 ranks × 2 micro-steps of 2 texts against 1 process × 1 micro-step of 8 (neither loss has
in-batch negatives, so accumulation is exact too; mntp's masks are a function of each text, not of the split). `simcse`: 2 ranks × 1 micro-step of 4
against 1 process × 1 micro-step of 8: the contrastive batch is one micro-step gathered over
ranks, so only the rank split is exact. Its dropout is 0, making the two views deterministic. `sum` (t2t + 0.5 ×
simcse) as simcse: each part divided by its own count over the global batch, which differs between the parts and
is not any one rank's. All objectives run in one launch, each on a freshly built engine, to pay the start-up once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import webdataset as wds

GLOBAL_BATCH = 8
MICRO_STEPS = {"t2t": 2, "simcse": 1, "mntp": 2, "sum": 1}  # with 2 ranks; a lone process: the batch in one micro-step
SUM = "{name: sum, parts: [{name: t2t, weight: 1.0}, {name: simcse, weight: 0.5, dropout: 0}]}"


def one_step(recipe: str, objective_name: str, samples: list, rank: int, world: int) -> dict:
    from deepspeed.utils import safe_get_full_grad

    from t2t.config import load_config
    from t2t.data.stream import collate
    from t2t.identity import EmbeddingIdentity
    from t2t.model import load_tokenizer
    from t2t.train.ds_config import build_ds_config
    from t2t.train.engine import build_engine
    from t2t.train.loss import objective_for
    from t2t.train.trainer import train_step

    micro_steps = MICRO_STEPS[objective_name] if world > 1 else 1
    per_micro = GLOBAL_BATCH // (world * micro_steps)
    attention = "bidirectional" if objective_name == "mntp" else "causal"
    cfg = load_config(recipe, [f"train.micro_batch_size={per_micro}", f"train.grad_accum_steps={micro_steps}",
                               f"stages.stage1.objective={SUM}" if objective_name == "sum" else
                               f"stages.stage1.objective.name={objective_name}",
                               *(["stages.stage1.objective.dropout=0"] if objective_name == "simcse" else []),
                               f"model.attention={attention}"])
    stage = cfg.stage("stage1")
    settings = EmbeddingIdentity.of(cfg.model)
    tokenizer = load_tokenizer(cfg.model.path, settings.padding_side)
    micro = [collate(samples[(m * world + rank) * per_micro:(m * world + rank + 1) * per_micro], tokenizer, settings)
             for m in range(micro_steps)]

    torch.manual_seed(0)
    engine, embedder = build_engine(cfg, stage, Path(cfg.model.path), build_ds_config(cfg))
    objective = objective_for(stage.objective, cfg.seed)
    objective.prepare(engine.module)
    micro = [objective.prepare_batch(b) for b in micro]
    engine.train()
    grads = {}

    def read_gradients() -> None:  # collective: every rank gathers every full gradient (None: the param got none)
        for name, p in embedder.named_parameters():
            g = safe_get_full_grad(p)
            grads[name] = None if g is None else g.detach().clone().cpu()

    result = train_step(engine, objective, micro, world, before_update=read_gradients)
    return dict(loss=result.loss, counted=result.counted, parts=result.parts, grads=grads)


def main(recipe: str, out: str) -> None:
    from t2t.config import load_config
    from t2t.data.shards import decode_sample
    from t2t.train.engine import init_distributed

    rank, world = init_distributed()
    from t2t.run_paths import shards_dir

    shard = shards_dir(load_config(recipe), "stage1") / "t2t-000000.tar"
    samples = [decode_sample(s) for s in wds.tarfile_samples([dict(url=str(shard))])][:GLOBAL_BATCH]
    assert any(len(s[2]) == 0 for s in samples), "the global batch should hold an empty target"
    results = {name: one_step(recipe, name, samples, rank, world) for name in MICRO_STEPS}
    if rank == 0:
        torch.save(dict(world=world, **results), out)
    torch.distributed.destroy_process_group()
    from t2t.train.rank import leave

    leave(0)  # as a t2t rank exits: gloo's teardown can abort a rank after a successful run (see leave)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
