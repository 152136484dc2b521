"""WebDataset target shards and their manifest: the contract between `t2t targets` and the trainer.

A shard directory (`<data.shards_dir>/stageN`) holds `t2t-000000.tar`, `t2t-000001.tar`, ...
and `manifest.json`. Each sample has
- `__key__`: the corpus key (no dots: WebDataset splits member names on them),
- `txt`: the text (UTF-8),
- `ids.npy`: int32 token ids, strictly increasing,
- `w.npy`: float16 weights, one per id, summing to 1 ± 1e-3 (both empty for an empty target).

`manifest.json` (written atomically; `complete` turns true only when every shard is there):

    format          "t2t-targets/2" ("t2t-targets/1": the same without shard sizes and checksums)
    code_version    t2t.__version__ of the writer
    complete        false while the job runs, true at the end
    stage           1 (data-driven) or 2 (model-derived)
    params          everything that decides the targets; a rerun with other params recomputes:
      target          kind + all its parameters: stage 1 {kind: data-driven, stopwords, stopwords_sha256,
                      max_target_tokens, weighting}; stage 2 {kind: model-derived, tau, delta, top_k, epsilon}
      tokenizer       {fingerprint (t2t.model.tokenizer_fingerprint), vocab_size (len(tokenizer))}
      vocab_size      rows of the LM head (config.json vocab_size): every id is below it
      backbone_revision  hash of the backbone's files (stage 2: weights included)
      embedding       stage 2: {pooling, prompt, attention, max_length, padding_side, dtype}; stage 1: null
      corpus_sha256   hash of the corpus files' names and contents
      max_texts       the cap on texts read in effect (data.max_texts, or data.stage2_max_texts for stage 2; 0 = all)
      shard_size      samples per shard
    tokenizer_name  where the tokenizer was loaded from
    backbone        {path, revision_covers}
    corpus          {path, files: [{name, bytes}], counters: {read, skipped_empty, invalid_utf8, truncated}}
    background      stage 2: {file, sha256, texts} of the background logits θ (float64 .npy); else null
    idf             stage 1 with weighting=idf: {file, sha256, texts}; else null
    dropped_mass    stage 2: {bound, delta_bound, mean, texts_cut_by_top_k}; else null
    shards          [{name, samples, bytes, sha256}] in index order: each shard's sample count, byte size
                    and sha256, recorded by the worker that wrote it. The trainer checks every shard's size
                    when it opens the directory (`shard_problem(..., checksum=False)`); a rerun of
                    `t2t targets` checks sizes and sha256 and recomputes the shards that fail.
    samples         total samples; empty_targets: how many have no target ids

Readers: `read_manifest(dir)`, then `check_manifest(manifest, cfg.model, tokenizer, where=dir)`
before training, and `decode_sample(sample)` on each raw sample from `webdataset.WebDataset`.
Only one `t2t targets` job writes a directory at a time: it holds an exclusive lock on
`targets.lock` inside it (see `t2t.precompute`).
"""

from __future__ import annotations

import functools
import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from t2t.data.files import file_digest

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "t2t-targets/2"
LEGACY_FORMATS = ("t2t-targets/1",)
"""Older formats still read: their shard entries carry no size or checksum, so nothing vouches for the files."""
SHARD_PATTERN = "t2t-%06d.tar"
WEIGHT_SUM_TOLERANCE = 1e-3
_REQUIRED = ("format", "code_version", "complete", "stage", "params", "shards", "samples")


