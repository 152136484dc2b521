"""The shard and manifest contract (t2t/data/shards.py): atomic writes, WebDataset round trip, checks."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from t2t.config import Config, ModelConfig, ModelDerivedTargets, StageConfig
from t2t.data.shards import decode_sample, shard_name, shard_problem, write_shard, write_shard_entry
from t2t.data.manifest import MANIFEST_FORMAT, check_manifest, read_manifest, write_manifest
from t2t.model import load_tokenizer
from t2t.errors import UserError


def sample(key: str, ids, w, text: str = "a text") -> dict:
    return {"__key__": key, "txt": text, "ids.npy": np.asarray(ids, np.int32), "w.npy": np.asarray(w, np.float16)}


SAMPLES = [sample("k0", [3, 9, 40], [0.25, 0.25, 0.5], "héllo wörld"), sample("k1", [], [], "nothing left"),
           sample("k2", [7], [1.0])]


def test_shard_round_trip_through_webdataset(tmp_path):
    path = tmp_path / shard_name(3)
    assert path.name == "t2t-000003.tar"
    assert write_shard(path, SAMPLES) == 3
    decoded = [decode_sample(s) for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert [d[0] for d in decoded] == ["k0", "k1", "k2"] and decoded[0][1] == "héllo wörld"
    for (key, text, ids, w), s in zip(decoded, SAMPLES):
        assert ids.dtype == np.int64 and w.dtype == np.float32
        np.testing.assert_array_equal(ids, s["ids.npy"])
        np.testing.assert_allclose(w, s["w.npy"].astype(np.float32))
    # The decoding WebDataset pipeline (arrays and str instead of bytes) reads the same.
    again = [decode_sample(s) for s in wds.WebDataset(str(path), shardshuffle=False).decode()]
    assert [d[0] for d in again] == ["k0", "k1", "k2"]
    first = path.read_bytes()
    write_shard(path, SAMPLES)
    assert path.read_bytes() == first  # deterministic bytes
    with tarfile.open(path) as tar:  # plain USTAR members, no 1 KiB PAX header each
        assert all(not m.pax_headers for m in tar) and len(tar.getmembers()) == 9


def test_failed_write_leaves_no_partial_shard(tmp_path):
    path = tmp_path / shard_name(0)
    write_shard(path, SAMPLES[:1])
    before = path.read_bytes()

    def broken():
        yield SAMPLES[0]
        yield SAMPLES[2]
        raise RuntimeError("worker died mid-shard")

    with pytest.raises(RuntimeError):
        write_shard(path, broken())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with pytest.raises(UserError, match="without dots"):
        write_shard(tmp_path / shard_name(1), [sample("a.b", [1], [1.0])])
    assert not (tmp_path / shard_name(1)).exists() and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("bad,message", [
    (sample("k", [5, 3], [0.5, 0.5]), "strictly increasing"),
    (sample("k", [1, 2], [0.5, 0.4]), "sum to 0.8999"),
    ({**sample("k", [1], [1.0]), "ids.npy": np.array([1], np.int64)}, "int32"),
    ({**sample("k", [1], [1.0]), "w.npy": np.array([1.0], np.float32)}, "float16"),
    ({**sample("k", [1], [1.0]), "txt": b"bytes"}, "txt must be a str"),
])
def test_invalid_samples_are_refused(tmp_path, bad, message):
    with pytest.raises(UserError, match=message):
        write_shard(tmp_path / "t.tar", [bad])


def test_decode_sample_names_the_malformed_sample(tmp_path):
    path = tmp_path / shard_name(0)
    write_shard(path, SAMPLES)
    raw = next(iter(wds.WebDataset(str(path), shardshuffle=False)))
    with pytest.raises(UserError, match=r"k0 in .*t2t-000000.tar lacks w.npy"):
        decode_sample({k: v for k, v in raw.items() if k != "w.npy"})
    with pytest.raises(UserError, match="k0.*not a valid .npy"):
        decode_sample({**raw, "ids.npy": b"garbage"})
    with pytest.raises(UserError, match="equal lengths"):
        decode_sample({**raw, "ids.npy": np.array([1, 2], np.int32)})
    with pytest.raises(UserError, match="not UTF-8"):
        decode_sample({**raw, "txt": b"\xff\xfe"})
    _, _, _, w = decode_sample({**raw, "w.npy": np.array([0.2505, 0.25, 0.5], np.float16)})
    assert w.sum() == pytest.approx(1, abs=1e-6)  # renormalised for the reader


def test_manifest_read_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"manifest.json does not exist"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match=r"manifest.json is not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT}))
    with pytest.raises(UserError, match=r"manifest.json is missing code_version"):
        read_manifest(tmp_path)


@pytest.fixture(scope="module")
def stage2_manifest(tiny_model_dir, tmp_path_factory):
    """A manifest with the params a real target job resolves for stage 2 of the tiny model."""
    from t2t.data.target_job import TargetJob

    corpus = tmp_path_factory.mktemp("corpus") / "c.txt"
    corpus.write_text("one text\n")
    stages = [StageConfig(name="derived", start="base", targets=ModelDerivedTargets())]  # the tiny model's own
    cfg = Config(model=ModelConfig(path=str(tiny_model_dir), pooling="last", max_length=64), stages=stages)
    params = TargetJob.resolve(cfg, "derived", str(corpus)).params
    return cfg, dict(format=MANIFEST_FORMAT, code_version="0", complete=True, stage="derived", params=params, shards=[],
                     samples=0)


def test_manifest_round_trip_and_check_passes(tmp_path, tiny_model_dir, stage2_manifest):
    cfg, manifest = stage2_manifest
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left behind
    check_manifest(read_manifest(tmp_path), cfg.model, load_tokenizer(tiny_model_dir), where=str(tmp_path))


def test_a_bug_inside_the_up_to_date_probe_surfaces_and_bad_input_means_not_up_to_date(tmp_path, stage2_manifest,
                                                                                      monkeypatch):
    """`is_complete` answers "recompute" for bad input (a UserError) only: UserError is not a ValueError, so a bug's
    ValueError inside the check keeps its traceback instead of silently meaning "not done"."""
    from t2t.data import target_job as J

    cfg, manifest = stage2_manifest
    write_manifest(tmp_path, manifest)
    assert not issubclass(UserError, ValueError)

    def bad_input(*args, **kwargs):
        raise UserError("the corpus does not exist")

    def bug(*args, **kwargs):
        raise ValueError("a bug in resolving the job")

    monkeypatch.setattr(J.TargetJob, "resolve", bad_input)
    assert J.is_complete(cfg, "derived", out=str(tmp_path)) is False
    monkeypatch.setattr(J.TargetJob, "resolve", bug)
    with pytest.raises(ValueError, match="a bug in resolving the job"):
        J.is_complete(cfg, "derived", out=str(tmp_path))


def test_an_up_to_date_check_reads_a_corpus_or_backbone_again_only_when_it_changed(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """`is_complete` runs at every pipeline and sweep check; the corpus and the backbone's weights (15 GB for a 7B)
    are hashed, and the tokenizer loaded for its fingerprint, once per change: a file's path, size and modification
    time stand for its contents until one changes, and `refresh` (`--verify`) reads in full. The hash itself is the
    one a full read gives."""
    import os

    from t2t.config import Config, ModelConfig, StageConfig
    from t2t.data import inputs as I
    from t2t.data.target_job import TargetJob

    corpus = tmp_path / "c.txt"
    corpus.write_text("one text\nanother text\n")
    out = tmp_path / "shards"
    out.mkdir()
    cfg = Config(model=ModelConfig(path=str(tiny_model_dir), pooling="last", max_length=64),
                 stages=[StageConfig(name="derived", start="base", targets=ModelDerivedTargets())])
    from t2t.data import tokens

    read, loaded = [], []
    real, real_load = I.hash_files, tokens.load_tokenizer
    monkeypatch.setattr(I, "hash_files", lambda files: read.append([label for label, _ in files]) or real(files))
    monkeypatch.setattr(tokens, "load_tokenizer", lambda *a: loaded.append(a) or real_load(*a))

    first = TargetJob.resolve(cfg, "derived", str(corpus), str(out), inputs="cached").params
    assert read == [["c.txt"], read[1]] and "model.safetensors" in read[1]  # corpus, then backbone with weights
    assert len(loaded) == 1  # the tokenizer's fingerprint, recorded like the hashes
    read.clear()
    assert TargetJob.resolve(cfg, "derived", str(corpus), str(out), inputs="cached").params == first and read == []
    assert len(loaded) == 1
    assert TargetJob.resolve(cfg, "derived", str(corpus), str(out), inputs="refresh").params == first and len(read) == 2
    assert len(loaded) == 2
    read.clear()
    os.utime(corpus, ns=(corpus.stat().st_atime_ns, corpus.stat().st_mtime_ns + 10**9))  # touched: read again
    assert TargetJob.resolve(cfg, "derived", str(corpus), str(out), inputs="cached").params == first
    assert read == [["c.txt"]]
    corpus.write_text("one text\nchanged text\n")
    changed = TargetJob.resolve(cfg, "derived", str(corpus), str(out), inputs="cached").params
    assert changed["corpus_sha256"] != first["corpus_sha256"]
    # A target job itself reads in full and records nothing: its directory holds only what the job writes.
    record = (out / I.INPUTS_VERIFIED).read_bytes()
    read.clear()
    TargetJob.resolve(cfg, "derived", str(corpus), str(out))
    assert len(read) == 2 and (out / I.INPUTS_VERIFIED).read_bytes() == record


def test_model_derived_targets_record_how_texts_were_cut(tiny_model_dir, stage2_manifest, tmp_path):
    """Model-derived params record the cut rule: targets made under an older one (PromptEOL's tail lost, no
    `text_cut`) differ from the job's params now, so they are not complete and are redone. Echo pooling's targets
    add its own rule (the text cut alike in both copies); other modes record the string they always have."""
    from t2t.data.target_job import TargetJob
    from t2t.data.tokens import CUT_RULE, SPAN_CUT_RULE

    cfg, manifest = stage2_manifest
    assert manifest["params"]["text_cut"] == CUT_RULE == "prompt tail kept when a text is cut"
    corpus = tmp_path / "c.txt"
    corpus.write_text("one text\n")
    echo = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pooling="echo", prompt=None))
    assert TargetJob.resolve(echo, "derived", str(corpus)).params["text_cut"] == f"{CUT_RULE}; {SPAN_CUT_RULE}"
    words = dataclasses.replace(cfg, stages=[StageConfig(name="words", start="base")])  # data-driven reads no model
    assert "text_cut" not in TargetJob.resolve(words, "words", str(corpus)).params


def test_check_manifest_lists_every_mismatch(tiny_model_dir, stage2_manifest):
    cfg, manifest = stage2_manifest
    other = dataclasses.replace(cfg.model, pooling="mean", prompt="query: {text}", attention="bidirectional",
                                max_length=32)
    tok = load_tokenizer(tiny_model_dir)
    tok.add_tokens(["newtoken"])
    with pytest.raises(UserError) as err:
        check_manifest({**manifest, "complete": False}, other, tok, where="shards/x/stage2")
    message = str(err.value)
    for part in ("shards/x/stage2", "did not finish", "tokenizer size 1000 != model tokenizer's 1001",
                 "tokenizer hash", "pooling: 'last' -> 'mean'", "prompt", "attention", "max_length"):
        assert part in message, part
    assert "vocab size" not in message  # the LM head itself is unchanged
    stage1 = {**manifest, "params": {**manifest["params"], "embedding": None, "vocab_size": 999}}
    with pytest.raises(UserError, match=r"vocab size 999 != model's 1000") as err:
        check_manifest(stage1, other, load_tokenizer(tiny_model_dir), where="s1")
    assert "pooling" not in str(err.value)  # data-driven targets do not depend on how the student pools


def test_check_manifest_without_model_config_names_it(tmp_path, tiny_model_dir, stage2_manifest):
    cfg, manifest = stage2_manifest
    with pytest.raises(UserError, match=r"config.json"):
        check_manifest(manifest, ModelConfig(path=str(tmp_path)), load_tokenizer(tiny_model_dir), where="x")
    assert Path(tiny_model_dir, "config.json").is_file()


@pytest.mark.parametrize("dtype", [np.int32, np.float16])
@pytest.mark.parametrize("length", [0, 1, 7, 128])
def test_npy_bytes_are_np_save_bytes(dtype, length):
    import io

    from t2t.data.shards import npy_bytes

    a = (np.arange(length) * 3 + 1).astype(dtype)
    buf = io.BytesIO()
    np.save(buf, a)
    assert npy_bytes(a) == buf.getvalue()


def test_shard_entry_records_size_and_sha256_and_shard_problem_checks_them(tmp_path):
    import hashlib

    samples = [{"__key__": f"k{i}", "txt": f"text {i}", "ids.npy": np.array([1, 5], dtype=np.int32),
                "w.npy": np.array([0.25, 0.75], dtype=np.float16)} for i in range(6)]
    path = tmp_path / shard_name(0)
    entry = write_shard_entry(path, samples)
    data = path.read_bytes()
    assert entry == dict(name=path.name, samples=6, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert write_shard(tmp_path / shard_name(1), samples) == 6 and (tmp_path / shard_name(1)).read_bytes() == data
    assert shard_problem(tmp_path, entry) is None
    path.write_bytes(data[:1024])
    assert shard_problem(tmp_path, entry, checksum=False) == f"1024 bytes, the manifest records {len(data)}"
    flipped = bytearray(data)
    flipped[data.index(b"text 3")] ^= 0x20
    path.write_bytes(bytes(flipped))
    assert shard_problem(tmp_path, entry, checksum=False) is None  # same size: only the checksum sees it
    assert shard_problem(tmp_path, entry).startswith("sha256 ")
    path.unlink()
    assert shard_problem(tmp_path, entry) == "missing"
