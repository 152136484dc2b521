"""The numbers a user watches while a stage trains, written through DeepSpeed's own monitor.

Every optimizer step rank 0 writes one record: loss, lr, grad norm, samples/s, tokens/s (real tokens, not
padding), MFU and where the step's time went; for a `sum` of objectives also each part's own mean loss and count
(`loss_<part>`, `texts_counted_<part>`; `texts_counted` is then null). It goes to `<run_dir>/<stage>/metrics.jsonl` (what the pipeline's
report and the progress bar read) and to DeepSpeed's `MonitorMaster` as `t2t/<name>` events: CSV files under
`<run_dir>/<stage>/monitor/<stage>/` by default, TensorBoard and W&B (offline) when `train.monitors` names them
or the DeepSpeed JSON enables them itself (its own `csv_monitor`/`tensorboard`/`wandb` sections win).

Where a step's time goes (`StepClock`), in seconds, summed over the step's micro-batches:
- `data_wait_s`: waiting for the reader's next batch;
- `compute_s`: forwards and backwards, less the communication measured inside them;
- `optimizer_s`: DeepSpeed's optimizer step (clipping, AdamW, re-partitioning), less its communication;
- `comm_s`: collectives: t2t's own all-reduces, and with several ranks ZeRO-3's parameter gathers and gradient
  reduce-scatters, as DeepSpeed's comms logger times them (switched on only when there is more than one rank).

MFU is 6 × the non-embedding parameters × real tokens/s over the ranks' matmul peak: `train.peak_flops` per rank
when the user gives one, else a square matmul in the run's dtype timed once on rank 0 at the start, with rank 0's
device and threads (`measure_peak_flops`), times the number of ranks (each has its own GPU, or its share of a
machine's cores). A peak that cannot be measured leaves MFU out (null), never a guess.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from t2t.data.files import write_text_atomic

log = logging.getLogger(__name__)

MONITORS = {"csv": ("csv_monitor", None), "tensorboard": ("tensorboard", "tensorboard"),
            "wandb": ("wandb", "wandb")}
"""`train.monitors` name → (the DeepSpeed JSON section, the package it needs beyond DeepSpeed)."""


def add_monitors(ds: dict, names: list[str], out_dir: Path, job: str) -> dict:
    """The DeepSpeed config with the monitors `names` switched on, writing under `out_dir/job`.

    A section the JSON already has is left as the user wrote it. A monitor whose package is not installed (the
    recipe's, or one the JSON enables) is switched off with one line naming the package: training goes on."""
    for name in names:
        section, _ = MONITORS[name]
        ds.setdefault(section, {"enabled": True, "output_path": str(out_dir), "job_name": job})
        if name == "wandb":
            ds[section].setdefault("project", "t2t")
            os.environ.setdefault("WANDB_MODE", "offline")  # never reaches a server unless the user says so
    for name, (section, package) in MONITORS.items():
        enabled = isinstance(ds.get(section), dict) and ds[section].get("enabled") is True
        if enabled and package is not None and importlib.util.find_spec(package) is None:
            log.warning("monitor %s is off: it needs the %s package, which is not installed (pip install %s)",
                        name, package, package)
            ds[section] = dict(ds[section], enabled=False)
    return ds


def comms_logging(ds: dict, world: int) -> dict:
    """With several ranks, DeepSpeed's comms logger on (quiet), so `comm_s` covers ZeRO-3's own collectives."""
    if world > 1:
        ds.setdefault("comms_logger", {"enabled": True, "verbose": False, "prof_all": True, "debug": False})
    return ds


def _logged_comm_seconds() -> float:
    """Seconds DeepSpeed's comms logger timed since the last call. Its per-op timers accumulate every call of a run
    (and its records repeat those running totals), so both are reset here: they never grow over a long run."""
    from deepspeed.comm import comm

    if not comm.comms_logger.enabled:
        return 0.0
    total_ms = sum(timer.elapsed(reset=True) for timer in comm.timers.timers.values() if not timer.started_)
    comm.comms_logger.comms_dict.clear()
    return total_ms / 1000.0


class MetricsLog:
    """Rank 0's metrics.jsonl; on resume the lines after the resumed step (from the lost run) are dropped."""

    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def run_dtype(ds: dict) -> torch.dtype:
    """The dtype a DeepSpeed config trains in."""
    if ds.get("bf16", {}).get("enabled") is True or ds.get("bfloat16", {}).get("enabled") is True:
        return torch.bfloat16
    return torch.float16 if ds.get("fp16", {}).get("enabled") is True else torch.float32


class StepClock:
    """Seconds per phase of one optimizer step (see the module docstring)."""

    PHASES = ("data_wait_s", "compute_s", "optimizer_s", "comm_s")

    def __init__(self):
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        _logged_comm_seconds()  # what came before this step is not its own

    @contextmanager
    def phase(self, name: str):
        """Time a phase; the collectives DeepSpeed logged inside it move to `comm_s`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            comm = min(_logged_comm_seconds(), elapsed) if name != "data_wait_s" else 0.0
            self.seconds[name] += elapsed - comm
            self.seconds["comm_s"] += comm


PEAK_MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}
"""The side of the square matmul timed for the peak, by device type. A CPU's 1024³ runs at its 2048³ rate (82.6
against 79.0 GFLOP/s on one thread, 146.5 against 147.0 on two, fp32, bench/BENCHMARKS.md) in an eighth of the
time, which every training start pays; a GPU reaches its peak only at about 8192³ (a few milliseconds there)."""


def measure_peak_flops(dtype: torch.dtype, device) -> float | None:
    """FLOP/s of an n³ matmul (`PEAK_MATMUL_SIZE`) in `dtype` on `device`, best of 6 (torch's threads as the run has
    them); None where it cannot be measured."""
    n = PEAK_MATMUL_SIZE.get(torch.device(device).type, 2048)
    try:
        # Constant operands: the speed does not depend on the values, and no RNG is drawn from (a resumed run's
        # restored RNG must give the dropout masks the uninterrupted run got).
        a = torch.full((n, n), 0.5, dtype=dtype, device=device)
        b = torch.full((n, n), 0.25, dtype=dtype, device=device)
        best = float("inf")
        for _ in range(6):
            _sync(device)
            start = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        return 2 * n ** 3 / best
    except (RuntimeError, TypeError) as e:  # a dtype the device has no matmul for
        log.warning("the matmul peak could not be measured (%s): MFU is left out", e)
        return None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def non_embedding_params(lm) -> int:
    """Parameters of the backbone less its input embeddings and LM head (counted once if tied): what the 6·N·tokens
    rule counts for a transformer. Under ZeRO-3 a parameter's full size is its `ds_numel`."""
    def numel(p) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    skip = {id(p) for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    seen: set[int] = set()
    total = 0
    for p in lm.parameters():
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            total += numel(p)
    return total


def mfu(params: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model-FLOPs utilisation: 6 · params · tokens/s over `peak`; None without a peak."""
    return None if not peak else 6 * params * tokens_per_s / peak


__all__ = ["MetricsLog", "run_dtype", "MONITORS", "add_monitors", "comms_logging", "StepClock", "measure_peak_flops",
           "non_embedding_params", "mfu"]