def shard_name(index: int) -> str:
    """File name of shard `index`: `t2t-000042.tar`."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return SHARD_PATTERN % index


def shard_paths(shard_dir: str | Path, manifest: dict) -> list[Path]:
    """The shard files a manifest lists, in index order (for `webdataset.WebDataset`)."""
    return [Path(shard_dir) / s["name"] for s in manifest["shards"]]


def _tmp_name(path: Path) -> Path:
    # `*.tmp*` is git-ignored and never matches the `t2t-*.tar` shard pattern.
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def _check_sample(s: dict, where: str) -> None:
    key = s.get("__key__")
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise ValueError(f"{where}: sample key {key!r} must be a non-empty string without dots or slashes")
    if not isinstance(s.get("txt"), str):
        raise ValueError(f"{where}: sample {key}: txt must be a str")
    ids, w = s.get("ids.npy"), s.get("w.npy")
    if not isinstance(ids, np.ndarray) or ids.dtype != np.int32 or ids.ndim != 1:
        raise ValueError(f"{where}: sample {key}: ids.npy must be a 1-D int32 array")
    if not isinstance(w, np.ndarray) or w.dtype != np.float16 or w.shape != ids.shape:
        raise ValueError(f"{where}: sample {key}: w.npy must be a float16 array shaped like ids.npy")
    _check_target(ids, w, f"{where}: sample {key}")


def _check_target(ids: np.ndarray, w: np.ndarray, where: str) -> None:
    if not ids.size:
        return
    if ids.size > 1 and np.any(ids[1:] <= ids[:-1]):
        raise ValueError(f"{where}: ids are not strictly increasing")
    if ids[0] < 0:
        raise ValueError(f"{where}: negative token id {int(ids[0])}")
    total = float(w.sum(dtype=np.float64))
    if not abs(total - 1.0) <= WEIGHT_SUM_TOLERANCE:  # also catches nan and inf
        raise ValueError(f"{where}: weights sum to {total:.6f}, not 1 ± {WEIGHT_SUM_TOLERANCE}")
    if w.min() < 0:
        raise ValueError(f"{where}: weights must be non-negative")


@functools.lru_cache(maxsize=4096)
def _npy_header(descr: str, length: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": (length,)})
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    """`np.save`'s bytes for a 1-D array, with the header cached per (dtype, length).

    Encoding two small arrays per sample through `np.save` was half the cost of writing a stage-1
    shard (bench/BENCHMARKS.md); the bytes are identical, so readers see no difference.
    """
    return _npy_header(a.dtype.str, a.shape[0]) + a.tobytes()


def write_shard(path: str | Path, samples: Iterable[dict]) -> int:
    """Write `samples` as one WebDataset tar at `path`, atomically; returns the sample count.

    The tar is written under a temporary name and renamed when complete, so a crash never
    leaves a partial shard under a real shard name.
    """
    return write_shard_entry(path, samples)["samples"]


def write_shard_entry(path: str | Path, samples: Iterable[dict]) -> dict:
    """`write_shard`, returning the shard's manifest entry {name, samples, bytes, sha256}.

    Size and sha256 are taken from the written file before the rename (it is still in the page cache).
    """
    import webdataset as wds

    path = Path(path)
    tmp = _tmp_name(path)
    count = 0
    try:
        with open(tmp, "wb") as f:
            # A fixed integer mtime: the same samples give byte-identical shards, and no PAX header
            # (a float mtime adds one, 1 KiB per member).
            with wds.TarWriter(f, mtime=0) as writer:
                for s in samples:
                    _check_sample(s, str(path))
                    writer.write({"__key__": s["__key__"], "txt": s["txt"], "ids.npy": npy_bytes(s["ids.npy"]),
                                  "w.npy": npy_bytes(s["w.npy"])})
                    count += 1
            f.flush()
            os.fsync(f.fileno())
        size, digest = file_digest(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return dict(name=path.name, samples=count, bytes=size, sha256=digest)


def shard_problem(shard_dir: str | Path, entry: dict, checksum: bool = True) -> str | None:
    """How the shard a manifest (or ledger) entry describes differs from it, or None if it matches.

    Checks that the file is there and has the recorded byte size, and with `checksum` also its
    sha256 (which reads the whole file). An entry without a recorded size or checksum (format
    t2t-targets/1) cannot be vouched for: that is a problem too, worded so. Callers name the shard.
    """
    path = Path(shard_dir) / entry["name"]
    if not path.is_file():
        return "missing"
    if "bytes" not in entry or (checksum and "sha256" not in entry):
        return "no size or checksum recorded (written by an older t2t)"
    size = path.stat().st_size
    if checksum:
        size, digest = file_digest(path)
    if size != entry["bytes"]:
        return f"{size} bytes, the manifest records {entry['bytes']}"
    if checksum and digest != entry["sha256"]:
        return f"sha256 {digest[:16]}… differs from the recorded {entry['sha256'][:16]}…"
    return None


def write_json_atomic(path: str | Path, obj: dict) -> None:
    """Write JSON to a temporary name, then rename over `path`."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(shard_dir: str | Path, manifest: dict) -> None:
    """Write `<shard_dir>/manifest.json` atomically."""
    missing = [k for k in _REQUIRED if k not in manifest]
    assert not missing, f"manifest lacks {missing}"
    write_json_atomic(Path(shard_dir) / MANIFEST, manifest)


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a shard directory; a ValueError names the file when it is missing or invalid."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} does not exist: not a t2t shard directory (run `t2t targets` first)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"{path} is missing {', '.join(missing)}")
    if manifest["format"] != MANIFEST_FORMAT and manifest["format"] not in LEGACY_FORMATS:
        raise ValueError(f"{path}: format {manifest['format']!r} is not {MANIFEST_FORMAT!r}")
    return manifest


