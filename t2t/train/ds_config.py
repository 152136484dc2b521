"""The DeepSpeed JSON (`train.ds_config`): found, read and checked, then filled in from the recipe.

It holds the ZeRO, precision and communication settings, with concrete values only. The recipe owns the
optimisation: micro batch, accumulation and clipping are written into it from `train.*`, and the optimizer and LR
schedule are t2t's (`t2t.train.engine`), so the JSON must not name them. `read_ds_config` checks the file without
DeepSpeed (no torch: `t2t pipeline` does it at once); `build_ds_config` also has DeepSpeed parse it (torch and
DeepSpeed imported), before a rank loads a model and before a pipeline's first step that leads to training.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from t2t.config import Config
from t2t.errors import UserError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_OWNED = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "gradient_clipping": "train.grad_clip",
}
FORBIDDEN = {
    "optimizer": "t2t builds AdamW from stages.<name>.lr and train.weight_decay",
    "scheduler": "t2t builds the LR schedule from stages.<name>.schedule",
    "train_batch_size": "it follows from train.micro_batch_size × train.grad_accum_steps × world size",
}


def resolve_ds_config_path(path: str) -> Path:
    """`train.ds_config` as given, or relative to the repository (recipes name `ds_configs/...`)."""
    candidates = [Path(path)] + ([REPO_ROOT / path] if not Path(path).is_absolute() else [])
    for p in candidates:
        if p.is_file():
            return p
    raise UserError(f"train.ds_config: {path} does not exist (looked in {', '.join(map(str, candidates))})")


def _find_auto(node, where: str) -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _find_auto(v, f"{where}.{key}" if where else key)]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _find_auto(v, f"{where}[{i}]")]
    return [where] if node == "auto" else []


def read_ds_config(path: str | Path) -> dict:
    """Read and check a DeepSpeed JSON: valid, ZeRO stage 3, no "auto", no keys the recipe owns."""
    p = Path(path)
    try:
        ds = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: not a readable JSON file ({e})") from None
    if not isinstance(ds, dict):
        raise UserError(f"{p}: must hold a JSON object")
    autos = _find_auto(ds, "")
    if autos:
        raise UserError(f"{p}: \"auto\" is not allowed, give concrete values for {', '.join(autos)}")
    for key, why in FORBIDDEN.items():
        if key in ds:
            raise UserError(f"{p}: remove {key!r}; {why}")
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise UserError(f"{p}: zero_optimization.stage must be 3, got {stage!r}")
    return ds


def build_ds_config(cfg: Config) -> dict:
    """The DeepSpeed config this run uses: the JSON with the recipe's batch, accumulation and clipping."""
    path = resolve_ds_config_path(cfg.train.ds_config)
    ds = read_ds_config(path)
    values = dict(train_micro_batch_size_per_gpu=cfg.train.micro_batch_size,
                  gradient_accumulation_steps=cfg.train.grad_accum_steps,
                  gradient_clipping=float(cfg.train.grad_clip))
    for key, value in values.items():
        if key in ds and ds[key] != value:
            log.info("%s: %s=%s replaced by the recipe's %s=%s", path, key, ds[key], RECIPE_OWNED[key], value)
        ds[key] = value
    ds.setdefault("steps_per_print", 10**9)  # t2t logs its own metrics
    ds = fp32_where_bf16_does_not_pay(ds, path)
    check_with_deepspeed(ds, path)
    return ds


def check_with_deepspeed(ds: dict, path) -> None:
    """DeepSpeed's own parse of the config: a value its pydantic models reject (a string for a boolean, a misspelled
    key inside `zero_optimization`) is one line naming the file and the key, at `t2t config`, when `t2t pipeline`
    starts and before a rank loads the model, instead of a traceback on every rank. Only the JSON's contents are
    checked: with no process group DeepSpeed parses it as for one process."""
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError
    from pydantic import ValidationError

    try:
        DeepSpeedConfig(copy.deepcopy(ds))  # it may fill in defaults; the caller's dict stays as read
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = _json_key(ds, err["loc"], err.get("input")) or f"{e.title}.{'.'.join(map(str, err['loc']))}"
            got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
            problems.append(f"{where}: {err['msg']}{got}")
        raise UserError(f"{path}: DeepSpeed rejects {'; '.join(problems)}") from None
    except (DeepSpeedConfigError, ValueError, AssertionError) as e:  # its checks of values against each other
        raise UserError(f"{path}: DeepSpeed rejects it: {e}") from None


def _json_key(ds: dict, loc: tuple, value) -> str | None:
    """The dotted key in the JSON of the field pydantic reports at `loc` with `value`: pydantic names the field
    within one of DeepSpeed's sub-models only (`overlap_comm`, not `zero_optimization.overlap_comm`), so it is
    looked for by its value; None unless exactly one place matches."""
    found = []

    def walk(node, path: list[str]) -> None:
        if not isinstance(node, dict):
            return
        here = node
        for key in loc:
            here = here.get(key, _MISSING) if isinstance(here, dict) else _MISSING
        if here is not _MISSING and here == value:
            found.append(".".join([*path, *map(str, loc)]))
        for key, child in node.items():
            walk(child, [*path, key])

    walk(ds, [])
    return found[0] if len(found) == 1 else None


_MISSING = object()


def fp32_where_bf16_does_not_pay(ds: dict, path) -> dict:
    """The DeepSpeed config with bf16 turned off where it would not pay (no GPU, and a CPU that would emulate it or
    multiplies bf16 slower than fp32: `t2t.dtypes`): DeepSpeed would cast the model to bf16 and every matmul would be
    emulated (the demo's first stage-1 step took 253 s instead of seconds) or run at half speed. Training then runs
    in fp32, as `model.dtype` does there."""
    from t2t.dtypes import usable_dtype

    keys = [k for k in ("bf16", "bfloat16") if ds.get(k, {}).get("enabled") is True]
    if not keys or usable_dtype("bfloat16") == "bfloat16":
        return ds
    for key in keys:
        ds[key] = dict(ds[key], enabled=False)
    if ds.get("communication_data_type") in ("bf16", "bfloat16"):
        ds["communication_data_type"] = "fp32"
    log.warning("%s: bf16 turned off, training in fp32 (no GPU, and bf16 does not pay on this CPU: t2t.dtypes)", path)
    return ds
