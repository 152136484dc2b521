"""`t2t plan`: memory per GPU and wall time of a cluster run, from the backbone's architecture alone (no weights).

Memory per GPU and wall time of a cluster run, from the backbone's architecture alone (no weights).

    t2t plan --config recipes/mistral-7b.yaml --nodes 2 --gpus-per-node 8
    t2t plan --config recipes/llama3-8b.yaml --nodes 4 --gpus-per-node 8 --gpu-mem 80 --mfu 0.35 --json

`memory`: the architecture, the ZeRO-3 settings and the bytes per GPU; `timing`: FLOPs, communication and the
plan of a whole recipe, stage by stage.
"""

from t2t.plan.memory import (CHARS_PER_TOKEN, GiB, ITEM_LABELS, MODES, USABLE_GPU_FRACTION, Arch, ZeroSettings,
                             activation_bytes, load_arch, memory_plan, read_ds_config, state_items)
from t2t.plan.timing import Cluster, count_corpus, forward_time, make_plan, stage_targets_time, train_stage_time

__all__ = ["CHARS_PER_TOKEN", "GiB", "ITEM_LABELS", "MODES", "USABLE_GPU_FRACTION", "Arch", "ZeroSettings",
           "activation_bytes", "load_arch", "memory_plan", "read_ds_config", "state_items", "Cluster", "count_corpus",
           "forward_time", "make_plan", "stage_targets_time", "train_stage_time"]
