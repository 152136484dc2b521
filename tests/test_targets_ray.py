"""`t2t targets` end to end on a local Ray (started once for this module): shards, ledger, resume,
worker death, the background θ map-reduce, bad corpora."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from t2t.config import Config, DataConfig, DataDrivenTargets, ModelConfig, ModelDerivedTargets, StageConfig, TargetsConfig
from t2t.data.corpus import iter_texts
from t2t.data.files import file_digest as shards_file_digest
from t2t.data.shards import decode_sample
from t2t.data.manifest import check_manifest, read_manifest
from t2t.model import from_config, load_tokenizer
from t2t.data.manifest import LOCK_FILE
from t2t.data.target_job import is_complete
from t2t.jobs.target_workers import FAULT_ENV
from t2t.jobs.targets import run_targets
from t2t.targets.data_driven import DataDrivenBuilder, idf_weights
from t2t.errors import UserError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A directory corpus: 50 Wikipedia sentences in a .txt (plus a blank line and a line of invalid
    UTF-8) and 10 more in a .jsonl.gz."""
    root = tmp_path_factory.mktemp("corpus")
    texts = [t.text for _, t in zip(range(60), iter_texts(REPO / "data/corpus/wiki_sentences_60k.txt.gz"))]
    lines = [t.encode() for t in texts[:50]]
    lines[3:3] = [b"", b"caf\xe9 au lait \xff"]
    (root / "a.txt").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts[50:])
    return root


def make_cfg(model_dir: Path, corpus: Path, shards: Path, **targets) -> Config:
    """Two stages on the same tiny model: data-driven `stage1`, and `stage2` deriving targets from the model
    itself (start: base). Keyword arguments set the `targets` job section or, by name, a kind's parameter. One Ray
    worker unless a test asks for more: each one's start (a process, torch, the model) costs seconds."""
    t = dict(shard_size=16, workers=1, batch_size=8, max_retries=2)
    kind1 = {k: targets.pop(k) for k in ("stopwords", "max_target_tokens", "weighting") if k in targets}
    kind2 = {k: targets.pop(k) for k in ("tau", "delta", "top_k") if k in targets}
    t.update(targets)
    stages = [StageConfig(name="stage1", targets=DataDrivenTargets(**kind1)),
              StageConfig(name="stage2", start="base", targets=ModelDerivedTargets(**kind2))]
    return Config(model=ModelConfig(path=str(model_dir), max_length=48),
                  data=DataConfig(corpus=str(corpus), shards_dir=str(shards)), targets=TargetsConfig(**t),
                  stages=stages)


def with_stage_targets(cfg: Config, stage: str, **params) -> Config:
    """`cfg` with some of a stage's target parameters changed."""
    stages = [dataclasses.replace(s, targets=dataclasses.replace(s.targets, **params)) if s.name == stage else s
              for s in cfg.stages]
    return dataclasses.replace(cfg, stages=stages)


@pytest.fixture(scope="module")
def clean(tiny_model_dir, corpus, tmp_path_factory) -> tuple[Config, dict, Path]:
    """One clean stage-1 run that the fault and resume tests compare against: (cfg, manifest, out dir)."""
    shards = tmp_path_factory.mktemp("clean")
    cfg = make_cfg(tiny_model_dir, corpus, shards, workers=2)
    return cfg, run_targets(cfg, "stage1"), shards / "stage1"


def read_shards(out: Path) -> dict[str, tuple]:
    """key -> (text, ids, w) over every shard the manifest lists; fails on a duplicate key."""
    manifest = read_manifest(out)
    samples = {}
    for shard in manifest["shards"]:
        rows = [decode_sample(s) for s in wds.WebDataset(str(out / shard["name"]), shardshuffle=False)]
        assert len(rows) == shard["samples"]
        for key, text, ids, w in rows:
            assert key not in samples, f"duplicate key {key}"
            samples[key] = (text, ids, w)
    assert len(samples) == manifest["samples"]
    return samples


