"""The streaming reader: collation, split by rank and worker, seeded order, exact resume, bad shards, manifest."""

from __future__ import annotations

import time

import json
import logging
from pathlib import Path

import pytest
import torch
import webdataset as wds

from t2t.config import ModelConfig
from t2t.data.shards import decode_sample
from t2t.data.stream import TargetReader, expand_shards, open_stage_shards
from t2t.errors import UserError
from t2t.model import EmbeddingIdentity, load_tokenizer
from train_support import write_stage_shards

SETTINGS = EmbeddingIdentity(pooling="mean", max_length=32)


@pytest.fixture(scope="module")
def shard_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return write_stage_shards(tiny_model_dir, tmp_path_factory.mktemp("stream") / "stage1", n_shards=4, per_shard=24)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def all_samples(shard_dir) -> dict:
    out = {}
    for path in sorted(shard_dir.glob("t2t-*.tar")):
        for raw in wds.WebDataset(str(path), shardshuffle=False):
            key, text, ids, w = decode_sample(raw)
            out[key] = (text, ids, w)
    return out


def reader(shard_dir, tokenizer, **kw) -> TargetReader:
    args = dict(batch_size=6, seed=0, rank=0, world_size=1, workers=0, shuffle_buffer=16)
    args.update(kw)
    return TargetReader(sorted(str(p) for p in shard_dir.glob("t2t-*.tar")), tokenizer, SETTINGS, **args)


def take(r: TargetReader, n: int) -> list[dict]:
    return [next(r) for _ in range(n)]


def test_batches_hold_padded_sparse_targets(shard_dir, tokenizer, all_samples):
    batch = next(reader(shard_dir, tokenizer, batch_size=8))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 8
    ids, w, mask = batch["target_ids"], batch["target_w"], batch["target_mask"]
    assert ids.shape == w.shape == mask.shape and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape[1] == max(len(all_samples[k][1]) for k in batch["keys"])
    for row, key in enumerate(batch["keys"]):
        _, want_ids, want_w = all_samples[key]
        n = len(want_ids)
        assert mask[row].sum() == n and torch.equal(ids[row, :n], torch.from_numpy(want_ids))
        torch.testing.assert_close(w[row, :n], torch.from_numpy(want_w))
        assert w[row, n:].abs().sum() == 0
        if n:
            assert w[row].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_ranks_read_disjoint_shards_covering_each_epoch(shard_dir, tokenizer, all_samples):
    per_rank = [[k for b in take(reader(shard_dir, tokenizer, rank=r, world_size=2), 8) for k in b["keys"]]
                for r in range(2)]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == set(all_samples)


def test_order_is_seeded(shard_dir, tokenizer):
    keys = lambda **kw: [k for b in take(reader(shard_dir, tokenizer, **kw), 4) for k in b["keys"]]  # noqa: E731
    assert keys(seed=3) == keys(seed=3)
    assert keys(seed=3) != keys(seed=4)


@pytest.mark.parametrize("workers,length_group", [(0, 1), (2, 1), (0, 3), (2, 3)])
def test_resume_gives_the_batches_an_uninterrupted_reader_gives(shard_dir, tokenizer, workers, length_group):
    # batch 10 over 48 samples per unit and epoch: the resumed part crosses an epoch boundary; with groups of 3
    # batches the stop after 5 falls inside a group (and, with 2 workers, inside each worker's group).
    kw = dict(batch_size=10, workers=workers, length_group=length_group)
    first = reader(shard_dir, tokenizer, **kw)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    expected = take(first, 9)
    first.close()
    resumed = reader(shard_dir, tokenizer, state=state, **kw)
    got = take(resumed, 9)
    resumed.close()
    for a, b in zip(expected, got):
        assert a["keys"] == b["keys"]
        for name in ("input_ids", "attention_mask", "target_ids", "target_w", "target_mask"):
            assert torch.equal(a[name], b[name])
    assert first.state_dict() == resumed.state_dict()


def test_changed_layout_restarts_at_a_new_epoch(shard_dir, tokenizer, caplog):
    first = reader(shard_dir, tokenizer, rank=0, world_size=2)
    take(first, 3)
    with caplog.at_level(logging.WARNING):
        resumed = reader(shard_dir, tokenizer, state=first.state_dict(), world_size=1)
    assert "not sample-exact" in caplog.text
    assert resumed.state_dict()["positions"] == [[1, 0, 0]]


