"""Compute dtypes: which one a run really gets on this machine.

Torch alone, no transformers: the pipeline, each sweep step and `train_local.sh` decide a run's dtype before any
model is loaded, and importing transformers for that cost them 1.5-2 s of CPU each (bench/BENCHMARKS.md).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_said_once: set[str] = set()  # things logged once per process (the bf16 fallback)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def usable_dtype(dtype: str) -> str:
    """`dtype`, or float32 where bf16 would be emulated: no GPU and a CPU without bf16 support (said once)."""
    if dtype == "bfloat16" and not torch.cuda.is_available() and not cpu_has_bf16():
        if "bf16" not in _said_once:
            _said_once.add("bf16")
            log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): computing in float32 instead")
        return "float32"
    return dtype
