"""Compute dtypes: which one a run really gets on this machine.

A recipe's `bfloat16` is a request for speed. On a GPU it is granted. On a CPU it is granted where bf16 computes
faster than fp32 there, which the CPU's flags alone do not tell: without AVX512-BF16 or AMX torch emulates bf16
(minutes per demo step), and on a 2-core Xeon that has AVX512-BF16 but no AMX a bf16 matmul ran at half the fp32
rate (155 against 300 GFLOP/s, bench/BENCHMARKS.md), while AMX makes it 5.7× faster. So where the CPU has native
bf16, one matmul in each dtype decides (`cpu_bf16_speedup`, measured once per process); elsewhere fp32, unmeasured.
`T2T_CPU_BF16=on` (or `off`) overrides the measurement, e.g. to benchmark bf16 where it does not pay.

Torch alone, no transformers: the pipeline, each sweep step and `train_local.sh` decide a run's dtype before any
model is loaded, and importing transformers for that cost them 1.5-2 s of CPU each (bench/BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch

from t2t.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_BF16_ENV = "T2T_CPU_BF16"
"""`auto` (default): bf16 on a CPU where it measures faster than fp32; `on`: wherever the CPU has native bf16;
`off`: never on a CPU."""
BF16_MARGIN = 1.25
"""How much faster than fp32 a bf16 matmul must run for a CPU to compute in bf16. The CPUs measured so far sit far
from it (0.5× without AMX on a Xeon, about 2× on AVX512-BF16 EPYCs, 5.7× with AMX), so timing noise cannot make
two processes of one run choose differently; fp32 is the more exact of the two when they are close."""
_said_once: set[str] = set()  # things logged once per process (the bf16 fallback)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@functools.cache
def cpu_bf16_speedup(n: int = 1024, repeats: int = 3) -> float:
    """How many times faster an n³ bf16 matmul runs than an fp32 one on this CPU, with torch's threads as they are:
    best of `repeats` each, after one untimed call (about 0.1 s on 2 cores)."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.full((n, n), 0.5, dtype=dtype)  # constant operands: no RNG drawn (resumed runs replay theirs)
        b = torch.full((n, n), 0.25, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        rates[dtype] = 2 * n ** 3 / best
    return rates[torch.bfloat16] / rates[torch.float32]


def cpu_bf16_pays() -> bool:
    """Whether a run asking for bf16 computes in bf16 on this CPU (see the module docstring); the reason for fp32
    is logged once per process."""
    choice = os.environ.get(CPU_BF16_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "on", "off"):
        raise UserError(f"{CPU_BF16_ENV} must be auto, on or off; got {os.environ[CPU_BF16_ENV]!r}")
    if choice == "off":
        return _fp32_because(f"{CPU_BF16_ENV}=off")
    if not cpu_has_bf16():
        return _fp32_because("this CPU has no native bf16 (AVX512-BF16/AMX)")
    if choice == "on":
        return True
    speedup = cpu_bf16_speedup()
    if speedup < BF16_MARGIN:
        return _fp32_because(f"a bf16 matmul runs at {speedup:.2f}× the fp32 rate on this CPU (bf16 needs "
                             f"{BF16_MARGIN}×; set {CPU_BF16_ENV}=on to use it anyway)")
    return True


def _fp32_because(reason: str) -> bool:
    if reason not in _said_once:
        _said_once.add(reason)
        log.warning("bf16 asked for, computing in float32: %s", reason)
    return False


def usable_dtype(dtype: str) -> str:
    """`dtype`, or float32 where bf16 would not pay: no GPU and a CPU where bf16 is emulated or measured slower."""
    if dtype == "bfloat16" and not torch.cuda.is_available() and not cpu_bf16_pays():
        return "float32"
    return dtype