def test_length_groups_hold_the_same_texts_with_less_padding(shard_dir, tokenizer, all_samples):
    def first_group(length_group: int) -> list[dict]:
        return take(reader(shard_dir, tokenizer, batch_size=6, length_group=length_group), 4)

    def padding(batches: list[dict]) -> int:
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    plain, grouped = first_group(1), first_group(4)
    assert sorted(k for b in grouped for k in b["keys"]) == sorted(k for b in plain for k in b["keys"])
    assert all(len(b["keys"]) == 6 for b in grouped)
    assert padding(grouped) < padding(plain)
    spans = sorted((min(lengths), max(lengths)) for b in grouped
                   for lengths in [[len(all_samples[k][0]) for k in b["keys"]]])
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))  # each batch a run of the sorted group
    assert [b["keys"] for b in first_group(4)] == [b["keys"] for b in grouped]  # seeded: the same batches again


def test_too_few_shards_for_the_ranks_is_a_clear_error(shard_dir, tokenizer):
    with pytest.raises(UserError, match="cannot feed 3 rank"):
        reader(shard_dir, tokenizer, world_size=3, workers=2)


def corrupt_copy(shard_dir: Path, tmp_path: Path) -> list[str]:
    paths = []
    for p in sorted(shard_dir.glob("t2t-*.tar")):
        q = tmp_path / p.name
        data = p.read_bytes()
        q.write_bytes(data[:1300] if p.name.endswith("01.tar") else data)  # a truncated shard
        paths.append(str(q))
    return paths


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_shard_stops_the_reader_by_default(shard_dir, tokenizer, tmp_path, workers):
    """The same one-line error from a loader worker as from the rank itself; closing leaves no worker behind
    (they ignore SIGTERM, see `_ignore_stop_signals`)."""
    r = TargetReader(corrupt_copy(shard_dir, tmp_path), tokenizer, SETTINGS, batch_size=8, seed=0, rank=0,
                     world_size=1, shuffle_buffer=4, workers=workers)
    with pytest.raises(UserError, match="^corrupt shard .*t2t-000001.tar: .*on_bad_shard=skip to skip it\\)$"):
        take(r, 12)
    processes = list(getattr(r._iter, "_workers", []))
    assert len(processes) == workers
    r.close()
    assert not any(p.is_alive() for p in processes)


@pytest.mark.parametrize("workers", [0, 1])
def test_any_other_loader_exception_reaches_the_rank_at_once_with_its_traceback(shard_dir, tokenizer, monkeypatch,
                                                                                workers):
    """Issue #25: a loader that fails for a reason that is not a bad shard (a bug) raises in the rank on the next
    batch, named, and closing leaves no loader worker behind; the rank then exits (tests/test_rank_failures.py)."""
    import t2t.data.stream as stream

    def broken(raw):
        raise RuntimeError("a bug in decoding")

    monkeypatch.setattr(stream, "decode_sample", broken)  # before the reader starts: its worker inherits it
    r = reader(shard_dir, tokenizer, workers=workers)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a bug in decoding"):
        take(r, 2)
    assert time.monotonic() - started < 10
    processes = list(getattr(r._iter, "_workers", []))
    assert len(processes) == workers
    r.close()
    assert not any(p.is_alive() for p in processes)


def test_bad_shard_is_skipped_counted_and_logged(shard_dir, tokenizer, tmp_path, all_samples, caplog):
    r = TargetReader(corrupt_copy(shard_dir, tmp_path), tokenizer, SETTINGS, batch_size=8, seed=0, rank=0,
                     world_size=1, shuffle_buffer=4, on_bad_shard="skip")
    with caplog.at_level(logging.WARNING):
        keys = [k for b in take(r, 12) for k in b["keys"]]  # 96 samples: more than one epoch of the rest
    assert [Path(s).name for s in r.state_dict()["skipped"]] == ["t2t-000001.tar"]
    assert "skipping corrupt shard" in caplog.text
    assert len(set(keys)) < len(all_samples)


def test_manifest_is_checked_against_the_model(shard_dir, tiny_model_dir, tokenizer, tmp_path):
    model_cfg = ModelConfig(path=str(tiny_model_dir), pooling="mean")
    assert [Path(p).name for p in open_stage_shards(shard_dir, model_cfg, tokenizer)] == \
        [f"t2t-{i:06d}.tar" for i in range(4)]
    bad = tmp_path / "stage1"
    bad.mkdir()
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    manifest["params"]["tokenizer"]["fingerprint"] = "0" * 16
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"{bad}.*tokenizer hash"):
        open_stage_shards(bad, model_cfg, tokenizer)


