"""What a user watches while training: DeepSpeed monitors, the step-time split, MFU, the report's throughput columns,
`t2t plan --mfu-from`, and the automatic number of local ranks."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

from t2t.errors import UserError
from t2t.report import measured, throughput
from t2t.train.launch import local_ranks
from t2t.train.monitor import MONITORS, StepClock, add_monitors, measure_peak_flops, mfu, non_embedding_params


def test_the_recipe_monitors_write_under_the_stage(tmp_path):
    ds = add_monitors({}, ["csv"], tmp_path / "monitor", "stage1")
    assert ds["csv_monitor"] == {"enabled": True, "output_path": str(tmp_path / "monitor"), "job_name": "stage1"}
    assert "tensorboard" not in ds and "wandb" not in ds


def test_a_monitor_the_json_configures_keeps_its_settings(tmp_path):
    own = {"enabled": True, "output_path": "/elsewhere", "job_name": "mine"}
    ds = add_monitors({"csv_monitor": dict(own)}, ["csv"], tmp_path, "stage1")
    assert ds["csv_monitor"] == own


@pytest.mark.parametrize("where", ["recipe", "json"])
def test_a_monitor_without_its_package_is_skipped_with_one_line(tmp_path, caplog, monkeypatch, where):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    ds = {"wandb": {"enabled": True}} if where == "json" else {}
    with caplog.at_level(logging.WARNING):
        ds = add_monitors(ds, ["csv", "wandb"] if where == "recipe" else ["csv"], tmp_path, "stage1")
    assert ds["wandb"]["enabled"] is False and ds["csv_monitor"]["enabled"] is True
    assert "needs the wandb package" in caplog.text and len(caplog.records) == 1


def test_the_recipe_names_only_monitors_t2t_knows():
    from typing import get_args, get_type_hints

    from t2t.config.schema import TrainConfig

    (literal,) = get_args(get_type_hints(TrainConfig)["monitors"])
    assert set(get_args(literal)) == set(MONITORS)


def test_step_clock_sums_its_phases():
    clock = StepClock()
    with clock.phase("compute_s"):
        time.sleep(0.02)
    with clock.phase("data_wait_s"):
        time.sleep(0.01)
    with clock.phase("compute_s"):
        time.sleep(0.01)
    assert clock.seconds["compute_s"] >= 0.03 and 0.01 <= clock.seconds["data_wait_s"] < 0.03
    assert clock.seconds["optimizer_s"] == clock.seconds["comm_s"] == 0.0


def test_step_clock_moves_logged_collectives_to_comm(monkeypatch):
    from deepspeed.comm.comm import comms_logger

    from deepspeed.comm import comm

    monkeypatch.setattr(comms_logger, "enabled", True)
    monkeypatch.setattr(comm.timers, "timers", {})
    clock = StepClock()
    with clock.phase("compute_s"):
        time.sleep(0.02)
        for _ in range(3):  # three collectives of 10 ms, timed as DeepSpeed's timed_op does
            comm.timers("all_gather_into_tensor").start()
            time.sleep(0.01)
            comm.timers("all_gather_into_tensor").stop()
    assert clock.seconds["comm_s"] == pytest.approx(0.03, abs=0.01)
    assert clock.seconds["compute_s"] == pytest.approx(0.02, abs=0.01)
    assert comm.timers("all_gather_into_tensor").event_timers == []  # reset: nothing grows over a long run


def test_the_peak_is_measured_without_drawing_from_the_rng_and_mfu_follows_from_it():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    peak = measure_peak_flops(torch.float32, "cpu")
    assert torch.equal(torch.rand(3), expected)  # a resumed run's restored RNG stays where the checkpoint left it
    assert peak is not None and peak > 1e9
    assert mfu(1_000_000, 1000.0, 6e9) == pytest.approx(1.0)
    assert mfu(1_000_000, 1000.0, None) is None


def test_non_embedding_parameters_leave_out_embeddings_and_head(tiny_model_dir):
    from t2t.model import load_lm

    lm = load_lm(tiny_model_dir, "float32")
    embedding = lm.get_input_embeddings().weight.numel()
    head = 0 if lm.config.tie_word_embeddings else lm.get_output_embeddings().weight.numel()
    assert non_embedding_params(lm) == sum(p.numel() for p in lm.parameters()) - embedding - head


def rows(n: int = 4, with_mfu: bool = True) -> list[dict]:
    out = []
    for step in range(1, n + 1):
        out.append(dict(step=step, loss=1.0, samples_per_s=10.0 * step, tokens_per_s=100.0 * step, step_s=1.0 / step,
                        mfu=0.1 if with_mfu else None, compute_s=0.6 / step, comm_s=0.1 / step,
                        optimizer_s=0.2 / step, data_wait_s=0.1 / step))
    return out


def test_throughput_is_over_the_steps_after_the_first():
    m = measured(rows())
    # steps 2..4 each move 10 samples: 30 samples in 1/2 + 1/3 + 1/4 s
    assert m["samples_per_s"] == pytest.approx(30 / (1 / 2 + 1 / 3 + 1 / 4))
    assert m["mfu"] == pytest.approx(0.1)
    assert m["shares"] == pytest.approx({"compute_s": 0.6, "comm_s": 0.1, "optimizer_s": 0.2, "data_wait_s": 0.1})
    assert throughput(rows())[2:] == ["0.100", "60% / 10% / 20% / 10%"]
    assert throughput(rows(with_mfu=False))[2] == "unknown"
    assert throughput([dict(step=1, loss=1.0, samples_per_s=3.0)]) == ["—"] * 4  # metrics of an older t2t


def test_plan_takes_a_measured_mfu(tmp_path, capsys):
    from t2t.cli import main

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    args = ["plan", "--config", "recipes/mistral-7b.yaml", "--nodes", "1", "--gpus-per-node", "8", "--no-eval",
            "--json"]
    assert main(args + ["--mfu-from", str(metrics)]) == 0
    assert json.loads(capsys.readouterr().out)["cluster"]["mfu"] == pytest.approx(0.1)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows(with_mfu=False)))
    assert main(args + ["--mfu-from", str(metrics)]) == 2
    assert "records no MFU" in capsys.readouterr().err


def test_local_ranks_honour_the_recipe_and_choose_one_rank_on_a_cpu(caplog):
    assert local_ranks(3) == 3
    with caplog.at_level(logging.INFO):
        assert local_ranks(0) == (torch.cuda.device_count() or 1)
    assert "automatic" in caplog.text and len(caplog.records) == 1
    with pytest.raises(UserError, match="at least 0"):
        from t2t.train.launch import launch_local

        launch_local("recipes/tiny.yaml", [], "stage1", -1, log_file=None)


def test_the_progress_eta_counts_from_the_first_step_not_the_ranks_start_up(tmp_path, monkeypatch):
    """Issue #25, 16: the launcher's bar used to time its rate (and so its ETA) from the launch, so seconds of rank
    start-up made the first steps look slow. Its clock now starts at the first step's metrics line."""
    import tqdm.auto

    from t2t.train import launch

    metrics = tmp_path / "metrics.jsonl"
    seen = []

    class Recording(tqdm.auto.tqdm):
        def refresh(self, *args, **kwargs):
            seen.append((self.n, self.format_dict["elapsed"]))
            return super().refresh(*args, **kwargs)

    ticks = iter([None, None, 1, None, 2])  # two polls of start-up, then steps 1 and 2 appear
    real_sleep = time.sleep

    def sleep(_):
        real_sleep(0.3)
        step = next(ticks, None)
        if step is not None:
            with metrics.open("a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0}) + "\n")

    class Launcher:
        polls = 0

        def poll(self):
            self.polls += 1
            return None if self.polls <= 5 else 0

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    monkeypatch.setattr(launch.time, "sleep", sleep)
    launch._follow(Launcher(), metrics, "stage1", steps=4)
    first, second = [(n, elapsed) for n, elapsed in seen if n in (1, 2)][:2]
    assert first[0] == 1 and first[1] < 0.25  # 0.9 s of start-up before it is not counted
    assert second[0] == 2 and 0.3 <= second[1] < 1.0