def snapshot(out: Path) -> dict:
    """Every output file's identity; the lock file is left out (each job writes its PID and host into it)."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_ino) for p in sorted(out.iterdir())
            if p.name != LOCK_FILE}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("t2t-*.tar"))}


def test_stage1_end_to_end_rerun_and_changed_config(tiny_model_dir, corpus, clean, tmp_path):
    cfg, manifest, out = clean
    assert manifest["complete"] and read_manifest(out) == manifest
    assert [s["name"] for s in manifest["shards"]] == [f"t2t-{i:06d}.tar" for i in range(4)]
    assert [s["samples"] for s in manifest["shards"]] == [16, 16, 16, 13]
    texts = [t.text for t in iter_texts(corpus)]
    tok = load_tokenizer(tiny_model_dir)
    expected, truncated = DataDrivenBuilder(tok, cfg.stage("stage1").targets, len(tok)).targets(texts)
    assert manifest["corpus"]["counters"] == dict(read=61, skipped_empty=1, invalid_utf8=1, truncated=truncated)
    assert manifest["params"]["target"]["stopwords"] == "sklearn-english" and manifest["code_version"]

    samples = read_shards(out)
    by_text = {text: (ids, w) for text, ids, w in samples.values()}
    assert "caf\ufffd au lait \ufffd" in by_text  # undecodable bytes replaced, and counted above
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(by_text[text][0], expected[i][0])
        np.testing.assert_allclose(by_text[text][1], expected[i][1].astype(np.float32), rtol=1e-3)
    assert manifest["empty_targets"] == expected.empty_count

    before = snapshot(out)
    assert run_targets(cfg, "stage1") == manifest and snapshot(out) == before  # a finished job: nothing written
    assert is_complete(cfg, "stage1")

    copy = tmp_path / "stage1"
    shutil.copytree(out, copy)
    changed = with_stage_targets(cfg, "stage1", max_target_tokens=8)
    assert not is_complete(changed, "stage1", out=str(copy))
    with pytest.raises(UserError, match=r"max_target_tokens: 128 -> 8.*--overwrite"):
        run_targets(changed, "stage1", out=str(copy))
    assert [p.name for p in copy.iterdir()] == [p.name for p in out.iterdir()]
    redone = run_targets(changed, "stage1", out=str(copy), overwrite=True)
    assert redone["params"]["target"]["max_target_tokens"] == 8
    assert redone["corpus"]["counters"]["truncated"] > truncated
    assert is_complete(changed, "stage1", out=str(copy)) and not is_complete(cfg, "stage1", out=str(copy))


def test_up_to_date_means_every_shard_verifies(clean, tmp_path, monkeypatch):
    """Issue #25, BAD 2: a shard replaced by another of the same size is not up to date (sizes alone said it was),
    and `t2t targets` mends it. An untouched directory is checked by a stat per shard, no checksum."""
    import t2t.data.shards as shards

    cfg, manifest, out = clean
    copy = tmp_path / "stage1"
    shutil.copytree(out, copy)  # copy2 keeps each shard's modification time: still as recorded
    digests = []
    monkeypatch.setattr(shards, "file_digest", lambda path: digests.append(path) or shards_file_digest(path))
    assert is_complete(cfg, "stage1", out=str(copy)) and digests == []

    touched = copy / manifest["shards"][1]["name"]
    touched.touch()  # a new time, the same bytes: checksummed once, still up to date
    assert is_complete(cfg, "stage1", out=str(copy)) and digests == [touched]

    victim = copy / manifest["shards"][0]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # what copying a same-size shard of another job over it does to the checks
    victim.write_bytes(bytes(data))
    assert victim.stat().st_size == manifest["shards"][0]["bytes"]
    assert not is_complete(cfg, "stage1", out=str(copy))
    monkeypatch.undo()
    run_targets(cfg, "stage1", out=str(copy))  # what the pipeline's targets step then runs: the shard is redone
    assert victim.read_bytes() == (out / victim.name).read_bytes() and is_complete(cfg, "stage1", out=str(copy))


def test_failed_job_resumes_from_the_ledger(tiny_model_dir, corpus, clean, tmp_path, monkeypatch):
    """A job whose worker dies with no retries left fails; finished shards stay, and a rerun does only the rest."""
    marker = tmp_path / "died"
    monkeypatch.setenv(FAULT_ENV, f"shards:3:{marker}")
    cfg = make_cfg(tiny_model_dir, corpus, tmp_path, max_retries=0, workers=1)
    import ray

    with pytest.raises(ray.exceptions.RayError):  # the worker crashed, with no retries left
        run_targets(cfg, "stage1")
    out = tmp_path / "stage1"
    assert not read_manifest(out)["complete"] and not is_complete(cfg, "stage1")
    kept = snapshot(out)
    assert {f"t2t-{i:06d}.tar" for i in range(3)} <= set(kept) and "t2t-000003.tar" not in kept
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    monkeypatch.delenv(FAULT_ENV)
    run_targets(cfg, "stage1")
    after = snapshot(out)
    for i in range(3):
        assert after[f"t2t-{i:06d}.tar"] == kept[f"t2t-{i:06d}.tar"]  # not rewritten
    _, clean_manifest, clean_out = clean
    assert read_manifest(out)["shards"] == clean_manifest["shards"]
    assert shard_bytes(out) == shard_bytes(clean_out)


def test_idf_weighting_end_to_end(tiny_model_dir, corpus, tmp_path):
    cfg = make_cfg(tiny_model_dir, corpus, tmp_path, weighting="idf")
    manifest = run_targets(cfg, "stage1")
    assert manifest["idf"]["texts"] == 61 and manifest["params"]["target"]["weighting"] == "idf"
    texts = [t.text for t in iter_texts(corpus)]
    tok = load_tokenizer(tiny_model_dir)
    builder = DataDrivenBuilder(tok, cfg.stage("stage1").targets, len(tok))
    idf = idf_weights(*builder.document_frequency(texts))
    np.testing.assert_allclose(np.load(tmp_path / "stage1/idf.npy"), idf)
    expected, _ = builder.targets(texts, idf)
    by_text = {text: w for text, _, w in read_shards(tmp_path / "stage1").values()}
    for i, text in enumerate(texts):
        np.testing.assert_allclose(by_text[text], expected[i][1].astype(np.float32), rtol=1e-3)


def test_bad_corpora_are_named(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path / "nowhere.txt", tmp_path)
    with pytest.raises(UserError, match=r"corpus .*nowhere.txt does not exist"):
        run_targets(cfg, "stage1")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(UserError, match=r"corpus .*empty.txt holds no texts"):
        run_targets(cfg, "stage1", corpus=str(empty))
    broken = tmp_path / "broken.txt.gz"
    payload = gzip.compress("".join(f"sentence number {i} about rivers\n" for i in range(400)).encode())
    broken.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(UserError, match=r"broken.txt.gz: corrupt or truncated input after line \d+"):
        run_targets(cfg, "stage1", corpus=str(broken), out=str(tmp_path / "broken"))
    with pytest.raises(UserError, match="no corpus"):
        run_targets(dataclasses.replace(cfg, data=DataConfig()), "stage1")


def test_workers_0_computes_stage1_in_this_process_with_the_bytes_ray_workers_write(tiny_model_dir, corpus, clean,
                                                                                    tmp_path, caplog):
    _, manifest, ray_out = clean  # two Ray workers
    with caplog.at_level("INFO", logger="t2t.jobs.targets"):
        here = run_targets(make_cfg(tiny_model_dir, corpus, tmp_path, workers=0), "stage1")
    assert "targets.workers 0 (automatic): one worker in this process" in caplog.text
    assert shard_bytes(tmp_path / "stage1") == shard_bytes(ray_out) and here["shards"] == manifest["shards"]

    # A named cluster gets Ray workers (one per CPU of it: this module's Ray has 2).
    import ray

    caplog.clear()
    address = ray.get_runtime_context().gcs_address
    on_cluster = run_targets(make_cfg(tiny_model_dir, corpus, tmp_path / "cluster", workers=0), "stage1",
                             ray_address=address)
    assert "in this process" not in caplog.text
    assert shard_bytes(tmp_path / "cluster" / "stage1") == shard_bytes(ray_out) and on_cluster["samples"] == 61


def test_a_local_sweeps_step_joins_the_sweeps_ray_yet_names_no_cluster():
    """A `t2t sweep` on one machine sets LOCAL_RAY_ENV for its steps: a step that wants Ray joins that Ray, not a
    second one, while `workers: 0` still computes in the step's process."""
    import ray

    from t2t.jobs.session import LOCAL_RAY_ENV

    address = ray.get_runtime_context().gcs_address
    step = ("import ray\n"
            "from t2t.jobs.session import automatic_stays_here, cluster_address, start_or_join\n"
            "assert cluster_address(None) is None and automatic_stays_here(None, 0)\n"
            "assert start_or_join(None, None)\n"
            "print(ray.get_runtime_context().gcs_address)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", step], env={**env, LOCAL_RAY_ENV: address}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == address