def test_missing_shard_files_follow_the_bad_shard_policy(shard_dir, tiny_model_dir, tokenizer, tmp_path):
    model_cfg = ModelConfig(path=str(tiny_model_dir), pooling="mean")
    partial = tmp_path / "stage1"
    partial.mkdir()
    (partial / "manifest.json").write_text((shard_dir / "manifest.json").read_text())
    (partial / "t2t-000000.tar").write_bytes((shard_dir / "t2t-000000.tar").read_bytes())
    with pytest.raises(UserError, match="3 shard.*missing"):
        open_stage_shards(partial, model_cfg, tokenizer)
    assert len(open_stage_shards(partial, model_cfg, tokenizer, on_bad_shard="skip")) == 4


def test_shard_patterns_expand():
    assert expand_shards("d/t2t-{000000..000002}.tar") == [f"d/t2t-{i:06d}.tar" for i in range(3)]
    with pytest.raises(UserError, match="no shards"):
        expand_shards([])


def test_shard_of_another_size_follows_the_bad_shard_policy(shard_dir, tiny_model_dir, tokenizer, tmp_path, caplog):
    """A shard cut at a sample boundary is a valid tar; only the manifest's recorded size gives it away."""
    import io

    import numpy as np

    from t2t.data.shards import write_shard

    model_cfg = ModelConfig(path=str(tiny_model_dir), pooling="mean")
    copy = copy_dir(shard_dir, tmp_path / "stage1")
    rows = [{"__key__": r["__key__"], "txt": r["txt"].decode(), "ids.npy": np.load(io.BytesIO(r["ids.npy"])),
             "w.npy": np.load(io.BytesIO(r["w.npy"]))} for r in wds.WebDataset(str(copy / "t2t-000002.tar"),
                                                                              shardshuffle=False)]
    write_shard(copy / "t2t-000002.tar", rows[:12])
    with pytest.raises(UserError, match=r"t2t-000002\.tar: \d+ bytes, the manifest records \d+.*rerun `t2t targets`"):
        open_stage_shards(copy, model_cfg, tokenizer)
    with caplog.at_level(logging.WARNING):
        kept = open_stage_shards(copy, model_cfg, tokenizer, on_bad_shard="skip")
    assert [Path(p).name for p in kept] == ["t2t-000000.tar", "t2t-000001.tar", "t2t-000003.tar"]
    assert "t2t-000002.tar" in caplog.text and "left out" in caplog.text


def copy_dir(shard_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in shard_dir.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_shard_altered_at_the_same_size_is_caught_as_it_is_read(shard_dir, tiny_model_dir, tokenizer, tmp_path,
                                                                 caplog):
    """Tar pads to 10 KiB records, so the size check at open misses this; the reader's running sha256 does not."""
    model_cfg = ModelConfig(path=str(tiny_model_dir), pooling="mean")
    copy = copy_dir(shard_dir, tmp_path / "stage1")
    data = bytearray((copy / "t2t-000001.tar").read_bytes())
    first = next(iter(wds.WebDataset(str(copy / "t2t-000001.tar"), shardshuffle=False)))["txt"]
    data[data.index(first)] ^= 0x20  # the case of one letter
    (copy / "t2t-000001.tar").write_bytes(bytes(data))
    urls = open_stage_shards(copy, model_cfg, tokenizer)  # same size: passes the open check
    assert len(urls) == 4
    r = TargetReader(urls, tokenizer, SETTINGS, batch_size=8, seed=0, rank=0, world_size=1, shuffle_buffer=4)
    with pytest.raises(UserError, match=r"corrupt shard .*t2t-000001\.tar: sha256 \w+… differs from the recorded"):
        take(r, 12)
    r = TargetReader(urls, tokenizer, SETTINGS, batch_size=8, seed=0, rank=0, world_size=1, shuffle_buffer=4,
                     on_bad_shard="skip")
    with caplog.at_level(logging.WARNING):
        take(r, 12)
    assert [Path(s).name for s in r.state_dict()["skipped"]] == ["t2t-000001.tar"]
    assert "sha256" in caplog.text


def test_sample_count_is_checked_as_a_shard_is_read(shard_dir, tiny_model_dir, tokenizer, tmp_path):
    """A manifest that records another sample count for a shard of the recorded size and sha256 (the count alone
    edited): the difference shows at the shard's end."""
    copy = copy_dir(shard_dir, tmp_path / "stage1")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][3]["samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    urls = open_stage_shards(copy, ModelConfig(path=str(tiny_model_dir), pooling="mean"), tokenizer)
    r = TargetReader(urls, tokenizer, SETTINGS, batch_size=8, seed=0, rank=0, world_size=1, shuffle_buffer=4)
    with pytest.raises(UserError, match=r"corrupt shard .*t2t-000003\.tar: 24 samples, the manifest records 25"):
        take(r, 12)
