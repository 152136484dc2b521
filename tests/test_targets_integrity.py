"""One writer per shard directory, and shard contents checked against the manifest (faults issue #14,
findings 5 and 6): concurrent `t2t targets` jobs, truncated and foreign shards, the trainer's check at
open and the repair on a rerun. The Ray tests share test_targets_ray.py's local Ray and clean run."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml

from t2t.config import ModelConfig
from t2t.data.files import exclusive_lock, file_digest
from t2t.data.shards import write_shard
from t2t.data.manifest import read_manifest
from t2t.data.stream import TargetReader, open_stage_shards
from t2t.errors import UserError
from t2t.model import EmbeddingIdentity, load_tokenizer
from t2t.data.manifest import LOCK_FILE
from t2t.jobs.targets import run_targets
from t2t.targets.data_driven import DataDrivenBuilder
from test_targets_ray import clean, corpus, make_cfg, shard_bytes  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
SETTINGS = EmbeddingIdentity(pooling="mean", max_length=32)


@pytest.fixture(scope="module")
def local_ray():
    """test_targets_ray.py's local Ray, but only for the tests that ask for it (not autouse: the others
    need no Ray)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def raw_samples(path: Path) -> list[dict]:
    """The samples of a shard in `write_shard`'s input form (int32 ids, float16 weights)."""
    out = []
    for raw in wds.WebDataset(str(path), shardshuffle=False):
        out.append({"__key__": raw["__key__"], "txt": raw["txt"].decode(),
                    "ids.npy": np.load(io.BytesIO(raw["ids.npy"])), "w.npy": np.load(io.BytesIO(raw["w.npy"]))})
    return out


def copy_job(out: Path, dest: Path) -> Path:
    shutil.copytree(out, dest)
    return dest


# --------------------------------------------------------------------------- finding 5: one writer per directory


