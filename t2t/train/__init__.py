"""Training: Text2Token (sparse-target KL), SimCSE, MNTP and weighted sums of them, DeepSpeed ZeRO-3 loop,
checkpoint/resume, export.

One rank per process, started by a launcher (or alone as world size 1):

    deepspeed --num_gpus 2 --no_local_rank --module t2t.cli train --config recipes/demo.yaml --stage 1
    torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config recipes/demo.yaml --stage 1
    t2t export --config recipes/demo.yaml --stage 1            # newest checkpoint → runs/demo/stage1/model

The SimCSE baseline trains on the same shards (their texts only), here with LLM2Vec's mean pooling (the
objective takes whatever `model.pooling` says: without the override, the demo's PromptEOL `last`):

    torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config recipes/demo.yaml --stage 1 \
        --set stages.stage1.objective.name=simcse --set model.pooling=mean --set run_dir=runs/demo-simcse

On CPU set DS_ACCELERATOR=cpu (DeepSpeed then uses gloo). launchers/train_local.sh and
launchers/train.slurm wrap these for one machine and for Slurm clusters.
"""

import importlib

_EXPORTS = {"export_checkpoint": "export", "stage_complete": "export", "launch_local": "launch",
            "sparse_kl": "loss", "TrainingDiverged": "trainer", "train": "trainer"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # Lazily: the recipe loader reads `t2t.train.loss.OBJECTIVES` without paying for DeepSpeed's import.
    if name not in _EXPORTS:
        raise AttributeError(f"module 't2t.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"t2t.train.{_EXPORTS[name]}"), name)
