"""A target job's inputs, hashed: the corpus files, and the backbone's config, tokenizer and (for a kind that
runs the model) weights, and the tokenizer's fingerprint. A job records these in its manifest; the check that a
job is up to date takes them from `inputs_verified.json` while each file's path, size and modification time are
unchanged. Torch-free."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Literal

from t2t.data.corpus import corpus_files
from t2t.data.files import hash_into, write_json_atomic

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


def hash_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over (label, size, content) of each file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    for label, path in files:
        h.update(f"{label}\0{path.stat().st_size}\0".encode())
        hash_into(h, path)
    return h.hexdigest()[:24]


INPUTS_VERIFIED = "inputs_verified.json"
"""In a target job's directory: the hash of its corpus and of its backbone's files, and its tokenizer's
fingerprint, with the path, size and modification time of each file they come from. Only the check that a job is
up to date (`is_complete`, at every pipeline and sweep run) reads and writes it: it takes a value from here while
those are unchanged, instead of reading a corpus or a 15 GB backbone again or loading the tokenizer (`t2t pipeline
--verify` reads them in full and records them anew). A target job itself always reads its inputs in full and
records nothing."""

INPUTS = Literal["read", "cached", "refresh"]
"""How `t2t.data.target_job.TargetJob.resolve` hashes the corpus and backbone and fingerprints the tokenizer:
`read` in full, recording nothing (a target job); `cached` from `INPUTS_VERIFIED` while unchanged, else in full
and recorded (the up-to-date check); `refresh` in full, recorded (the check under `--verify`)."""


def input_hash(role: str, files: list[tuple[str, Path]], out: Path | None, inputs: INPUTS) -> str:
    """`hash_files(files)`, or its record in `out`'s `INPUTS_VERIFIED` under `role` (see `INPUTS`)."""
    return recorded(role, files, out, inputs, lambda: hash_files(files))


def recorded(role: str, files: list[tuple[str, Path]], out: Path | None, inputs: INPUTS, compute: Callable[[], Any],
             code: str = "") -> Any:
    """`compute()`, a value that follows from `files` alone (and the `code` that computes it, e.g. a library's
    version), or under `cached` its record in `out`'s `INPUTS_VERIFIED` under `role` while every file's path, size
    and modification time, and `code`, are as recorded (see `INPUTS`). A computed value is recorded unless `read`."""
    if inputs == "read" or out is None:
        return compute()
    stamp = [[label, str(path.resolve()), st.st_size, st.st_mtime_ns] for label, path in files for st in [path.stat()]]
    stamp.append(["code", code])
    record_file = out / INPUTS_VERIFIED
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    entry = record.get(role)
    if inputs == "cached" and isinstance(entry, dict) and entry.get("files") == stamp and "value" in entry:
        return entry["value"]
    value = compute()
    if out.is_dir():
        try:
            write_json_atomic(record_file, {**record, role: {"files": stamp, "value": value}})
        except OSError:
            pass  # a directory that cannot be written keeps computing
    return value


def corpus_hash(corpus: Path, out: Path | None = None, inputs: INPUTS = "read") -> tuple[str, list[dict]]:
    """(hash of the corpus files' names and contents, [{name, bytes}]); `out` and `inputs`: see `input_hash`."""
    files = corpus_files(corpus)
    labelled = [(f.name if corpus.is_file() else str(f.relative_to(corpus)), f) for f in files]
    return input_hash("corpus", labelled, out, inputs), [{"name": label, "bytes": f.stat().st_size}
                                                          for label, f in labelled]


def backbone_revision(model_dir: Path, with_weights: bool, out: Path | None = None,
                      inputs: INPUTS = "read") -> tuple[str, str]:
    """(hash of the backbone's files, what it covers). Targets from the tokenizer depend only on config and
    tokenizer; targets the model derives on the weights too (for a 7B model that is ~15 GB read, so a check
    takes it from `out`'s record while the files are unchanged: `input_hash`)."""
    files = config_and_tokenizer_files(model_dir)
    if with_weights:
        files += [(f.name, f) for f in sorted(model_dir.iterdir()) if f.name.endswith(WEIGHT_SUFFIXES)]
    covers = "config, tokenizer" + (", weights" if with_weights else "")
    return input_hash("backbone", files, out, inputs), covers


def tokenizer_record(model_dir: Path, padding_side: str, out: Path | None = None, inputs: INPUTS = "read") -> dict:
    """{fingerprint, vocab_size, name} of the backbone's tokenizer (`t2t.data.tokens.tokenizer_fingerprint`, its
    length, where it loaded from). Loading it imports transformers (2-4 s of CPU), so an up-to-date check takes
    it from `out`'s record while the tokenizer files, the config and the transformers version are unchanged."""
    from importlib.metadata import version

    def load() -> dict:
        from t2t.data.tokens import load_tokenizer, tokenizer_fingerprint

        tokenizer = load_tokenizer(model_dir, padding_side)
        return dict(fingerprint=tokenizer_fingerprint(tokenizer), vocab_size=len(tokenizer),
                    name=str(getattr(tokenizer, "name_or_path", model_dir)))

    return recorded("tokenizer", config_and_tokenizer_files(model_dir), out, inputs, load,
                    code=f"transformers {version('transformers')}")


def config_and_tokenizer_files(model_dir: Path) -> list[tuple[str, Path]]:
    """(name, path) of the backbone's config.json and tokenizer files that are there."""
    names = ["config.json", *TOKENIZER_FILES]
    return [(n, model_dir / n) for n in names if (model_dir / n).is_file()]