HOLD = """
import sys, time
from t2t.data.files import exclusive_lock
with exclusive_lock(sys.argv[1], "the test directory"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_refuses_a_second_holder_and_a_killed_holder_blocks_nobody(tmp_path):
    lock = tmp_path / "job.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as err:
            with exclusive_lock(lock, "the test directory"):
                pass
        message = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and "the test directory" in message
        assert "\n" not in message
    finally:
        holder.kill()  # SIGKILL: no cleanup runs
        holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the stale record is still there ...
    with exclusive_lock(lock, "the test directory"):  # ... and blocks nobody
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    with exclusive_lock(lock, "the test directory"):  # released on leaving the block
        pass


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) early:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_concurrent_jobs_on_one_directory(tiny_model_dir, corpus, clean, tmp_path):  # noqa: F811
    """Job A holds the directory; job B (other params, --overwrite, as the pipeline passes) fails at once
    naming A and touches nothing; after A is killed with SIGKILL a new job runs and gives the clean shards."""
    import ray

    _, clean_manifest, clean_out = clean
    shards = tmp_path / "shards"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir), "max_length": 48},
        "data": {"corpus": str(corpus), "shards_dir": str(shards)},
        "targets": {"shard_size": 16, "workers": 2, "batch_size": 8, "max_retries": 2},
    }))
    # Both jobs join this module's local Ray, so killing a driver leaves no Ray processes behind.
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "t2t.cli", "targets", "--config", str(recipe), "--stage", "1", "--ray-address",
           address]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    out = shards / "stage1"
    log_a = tmp_path / "a.log"
    with open(log_a, "w") as f:
        job_a = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_for(lambda: (out / "manifest.json").is_file(), job_a, log_a)  # A is under way ...
        os.kill(job_a.pid, signal.SIGSTOP)  # ... and stays there, whatever the scheduler does
        before = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        started = time.monotonic()
        job_b = subprocess.run([*cmd, "--overwrite", "--set", "stages.stage1.targets.max_target_tokens=8"], env=env,
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
        assert job_b.returncode == 2, job_b.stdout[-3000:] + job_b.stderr[-3000:]
        error = [line for line in job_b.stderr.splitlines() if "error:" in line]
        assert len(error) == 1, job_b.stderr
        assert f"pid {job_a.pid} on host {socket.gethostname()}" in error[0] and str(out) in error[0]
        assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before  # B touched nothing
        assert took < 60  # it did not wait for A (the time is B's own start-up)
    finally:
        job_a.kill()  # SIGKILL, also while stopped
        job_a.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == job_a.pid  # stale record of the dead job
    cfg = make_cfg(tiny_model_dir, corpus, shards)
    manifest = run_targets(cfg, "stage1")  # not blocked by the stale lock file; resumes or redoes A's work
    assert manifest["shards"] == clean_manifest["shards"]
    assert shard_bytes(out) == shard_bytes(clean_out)


# --------------------------------------------------------------------------- finding 6: shard contents verified


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_manifest_records_size_and_sha256_of_each_shard(clean):  # noqa: F811
    _, manifest, out = clean
    for entry in manifest["shards"]:
        size, digest = file_digest(out / entry["name"])
        assert entry["bytes"] == size and entry["sha256"] == digest
    assert read_manifest(out) == manifest


def truncate(path: Path) -> None:
    """Rewrite a shard with the first half of its samples: a cut exactly at a sample boundary."""
    samples = raw_samples(path)
    write_shard(path, samples[: len(samples) // 2])


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_shard_truncated_at_a_sample_boundary(tiny_model_dir, clean, tmp_path, caplog):  # noqa: F811
    cfg, clean_manifest, clean_out = clean
    out = copy_job(clean_out, tmp_path / "stage1")
    bad = out / "t2t-000001.tar"
    truncate(bad)
    assert len(raw_samples(bad)) == 8  # a valid tar: the reader alone cannot tell
    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(UserError, match=r"t2t-000001\.tar: \d+ bytes, the manifest records \d+"):
        open_stage_shards(out, cfg.model, tok, on_bad_shard="error")
    with caplog.at_level(logging.WARNING):
        kept = open_stage_shards(out, cfg.model, tok, on_bad_shard="skip")
    assert [Path(p).name for p in kept] == ["t2t-000000.tar", "t2t-000002.tar", "t2t-000003.tar"]
    assert "t2t-000001.tar" in caplog.text and "left out" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        manifest = run_targets(cfg, "stage1", out=str(out))
    assert "recomputing t2t-000001.tar" in caplog.text and "t2t-000000.tar" not in caplog.text
    assert bad.read_bytes() == (clean_out / bad.name).read_bytes()
    assert manifest["shards"] == clean_manifest["shards"] and read_manifest(out) == manifest
    assert open_stage_shards(out, cfg.model, tok) == [str(out / s["name"]) for s in manifest["shards"]]


def foreign_shard(path: Path, samples: list[dict], model_dir: Path, targets) -> None:
    """Write at `path` the shard a job with the tokenizer of `model_dir` makes of these samples' texts."""
    tok = load_tokenizer(model_dir)
    texts = [s["txt"] for s in samples]
    batch, _ = DataDrivenBuilder(tok, targets, len(tok)).targets(texts)
    write_shard(path, batch.samples([s["__key__"] for s in samples], texts))


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_shards_from_a_job_with_another_tokenizer(tiny_model_dir, tiny_sp_model_dir, clean,  # noqa: F811
                                                  tmp_path, caplog):
    """Shard 3 is replaced by a shard of another job (SentencePiece tokenizer, 32 texts a shard): another
    size, caught at open. Shard 2 by that tokenizer's targets of the same 16 texts: the same size (tar
    pads to 10 KiB), caught by the reader's sha256 when read. A rerun recomputes both, by sha256."""
    cfg, clean_manifest, clean_out = clean
    out = copy_job(clean_out, tmp_path / "stage1")
    foreign_shard(out / "t2t-000003.tar", raw_samples(out / "t2t-000000.tar") + raw_samples(out / "t2t-000001.tar"),
                  tiny_sp_model_dir, cfg.stage("stage1").targets)
    foreign_shard(out / "t2t-000002.tar", raw_samples(out / "t2t-000002.tar"), tiny_sp_model_dir, cfg.stage("stage1").targets)
    assert (out / "t2t-000003.tar").stat().st_size != (clean_out / "t2t-000003.tar").stat().st_size
    assert (out / "t2t-000002.tar").stat().st_size == (clean_out / "t2t-000002.tar").stat().st_size
    assert (out / "t2t-000002.tar").read_bytes() != (clean_out / "t2t-000002.tar").read_bytes()

    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(UserError, match=r"1 shard\(s\) differ from the manifest \(t2t-000003\.tar: \d+ bytes"):
        open_stage_shards(out, cfg.model, tok)
    with caplog.at_level(logging.WARNING):
        kept = open_stage_shards(out, cfg.model, tok, on_bad_shard="skip")
    assert [Path(p).name for p in kept] == ["t2t-000000.tar", "t2t-000001.tar", "t2t-000002.tar"]
    reader = TargetReader(kept, tok, SETTINGS, batch_size=8, seed=0, rank=0, world_size=1, shuffle_buffer=4)
    with pytest.raises(UserError, match=r"corrupt shard .*t2t-000002\.tar: sha256 \w+… differs from the recorded"):
        for _ in range(8):  # 48 samples: one pass over the three shards
            next(reader)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        manifest = run_targets(cfg, "stage1", out=str(out))
    assert re.search(r"recomputing t2t-000002\.tar: sha256 \w+… differs", caplog.text)
    assert re.search(r"recomputing t2t-000003\.tar: \d+ bytes, the manifest records \d+", caplog.text)
    assert "t2t-000000.tar" not in caplog.text and "t2t-000001.tar" not in caplog.text
    assert shard_bytes(out) == shard_bytes(clean_out) and manifest["shards"] == clean_manifest["shards"]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_rerun_of_a_verified_job_writes_nothing(clean):  # noqa: F811
    cfg, manifest, out = clean
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir() if p.name != LOCK_FILE}
    assert run_targets(cfg, "stage1") == manifest
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir() if p.name != LOCK_FILE} == before