def model_vocab_size(model_dir: str | Path) -> int:
    """Rows of the LM head, from the model directory's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the model's vocabulary size from {path}: {e}") from None
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    if not isinstance(size, int):
        raise ValueError(f"{path} has no integer vocab_size")
    return size


def check_manifest(manifest: dict, model_cfg, tokenizer, where: str) -> None:
    """Raise a ValueError naming `where` and every way these targets do not fit this model.

    Checked: the job finished; vocab size and tokenizer hash; for model-derived (stage 2)
    targets also pooling, prompt, attention mode and max length, which must match how the
    student embeds (the targets were computed with the same settings).
    """
    from t2t.model import tokenizer_fingerprint

    params = manifest["params"]
    problems = []
    if not manifest.get("complete"):
        problems.append("the precompute that wrote it did not finish (complete=false); rerun `t2t targets`")
    model_vocab = model_vocab_size(model_cfg.path)
    if params["vocab_size"] != model_vocab:
        problems.append(f"vocab size {params['vocab_size']} != model's {model_vocab} ({model_cfg.path})")
    if params["tokenizer"]["vocab_size"] != len(tokenizer):
        problems.append(f"tokenizer size {params['tokenizer']['vocab_size']} != model tokenizer's {len(tokenizer)}")
    fingerprint = tokenizer_fingerprint(tokenizer)
    if params["tokenizer"]["fingerprint"] != fingerprint:
        problems.append(f"tokenizer hash {params['tokenizer']['fingerprint']} != model tokenizer's {fingerprint}")
    if params.get("embedding") is not None:
        emb = params["embedding"]
        wanted = dict(pooling=model_cfg.pooling, prompt=model_cfg.template, attention=model_cfg.attention,
                      max_length=model_cfg.max_length)
        for key, value in wanted.items():
            if emb.get(key) != value:
                problems.append(f"{key} {emb.get(key)!r} != model config's {value!r}")
    if problems:
        raise ValueError(f"shards in {where} do not match the model: " + "; ".join(problems))


def _as_array(value, key: str, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return np.lib.format.read_array(io.BytesIO(bytes(value)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"sample {key}: {name} is not a valid .npy ({e})") from None
    raise ValueError(f"sample {key}: {name} must be .npy bytes or an array, got {type(value).__name__}")


def decode_sample(sample: dict) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(key, text, ids int64, w float32 renormalised to sum 1) from a raw or decoded WebDataset sample.

    Raises a ValueError naming the sample (and its shard, when WebDataset recorded it) if it is malformed.
    """
    key = sample.get("__key__", "?")
    where = f"{key}" + (f" in {sample['__url__']}" if "__url__" in sample else "")
    missing = [k for k in ("txt", "ids.npy", "w.npy") if k not in sample]
    if missing:
        raise ValueError(f"sample {where} lacks {', '.join(missing)}")
    text = sample["txt"]
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"sample {where}: txt is not UTF-8") from None
    ids = _as_array(sample["ids.npy"], where, "ids.npy")
    w = _as_array(sample["w.npy"], where, "w.npy")
    if ids.ndim != 1 or w.shape != ids.shape or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"sample {where}: ids.npy and w.npy must be 1-D, integer ids, equal lengths")
    _check_target(ids, w, f"sample {where}")
    w32 = w.astype(np.float32)
    if w32.size:
        w32 /= w32.sum(dtype=np.float64)
    return str(key), text, ids.astype(np.int64), w32
