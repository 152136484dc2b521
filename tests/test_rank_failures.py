"""No rank outlives its own failure: a rank that raises in its data loader exits within seconds, its loader
workers with it, the other rank stops too, and the console names the failing rank's own error line, or the
exception it raised where it printed none.

Real processes: `t2t train` under torchrun as `t2t pipeline` and users start it (2 ranks of ZeRO-3 on CPU, one
loader worker each), on shards whose manifest one shard no longer matches; `launch_local` (what `t2t pipeline` runs)
of one rank on a backbone whose weights file is cut short.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from train_support import REPO, rank_env, write_recipe, write_stage_shards

pytestmark = pytest.mark.slow


def corrupt_in_place(shard: Path) -> None:
    """Change one letter of a text inside the tar: the same size and a valid tar, but another sha256."""
    data = bytearray(shard.read_bytes())
    at = data.index(b"The ") if b"The " in data else data.index(b"the ")
    data[at + 1] = ord("X")
    shard.write_bytes(bytes(data))


def descendants_alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for child in processes:
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
        except psutil.Error:
            continue
    return alive


def test_a_corrupt_shard_found_mid_stream_ends_the_job_within_seconds(tiny_model_dir, tmp_path):
    shards = write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=4, per_shard=24)
    corrupt_in_place(shards / "t2t-000002.tar")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "shards", tmp_path / "run",
                          stage1=dict(steps=40))
    text = recipe.read_text().replace("loader_workers: 0", "loader_workers: 1")
    recipe.write_text(text)

    log = tmp_path / "train.log"
    started = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "t2t.cli", "train", "--config", str(recipe), "--stage", "stage1"],
                                cwd=REPO, env=rank_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    family: list[psutil.Process] = []  # every process the run starts: torchrun, its ranks, their loader workers
    try:
        while proc.poll() is None and time.time() - started < 120:
            with contextlib.suppress(psutil.Error):
                family = list({p.pid: p for p in [*family, *psutil.Process(proc.pid).children(recursive=True)]}.values())
            time.sleep(0.2)
    finally:  # a run that hangs (as it did before this was fixed) is not left behind
        for p in ([psutil.Process(proc.pid)] if proc.poll() is None else []) + family:
            with contextlib.suppress(psutil.Error):
                p.kill()
    out = log.read_text()
    assert proc.poll() not in (None, 0) and time.time() - started < 120, f"still running after 2 min:\n{out[-4000:]}"
    lines = [ln for ln in out.splitlines() if ln.startswith("t2t train: ")]
    # the failing rank's own line: the shard and what is wrong with it; the other rank's: that it lost its peer
    assert any(ln.startswith("t2t train: error: corrupt shard ") and "t2t-000002.tar: sha256" in ln
               for ln in lines), out[-4000:]
    assert any("rank 1 lost contact with another rank" in ln for ln in lines), out[-4000:]
    time.sleep(1)
    assert descendants_alive(family) == [], "processes outlived the run"


def test_the_console_names_the_exception_a_rank_raised(tiny_model_dir, tmp_path):
    from t2t.train.launch import TrainingFailed, launch_local

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])  # an interrupted copy
    write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=2, per_shard=8)
    recipe = write_recipe(tmp_path / "r.yaml", model, tmp_path / "shards", tmp_path / "run", stage1=dict(steps=2))
    with pytest.raises(TrainingFailed) as failed:
        launch_local(str(recipe), [], stage="stage1", nproc=1, log_file=tmp_path / "train.log")
    msg = str(failed.value).splitlines()
    assert msg[0].startswith("stage1: training failed: rank 0 exited with code 1;"), msg
    # the rank's own exception (torch prefixes its traceback `[rank0]: ` in the log), without the traceback
    assert len(msg) > 1 and msg[1].startswith("rank 0: "), msg
    assert "SafetensorError: Error while deserializing" in msg[1], msg
    assert len(msg) <= 1 + 4 and not any("File " in line for line in msg), msg
