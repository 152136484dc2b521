"""What every local task shares: reading its data files from data/eval (their SHA-256 checked), an optional seeded
sample, and the official task's metadata pointing at the local copy. Each task is its own module in this package."""

from __future__ import annotations

import gzip
import hashlib
import json
from abc import abstractmethod
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTaskSTS

from t2t.data.files import BLOCK, hash_into
from t2t.errors import UserError

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "eval"
SAMPLE_SEED = 42


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def local_metadata(official, files: dict[str, str], differs: str):
    """The official task's metadata (split, metric, main score, citation) pointing at the local `files`, its
    dataset revision derived from their SHA-256 sums."""
    joined = ";".join(f"{name}={sha256}" for name, sha256 in files.items())
    return official.metadata.model_copy(update={
        "description": f"{official.metadata.description} Local copy in data/eval ({', '.join(files)}). {differs}",
        "dataset": {"path": "data/eval/" + next(iter(files)),
                    "revision": "local-" + hashlib.sha256(joined.encode()).hexdigest()[:16]},
        "superseded_by": None,
    })


def read_tsv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """Rows of a header-first, unquoted TSV; a wrong header or field count is an error naming file and line."""
    with _open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header) != columns:
            raise UserError(f"{path}:1: expected columns {'/'.join(columns)}, got {'/'.join(header)}")
        rows = []
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(columns):
                raise UserError(f"{path}:{lineno}: expected {len(columns)} tab-separated fields, got {len(fields)}")
            rows.append(fields)
    return rows


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with _open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


def sample_indices(n: int, max_samples: int) -> list[int]:
    """All of range(n) when `max_samples` is 0, else a seeded sample of at most that many, in their original order."""
    if not max_samples or max_samples >= n:
        return list(range(n))
    return sorted(np.random.RandomState(SAMPLE_SEED).choice(n, max_samples, replace=False).tolist())


class LocalTaskMixin:
    """Reads `files` from a data directory (checking their SHA-256), optionally capped at `max_samples` per split."""

    files: dict[str, str] = {}
    """Each data file under data/eval → the SHA-256 of its (decompressed) content, as listed in the upstream data
    set's SOURCES.md."""

    def __init__(self, data_dir: str | Path | None = None, max_samples: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
        self.max_samples = int(max_samples)

    def path(self, name: str) -> Path:
        return self.data_dir / name

    def nth(self, i: int) -> Path:
        """The path of the task's `i`-th data file."""
        return self.path(list(self.files)[i])

    def check_files(self) -> None:
        for name in self.files:
            p = self.path(name)
            if not p.is_file():
                raise UserError(f"{self.metadata.name}: data file {p} not found (the local tasks read data/eval)")
            h = hashlib.sha256()
            if p.suffix == ".gz":  # the sum is of the decompressed content (hash_into reads the file's own bytes)
                with gzip.open(p, "rb") as f:
                    while block := f.read(BLOCK):
                        h.update(block)
            else:
                hash_into(h, p)
            digest = h.hexdigest()
            if digest != self.files[name]:
                raise UserError(f"{self.metadata.name}: data file {p} has changed (sha256 {digest[:12]}…, "
                                f"expected {self.files[name][:12]}…); restore it from data/SOURCES.md's source")

    def cost(self) -> int:
        """Bytes of text this task reads (uncompressed), to schedule the largest tasks first."""
        total = 0
        for name in self.files:
            p = self.path(name)
            if p.suffix == ".gz" and p.is_file():
                with p.open("rb") as f:  # gzip stores the uncompressed size (mod 2**32) in its last 4 bytes
                    f.seek(-4, 2)
                    total += int.from_bytes(f.read(4), "little")
            elif p.is_file():
                total += p.stat().st_size
        return total

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.data_loaded:
            return
        self.check_files()
        self.dataset = self.read()
        self.data_loaded = True

    @abstractmethod
    def read(self):
        """The task's `dataset` in the layout its mteb abstract task expects."""

    def read_pairs(self, column: str, key: str, cast) -> DatasetDict:
        """The test split of a sentence-pair TSV (`sentence1`, `sentence2`, `column`), sampled, with `column`'s
        values cast by `cast` under `key`: an STS score or a pair-classification label."""
        rows = read_tsv(self.nth(0), ("sentence1", "sentence2", column))
        rows = [rows[i] for i in sample_indices(len(rows), self.max_samples)]
        return DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows], key: [cast(r[2]) for r in rows]})})


class LocalSTS(LocalTaskMixin, AbsTaskSTS):
    def read(self) -> DatasetDict:
        return self.read_pairs("score", "score", float)
