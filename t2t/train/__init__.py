"""Training: Text2Token (sparse-target KL) and SimCSE objectives, DeepSpeed ZeRO-3 loop, checkpoint/resume, export.

One rank per process, started by a launcher (or alone as world size 1):

    deepspeed --num_gpus 2 --no_local_rank --module t2t.cli train --config recipes/demo.yaml --stage 1
    torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config recipes/demo.yaml --stage 1
    t2t export --config recipes/demo.yaml --stage 1            # newest checkpoint → runs/demo/stage1/model

The SimCSE baseline trains on the same shards (their texts only):

    torchrun --standalone --nproc_per_node 2 -m t2t.cli train --config recipes/demo.yaml --stage 1 \
        --set train.objective=simcse --set run_dir=runs/demo-simcse

On CPU set DS_ACCELERATOR=cpu (DeepSpeed then uses gloo). launchers/train_local.sh and
launchers/train.slurm wrap these for one machine and for Slurm clusters.
"""

from t2t.train.checkpoint import export_checkpoint, stage_complete
from t2t.train.launch import launch_local
from t2t.train.loss import sparse_kl
from t2t.train.trainer import TrainingDiverged, train

__all__ = ["export_checkpoint", "launch_local", "sparse_kl", "stage_complete", "train", "TrainingDiverged"]