def format_1(out: Path) -> None:
    """Rewrite `out`'s manifest as an older t2t wrote it: format t2t-targets/1, shards as {name, samples}."""
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format"] = "t2t-targets/1"
    manifest["shards"] = [{"name": s["name"], "samples": s["samples"]} for s in manifest["shards"]]
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_1_manifest_is_refused_saying_how_to_recompute(tiny_model_dir, tmp_path):
    from train_support import write_stage_shards

    out = write_stage_shards(tiny_model_dir, tmp_path / "stage1", n_shards=2, per_shard=4)
    cfg, tok = ModelConfig(path=str(tiny_model_dir), pooling="mean"), load_tokenizer(tiny_model_dir)
    manifest = read_manifest(out)
    del manifest["shards"][1]["sha256"]  # format 2, an entry without its checksum: nothing vouches for it either
    (out / "manifest.json").write_text(json.dumps(manifest))
    recompute = ("recompute the targets: `t2t targets --stage stage1 --config R --overwrite`, or a rerun of "
                 "`t2t pipeline`")
    with pytest.raises(UserError) as e:
        open_stage_shards(out, cfg, tok)
    assert str(e.value) == (f"{out / 'manifest.json'}: shards[1] does not record bytes, name, samples, sha256; "
                            f"{recompute}")
    format_1(out)
    with pytest.raises(UserError) as e:
        open_stage_shards(out, cfg, tok)
    assert str(e.value) == (f"{out / 'manifest.json'}: format 't2t-targets/1' is not 't2t-targets/2' (written by an "
                            f"older t2t); {recompute}")


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_format_1_job_is_recomputed_with_overwrite(clean, tmp_path):  # noqa: F811
    cfg, clean_manifest, clean_out = clean
    out = copy_job(clean_out, tmp_path / "stage1")
    format_1(out)
    with pytest.raises(UserError, match=r"already holds shards of another job \(.*format 't2t-targets/1'.*--overwrite"):
        run_targets(cfg, "stage1", out=str(out))
    assert run_targets(cfg, "stage1", out=str(out), overwrite=True)["shards"] == clean_manifest["shards"]
