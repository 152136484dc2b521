"""Corpus readers: `.txt`, `.txt.gz` (one text a line), `.jsonl`, `.jsonl.gz` (a `text` field), or a directory.

Every text gets a stable key derived from its source file name and line number, so the
same corpus always yields the same keys, whichever worker reads it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from t2t.errors import UserError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class Text:
    key: str
    """Stable id: hash of source file name and line number (no dots: WebDataset splits on them)."""
    text: str
    source: str
    line: int


@dataclass
class CorpusStats:
    """Counters a reader keeps; printed at the end and stored in the manifest."""

    read: int = 0
    skipped_empty: int = 0
    invalid_utf8: int = 0
    truncated: int = 0

    def add(self, other: "CorpusStats") -> None:
        for k in ("read", "skipped_empty", "invalid_utf8", "truncated"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict:
        return dict(read=self.read, skipped_empty=self.skipped_empty, invalid_utf8=self.invalid_utf8,
                    truncated=self.truncated)


def corpus_files(path: str | Path) -> list[Path]:
    """The corpus files under `path`, sorted; errors name the path."""
    p = Path(path)
    if not str(path):
        raise UserError("no corpus path given")
    if not p.exists():
        raise UserError(f"corpus {p} does not exist")
    if p.is_file():
        if not p.name.endswith(SUFFIXES):
            raise UserError(f"corpus file {p} must end with one of {', '.join(SUFFIXES)}")
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
    if not files:
        raise UserError(f"corpus directory {p} holds no {'/'.join(SUFFIXES)} files")
    return files


def text_key(source: str, line: int) -> str:
    return hashlib.sha1(f"{source}:{line}".encode()).hexdigest()[:20]


def iter_file(path: Path, stats: CorpusStats | None = None, label: str | None = None) -> Iterator[Text]:
    """Texts of one file. Undecodable bytes are replaced and counted; a corrupt .gz names the line reached."""
    stats = stats if stats is not None else CorpusStats()
    label = label or path.name
    is_json = path.name.endswith((".jsonl", ".jsonl.gz"))
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("utf-8", errors="replace")
                    stats.invalid_utf8 += 1
                if is_json:
                    if not line.strip():
                        stats.skipped_empty += 1
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise UserError(f"{path}:{lineno}: expected an object with a string 'text' field")
                    text = obj["text"].strip()
                else:
                    text = line.strip()
                if not text:
                    stats.skipped_empty += 1
                    continue
                stats.read += 1
                yield Text(text_key(label, lineno), text, label, lineno)
    except (EOFError, OSError, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated input after line {lineno}: {e}") from None


def iter_texts(path: str | Path, stats: CorpusStats | None = None, limit: int = 0) -> Iterator[Text]:
    """All texts under `path` in a fixed order, at most `limit` (0 = all)."""
    root = Path(path)
    n = 0
    for f in corpus_files(root):
        label = f.name if root.is_file() else str(f.relative_to(root))
        for t in iter_file(f, stats, label):
            yield t
            n += 1
            if limit and n >= limit:
                return
