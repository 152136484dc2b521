"""WebDataset target shards and their manifest: the contract between `t2t targets` and the trainer.

A shard directory (`<data.shards_dir>/<stage>`) holds `t2t-000000.tar`, `t2t-000001.tar`, ...
and `manifest.json`. Each sample has
- `__key__`: the corpus key (no dots: WebDataset splits member names on them),
- `txt`: the text (UTF-8),
- `ids.npy`: int32 token ids, strictly increasing,
- `w.npy`: float16 weights, one per id, summing to 1 ± 1e-3 (both empty for an empty target).

Their `manifest.json` (format, provenance, every shard's size and sha256) is owned by
`t2t.data.manifest`. Readers: `decode_sample(sample)` on each raw sample from
`webdataset.WebDataset`; writers: `write_shard_entry` (a target worker per chunk).
"""

from __future__ import annotations

import functools
import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from t2t.data.files import atomic_path, file_digest, write_json_atomic
from t2t.errors import UserError

SHARD_PATTERN = "t2t-%06d.tar"
WEIGHT_SUM_TOLERANCE = 1e-3


def shard_name(index: int) -> str:
    """File name of shard `index`: `t2t-000042.tar`."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return SHARD_PATTERN % index


def shard_paths(shard_dir: str | Path, manifest: dict) -> list[Path]:
    """The shard files a manifest lists, in index order (for `webdataset.WebDataset`)."""
    return [Path(shard_dir) / s["name"] for s in manifest["shards"]]


def _check_sample(s: dict, where: str) -> None:
    key = s.get("__key__")
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise UserError(f"{where}: sample key {key!r} must be a non-empty string without dots or slashes")
    if not isinstance(s.get("txt"), str):
        raise UserError(f"{where}: sample {key}: txt must be a str")
    ids, w = s.get("ids.npy"), s.get("w.npy")
    if not isinstance(ids, np.ndarray) or ids.dtype != np.int32 or ids.ndim != 1:
        raise UserError(f"{where}: sample {key}: ids.npy must be a 1-D int32 array")
    if not isinstance(w, np.ndarray) or w.dtype != np.float16 or w.shape != ids.shape:
        raise UserError(f"{where}: sample {key}: w.npy must be a float16 array shaped like ids.npy")
    _check_target(ids, w, f"{where}: sample {key}")


def _check_target(ids: np.ndarray, w: np.ndarray, where: str) -> None:
    if not ids.size:
        return
    if ids.size > 1 and np.any(ids[1:] <= ids[:-1]):
        raise UserError(f"{where}: ids are not strictly increasing")
    if ids[0] < 0:
        raise UserError(f"{where}: negative token id {int(ids[0])}")
    total = float(w.sum(dtype=np.float64))
    if not abs(total - 1.0) <= WEIGHT_SUM_TOLERANCE:  # also catches nan and inf
        raise UserError(f"{where}: weights sum to {total:.6f}, not 1 ± {WEIGHT_SUM_TOLERANCE}")
    if w.min() < 0:
        raise UserError(f"{where}: weights must be non-negative")


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
    count = 0
    with atomic_path(path) as tmp:  # `*.tmp*`: git-ignored, never a `t2t-*.tar` name
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
    return dict(name=path.name, samples=count, bytes=size, sha256=digest)


def shard_problem(shard_dir: str | Path, entry: dict, checksum: bool = True) -> str | None:
    """How the shard a manifest (or ledger) entry describes differs from it, or None if it matches.

    Checks that the file is there and has the recorded byte size, and with `checksum` also its
    sha256 (which reads the whole file). Callers name the shard.
    """
    path = Path(shard_dir) / entry["name"]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if checksum:
        size, digest = file_digest(path)
    if size != entry["bytes"]:
        return f"{size} bytes, the manifest records {entry['bytes']}"
    if checksum and digest != entry["sha256"]:
        return f"sha256 {digest[:16]}… differs from the recorded {entry['sha256'][:16]}…"
    return None


VERIFIED = "verified.json"
"""Next to the manifest: each shard's size and modification time when its sha256 last matched the manifest.
A stat cache, as git's index is, not part of the contract: without it every shard is checksummed once more."""


def verified_problems(shard_dir: str | Path, entries: list[dict], verify: bool = False) -> dict[str, str]:
    """`shard_problem` of every manifest entry, by name, for a check that runs often (is a stage's target job
    up to date?): a shard whose size and modification time are those `VERIFIED` records costs a stat; any other
    (copied over, touched, rewritten) is checksummed, and recorded when it matches. A same-size file from another
    job is caught so: copying it gave it a new time. `verify` checksums every shard."""
    shard_dir = Path(shard_dir)
    try:
        seen = json.loads((shard_dir / VERIFIED).read_text())
    except (OSError, ValueError):
        seen = {}
    problems, newly = {}, {}
    for entry in entries:
        path = shard_dir / entry["name"]
        record = _verified_record(entry["sha256"], path) if path.is_file() else None
        if record is not None and seen.get(entry["name"]) == record and not verify:
            continue
        problem = shard_problem(shard_dir, entry, checksum=True)
        if problem:
            problems[entry["name"]] = problem
        else:
            newly[entry["name"]] = record
    if newly:
        record_verified(shard_dir, newly, seen)
    return problems


def record_verified(shard_dir: Path, shards: dict[str, list], seen: dict | None = None) -> None:
    """Add `{name: [sha256, size, mtime_ns]}` to `VERIFIED`; a directory that cannot be written keeps checking."""
    try:
        write_json_atomic(shard_dir / VERIFIED, {**(seen or {}), **shards})
    except OSError:
        pass


def verified_now(shard_dir: Path, entries: list[dict]) -> dict[str, list]:
    """The `VERIFIED` records of shards just written with these entries (their sha256 taken from the files)."""
    return {e["name"]: _verified_record(e["sha256"], shard_dir / e["name"]) for e in entries}


def _verified_record(sha256: str, path: Path) -> list:
    """What `VERIFIED` keeps of a shard whose bytes match `sha256`: that hash, and the file's size and mtime now."""
    stat = path.stat()
    return [sha256, stat.st_size, stat.st_mtime_ns]


def _as_array(value, key: str, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return np.lib.format.read_array(io.BytesIO(bytes(value)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"sample {key}: {name} is not a valid .npy ({e})") from None
    raise UserError(f"sample {key}: {name} must be .npy bytes or an array, got {type(value).__name__}")


def decode_sample(sample: dict) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(key, text, ids int64, w float32 renormalised to sum 1) from a raw or decoded WebDataset sample.

    Raises a ValueError naming the sample (and its shard, when WebDataset recorded it) if it is malformed.
    """
    key = sample.get("__key__", "?")
    where = f"{key}" + (f" in {sample['__url__']}" if "__url__" in sample else "")
    missing = [k for k in ("txt", "ids.npy", "w.npy") if k not in sample]
    if missing:
        raise UserError(f"sample {where} lacks {', '.join(missing)}")
    text = sample["txt"]
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"sample {where}: txt is not UTF-8") from None
    ids = _as_array(sample["ids.npy"], where, "ids.npy")
    w = _as_array(sample["w.npy"], where, "w.npy")
    if ids.ndim != 1 or w.shape != ids.shape or not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"sample {where}: ids.npy and w.npy must be 1-D, integer ids, equal lengths")
    _check_target(ids, w, f"sample {where}")
    w32 = w.astype(np.float32)
    if w32.size:
        w32 /= w32.sum(dtype=np.float64)
    return str(key), text, ids.astype(np.int64), w32
