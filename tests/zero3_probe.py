"""Measure what ZeRO-3 really keeps per rank, to check `t2t.plan` against it (used by tests/test_plan.py).

Run as two CPU ranks over gloo:

    DS_ACCELERATOR=cpu .venv/bin/torchrun --standalone --nproc_per_node 2 tests/zero3_probe.py \
        --model DIR_WITH_CONFIG_JSON --ds-config ds.json --out OUT_DIR

It builds a randomly initialised causal LM from `DIR/config.json`, wraps it with its own minimal
`deepspeed.initialize` (a torch AdamW client optimizer, as on CPU), takes one optimizer step on a
random batch and writes `OUT_DIR/rank<R>.json` with the bytes this rank holds:
- `param_partition`: its shard of every parameter (`ds_tensor`), in the model dtype;
- `persistent_params`: parameters below the persistence threshold, kept whole on every rank;
- `grad_partition`: the flat gradient partition buffer;
- `fp32_master`: the fp32 master copy of its shard;
- `optimizer_state`: the tensors in the client optimizer's state (Adam m and v).
It deliberately does not use t2t's trainer: it checks the planner, not the trainer. Of t2t it takes only
the trainable-parameter policy (embeddings and head frozen unless --train-embeddings), which the plan models.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="directory holding a Hugging Face config.json")
    ap.add_argument("--ds-config", required=True, help="DeepSpeed JSON (ZeRO stage 3)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--train-embeddings", action="store_true",
                    help="train the input embeddings and LM head too (default: frozen, as t2t trains)")
    args = ap.parse_args()

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # The shm comm op would JIT-compile (about 30 s) on the first CPU init; gloo alone is enough here.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()

    ds_config = json.loads(Path(args.ds_config).read_text())
    config = AutoConfig.from_pretrained(args.model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    from t2t.config import Config
    from t2t.train.engine import apply_trainable_policy

    cfg = Config()
    cfg.train.train_embeddings = args.train_embeddings
    model = apply_trainable_policy(model, cfg)  # the trainer's own policy: frozen tensors get no optimizer state
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    engine, zero_opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    batch = ds_config["train_micro_batch_size_per_gpu"]
    ids = torch.randint(0, config.vocab_size, (batch, args.seq_len), generator=torch.Generator().manual_seed(rank))
    logits = engine(input_ids=ids).logits
    loss = logits.float().logsumexp(-1).mean()
    engine.backward(loss)
    engine.step()

    params = list(engine.module.parameters())
    state_tensors = [v for s in zero_opt.optimizer.state.values() for v in s.values()
                     if isinstance(v, torch.Tensor) and v.dim() > 0]
    report = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "n_params": sum(p.ds_numel for p in params),
        "param_partition": sum(tensor_bytes(p.ds_tensor) for p in params),
        "persistent_params": sum(p.ds_numel * p.ds_tensor.element_size() for p in params if p.ds_persist),
        "grad_partition": tensor_bytes(zero_opt.grad_partitions_flat_buffer),
        "fp32_master": sum(tensor_bytes(t) for t in zero_opt.fp32_partitioned_groups_flat),
        "optimizer_state": sum(tensor_bytes(t) for t in state_tensors),
        "loss": float(loss),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / f"rank{rank}.json")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    from t2t.train.rank import leave

    leave(0)  # as a t2t rank exits: gloo's teardown can abort a rank after a successful run (see leave)


if __name__ == "__main__":
    main()
