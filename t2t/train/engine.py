"""DeepSpeed setup: process group, the model built sharded under ZeRO-3, AdamW, LR schedule.

The DeepSpeed JSON is `t2t.train.ds_config`'s; the recipe owns the optimisation, so the optimizer (AdamW)
and the LR schedule are built here. The optimizer is
`torch.optim.AdamW` with the kernel `train.adamw_impl` names (fused by default: one pass over the
fp32 master weights, on CPU as on GPU; nothing JIT-compiles); with ZeRO-Offload of the optimizer it
is DeepSpeed's CPU Adam, which DeepSpeed requires there.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

import torch

from t2t.config import Config, StageConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- process group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Join the process group (gloo on CPU, nccl on GPU); a lone process becomes world size 1.

    Returns (rank, world size). The shm comm op is switched off first: on CPU it would
    JIT-compile (about 30 s) and gloo is fast enough for what the CPU path is for.
    """
    import deepspeed
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if "WORLD_SIZE" not in os.environ:  # started alone, not by deepspeed/torchrun/srun
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    elif os.environ["WORLD_SIZE"] == "1" and "MASTER_PORT" not in os.environ:  # launch_local's one rank
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Before anything allocates: zero.Init places each rank's shards on its current device.
    get_accelerator().set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


# ----------------------------------------------------------------------------- the JSON, for a rank


def resident_on_one_rank(ds: dict, world: int) -> dict:
    """With one rank, ZeRO-3 keeps every parameter whole (`stage3_param_persistence_threshold` above any tensor):
    there is no other rank to shard to, so gathering each module's weights before it runs and releasing them after
    only copies memory (with every parameter resident the SmolLM2 step measured 1.12x faster, bench/BENCHMARKS.md).
    Checkpoints keep ZeRO-3's format. Left alone with several ranks, and where the JSON offloads parameters to CPU
    or NVMe (there the GPU is meant to hold only what runs)."""
    zero = ds.get("zero_optimization", {})
    offloaded = zero.get("offload_param", {}).get("device", "none") in ("cpu", "nvme")
    if world != 1 or offloaded:
        return ds
    log.info("one rank: ZeRO-3 keeps every parameter resident (stage3_param_persistence_threshold %s -> %d); there "
             "is no other rank to shard to", zero.get("stage3_param_persistence_threshold", "default"), RESIDENT)
    return dict(ds, zero_optimization=dict(zero, stage3_param_persistence_threshold=RESIDENT))


RESIDENT = 10**12
"""A persistence threshold above the size of any parameter tensor."""


def offloads_optimizer(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


# ----------------------------------------------------------------------------- optimisation


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int):
    """Step → factor of the peak LR: `constant`; `warmup` linear to 1; `cosine` warmup then cosine to 0."""
    def factor(step: int) -> float:
        if schedule != "constant" and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            span = max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
        return 1.0

    if schedule not in ("constant", "warmup", "cosine"):
        raise ValueError(f"unknown LR schedule {schedule!r}")
    return factor


def build_optimizer(model: torch.nn.Module, cfg: Config, stage: StageConfig, ds: dict):
    """AdamW over the trainable parameters, and its LR schedule from the stage's settings (stepped by DeepSpeed at
    each optimizer step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=stage.lr, weight_decay=cfg.train.weight_decay, adamw_mode=True)
    else:
        impl = cfg.train.adamw_impl
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=cfg.train.weight_decay,
                                      fused=impl == "fused", foreach=impl == "foreach")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(stage.schedule, stage.warmup_steps,
                                                                          stage.steps))
    return optimizer, schedule


# ----------------------------------------------------------------------------- the model


def lora_config(cfg: Config):
    from peft import LoraConfig

    lc = cfg.train.lora
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                      bias="none")


def build_model(cfg: Config, model_dir: Path, ds: dict):
    """The Embedder to train, its weights loaded straight into ZeRO-3 shards (LoRA adapters if configured).

    transformers' `from_pretrained` runs under `deepspeed.zero.Init` while an `HfDeepSpeedConfig`
    is alive: each rank allocates only its partition and rank 0 streams the checkpoint in.
    """
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    from t2t.identity import EmbeddingIdentity
    from t2t.model import Embedder, load_lm, load_tokenizer

    settings = EmbeddingIdentity.of(cfg.model)
    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841  (must stay alive during from_pretrained)
    try:
        lm = load_lm(model_dir, cfg.model.dtype)
    finally:
        unset_hf_deepspeed_config()
    lm = apply_trainable_policy(lm, cfg)
    return Embedder(lm, load_tokenizer(model_dir, settings.padding_side), settings)


def apply_trainable_policy(lm, cfg: Config):
    """Mark what trains, as the authors do: LoRA adapters only, or (full-parameter) everything but the
    LM head and the input embeddings, unless `train.train_embeddings`. Returns the model (peft-wrapped
    for LoRA). Training and export both call this, so they agree on which weights a checkpoint owns."""
    if cfg.train.lora is not None:
        from peft import get_peft_model

        return get_peft_model(lm, lora_config(cfg))  # freezes every base weight
    if not cfg.train.train_embeddings:
        # With tied embeddings (SmolLM2, Gemma, Llama-3.2) head and input embeddings are one tensor.
        for module in (lm.get_input_embeddings(), lm.get_output_embeddings()):
            for p in module.parameters():
                p.requires_grad_(False)
    return lm


def trainable_names(lm) -> list[str]:
    """Names of the parameters that train (a tied tensor appears once, under its first name)."""
    return [name for name, p in lm.named_parameters() if p.requires_grad]


def build_engine(cfg: Config, stage: StageConfig, model_dir: Path, ds: dict):
    """(engine, embedder): the ZeRO-3 DeepSpeed engine around the Embedder, with AdamW and the schedule of
    `stage` (a `StageConfig`: `cfg.stage(name)`)."""
    import deepspeed

    embedder = build_model(cfg, model_dir, ds)
    optimizer, schedule = build_optimizer(embedder, cfg, stage, ds)
    import_muon_uncompiled()
    engine, _, _, _ = deepspeed.initialize(model=embedder, optimizer=optimizer, lr_scheduler=schedule, config=ds)
    return engine, embedder


def import_muon_uncompiled() -> None:
    """Import DeepSpeed's Muon optimizer module with its kernels left uncompiled.

    Every ZeRO engine imports that module, only to ask whether the optimizer is a Muon (`isinstance`), and the
    module wraps three kernels in `torch.compile` as it is imported, which loads TorchDynamo's and Inductor's
    machinery: 1.2 s of CPU at the start of every rank of every stage (bench/BENCHMARKS.md), for an optimizer t2t
    never builds. Imported here first, with DeepSpeed's `compiler.compile()` helper giving its plain decorator,
    those kernels stay eager functions; nothing else is compiled differently (the helper is restored at once)."""
    import sys

    from deepspeed.runtime import compiler

    name = "deepspeed.runtime.zero.muon.muon_optimizer"
    if name in sys.modules or not hasattr(compiler, "dummy_decorator"):
        return
    compile_helper = compiler.compile
    compiler.compile = lambda: compiler.dummy_decorator
    try:
        __import__(name)
    except ImportError:  # a DeepSpeed without Muon: nothing to save
        pass
    finally:
        compiler.compile = compile_helper