def test_stage2_background_one_vs_two_workers_with_an_actor_death(tiny_model_dir, corpus, tmp_path, monkeypatch):
    one = run_targets(make_cfg(tiny_model_dir, corpus, tmp_path / "w1", workers=1), "stage2")
    marker = tmp_path / "died"
    monkeypatch.setenv(FAULT_ENV, f"background:1:{marker}")
    cfg = make_cfg(tiny_model_dir, corpus, tmp_path / "w2", workers=2)
    two = run_targets(cfg, "stage2")
    assert marker.is_file()  # an actor died in pass 1 and was restarted
    theta1 = np.load(tmp_path / "w1/stage2" / one["background"]["file"])
    theta2 = np.load(tmp_path / "w2/stage2" / two["background"]["file"])
    # Summed in chunk order, not in the order the workers finished: the same bytes for any worker count.
    np.testing.assert_array_equal(theta1, theta2)
    embedder = from_config(cfg.model)  # θ against the student's own forward, batch by batch
    texts = [t.text for t in iter_texts(corpus)]
    with torch.no_grad():
        z = np.concatenate([embedder(**embedder.tokenize(texts[i:i + 8]))[1].numpy() for i in range(0, 61, 8)])
    np.testing.assert_allclose(theta2, z.astype(np.float64).mean(0), rtol=0, atol=1e-5)
    assert two["background"]["texts"] == 61 and two["shards"] == one["shards"]
    assert read_shards(tmp_path / "w1/stage2").keys() == read_shards(tmp_path / "w2/stage2").keys()
    assert shard_bytes(tmp_path / "w1/stage2") == shard_bytes(tmp_path / "w2/stage2")
    assert two["dropped_mass"]["bound"] <= two["dropped_mass"]["delta_bound"]
    assert two["params"]["embedding"]["pooling"] == "mean" and two["params"]["target"]["tau"] == 1e-5

    # One worker in this process (`workers: 0`) computes with torch's threads, a Ray worker with one: the same
    # targets up to the last bits of the matmuls' sums, not the same bytes.
    monkeypatch.delenv(FAULT_ENV)
    here = run_targets(make_cfg(tiny_model_dir, corpus, tmp_path / "w0", workers=0), "stage2")
    np.testing.assert_allclose(np.load(tmp_path / "w0/stage2" / here["background"]["file"]), theta1, rtol=1e-5)
    ray_rows, here_rows = read_shards(tmp_path / "w1/stage2"), read_shards(tmp_path / "w0/stage2")
    assert ray_rows.keys() == here_rows.keys()
    top = [int(rows[k][1][np.argmax(rows[k][2])]) for rows in (ray_rows, here_rows) for k in sorted(rows)]
    assert top[:61] == top[61:]  # each text's heaviest target token
    check_manifest(two, cfg.model, embedder.tokenizer, where="w2")
    other = dataclasses.replace(cfg.model, pooling="last")
    with pytest.raises(UserError, match="pooling: 'mean' -> 'last'"):
        check_manifest(two, other, embedder.tokenizer, where="w2")


def test_reduce_pass_sums_in_chunk_order_whatever_order_the_workers_finish_in(tiny_model_dir, corpus, tmp_path):
    import time

    import ray

    from t2t.data.target_job import TargetJob
    from t2t.jobs.target_workers import RayPool
    from t2t.jobs.targets import reduce_pass

    p = TargetJob.resolve(make_cfg(tiny_model_dir, corpus, tmp_path), "stage1")  # 61 texts: 4 chunks of 16
    p.out.mkdir(parents=True, exist_ok=True)
    parts = [np.array([1e16]), np.array([1.0]), np.array([-1e16]), np.array([1.0])]  # a sum that depends on order

    @ray.remote(num_cpus=0)
    class ChunkZeroLast:
        def part(self, index: int):
            time.sleep(0.5 if index == 0 else 0.0)
            return index, (parts[index], 1)

    pool = RayPool([ChunkZeroLast.remote() for _ in range(4)])
    total, count = reduce_pass("test", p, pool, lambda i, keys, texts: pool.submit("part", i))
    assert count == 4 and total.tolist() == [((1e16 + 1.0) - 1e16) + 1.0]
