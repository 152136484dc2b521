"""Every ds_configs/*.json passes t2t's checks and DeepSpeed's own config parser, as the trainer will use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from t2t.config import load_config
from t2t.train.ds_config import build_ds_config, read_ds_config
from t2t.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))


def deepspeed_parse(ds: dict):
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig(ds)


def test_the_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"zero3_cpu.json", "zero3_bf16.json", "zero3_bf16_offload.json"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_deepspeeds_parser(path, tmp_path):
    raw = read_ds_config(path)
    parsed = deepspeed_parse(dict(raw))
    assert parsed.zero_optimization_stage == 3
    assert parsed.zero_config.gather_16bit_weights_on_model_save  # save_16bit_model works with every config
    # As the trainer uses it: the recipe's batch, accumulation and clipping written in.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: m}}\ntrain: {{ds_config: {path}, micro_batch_size: 3, grad_accum_steps: 2}}\n")
    ds = build_ds_config(load_config(recipe))
    parsed = deepspeed_parse(ds)
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (3, 2)
    assert parsed.train_batch_size == 6  # world size 1 here


def test_gpu_configs_are_bf16_and_the_cpu_config_is_not():
    assert read_ds_config(REPO / "ds_configs" / "zero3_bf16.json")["bf16"]["enabled"] is True
    offload = read_ds_config(REPO / "ds_configs" / "zero3_bf16_offload.json")["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"
    assert read_ds_config(REPO / "ds_configs" / "zero3_cpu.json")["bf16"]["enabled"] is False


def test_deepspeeds_parser_rejects_a_misspelled_key():
    ds = json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text())
    ds["zero_optimization"]["stage3_prefetch_buket_size"] = 1
    with pytest.raises(Exception, match="stage3_prefetch_buket_size"):
        deepspeed_parse(ds)


@pytest.mark.parametrize("change, message", [
    ({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}, '"auto" is not allowed.*reduce_bucket_size'),
    ({"optimizer": {"type": "AdamW"}}, "remove 'optimizer'"),
    ({"scheduler": {"type": "WarmupLR"}}, "remove 'scheduler'"),
    ({"zero_optimization": {"stage": 2}}, "stage must be 3"),
])
def test_t2t_rejects_what_the_recipe_owns_or_auto(tmp_path, change, message):
    ds = json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text())
    ds.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(UserError, match=message):
        read_ds_config(path)


def test_bf16_training_falls_back_to_fp32_where_it_would_not_pay(monkeypatch):
    """A CPU without native bf16 (no GPU) would emulate every bf16 matmul (minutes per demo step); one without AMX
    may multiply bf16 at half the fp32 rate (t2t.dtypes)."""
    from t2t import dtypes

    cfg = load_config(REPO / "recipes" / "demo.yaml")
    monkeypatch.setattr(dtypes.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dtypes, "cpu_bf16_pays", lambda: True)
    assert build_ds_config(cfg)["bf16"]["enabled"] is True
    monkeypatch.setattr(dtypes, "cpu_bf16_pays", lambda: False)
    ds = build_ds_config(cfg)
    assert ds["bf16"]["enabled"] is False and ds["communication_data_type"] == "fp32"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_one_rank_keeps_its_parameters_resident_unless_they_are_offloaded(path):
    from t2t.train.engine import RESIDENT, resident_on_one_rank

    ds = read_ds_config(path)
    own = ds["zero_optimization"].get("stage3_param_persistence_threshold")
    offloaded = ds["zero_optimization"].get("offload_param", {}).get("device") in ("cpu", "nvme")
    one = resident_on_one_rank(ds, world=1)
    assert one["zero_optimization"].get("stage3_param_persistence_threshold") == (own if offloaded else RESIDENT)
    assert resident_on_one_rank(ds, world=2) == ds  # several ranks shard as the JSON says
    assert ds["zero_optimization"].get("stage3_param_persistence_threshold") == own  # the caller's dict is untouched
    deepspeed_parse(dict(one, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1))


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds["zero_optimization"].update(overlap_comm="maybe"),
     "DeepSpeed rejects zero_optimization.overlap_comm: Input should be a valid boolean, unable to interpret input "
     "(got 'maybe')"),
    (lambda ds: ds["zero_optimization"].update(offload_optimizer={"device": "gpu"}),
     "DeepSpeed rejects zero_optimization.offload_optimizer.device: Input should be 'none', 'cpu' or 'nvme' "
     "(got 'gpu')"),
    (lambda ds: ds.update(communication_data_type="int3"),  # a check outside pydantic: its own message
     "DeepSpeed rejects it: Invalid communication_data_type. Supported data types: ['fp16', 'bf16', 'fp32']. "
     "Got: int3"),
])
def test_what_deepspeed_rejects_is_one_line_naming_the_file_and_key_before_any_rank_starts(tmp_path, capsys, change,
                                                                                          message):
    """`t2t config` (and `t2t pipeline`, which checks the same before its first step) name the key; before, every
    rank raised DeepSpeed's pydantic error from deep inside the model's loading."""
    from t2t.cli import main

    ds = json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text())
    change(ds)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ds))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: m}}\ntrain: {{ds_config: {path}}}\n")
    assert main(["config", "--config", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == f"t2t config: error: {path}: {message}"


def test_deepspeeds_cpu_accelerator_warning_is_not_shown_where_there_is_no_gpu():
    """A command that imports DeepSpeed (`t2t plan`) on a machine with no GPU, DS_ACCELERATOR unset: DeepSpeed's
    "Setting accelerator to CPU. If you have GPU ..., we were unable to detect it." is not printed."""
    import torch

    if torch.cuda.device_count():
        pytest.skip("DeepSpeed finds the GPU here and does not warn")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-m", "t2t.cli", "plan", "--config", "recipes/tiny.yaml", "--nodes", "1",
                           "--gpus-per-node", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Setting accelerator to CPU" not in done.stdout + done.stderr


def test_only_that_warning_is_dropped_and_only_without_a_gpu(monkeypatch):
    import logging

    import torch

    from t2t.process import _ExpectedCpuAccelerator

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("DeepSpeed", logging.WARNING, "real_accelerator.py", 213, message, None, None)

    cpu = record("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
    other = record("DeepSpeedConfig: vocabulary size 32001 is not aligned to 8, may import tensor core utilization.")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    assert not _ExpectedCpuAccelerator().filter(cpu) and _ExpectedCpuAccelerator().filter(other)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a GPU DeepSpeed did not pick: worth acting on
    assert _ExpectedCpuAccelerator().filter(cpu)
