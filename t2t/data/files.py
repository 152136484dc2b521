"""File helpers shared by the jobs (no torch): atomic writes, streamed hashing, and the one-writer lock of a job
directory. Every file or directory t2t finishes is written under a temporary name and renamed into place, so a
crash never leaves a half-written one under the real name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from t2t.errors import UserError

BLOCK = 1 << 20


def temp_name(path: str | Path) -> Path:
    """A sibling of `path` that no other process uses (`NAME.tmpPID`); leftovers of killed writers match `*.tmp*`."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on a clean exit it is renamed over `path` (after an
    fsync of the file when `fsync`), on an error it is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON to `path` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def replace_dir(tmp: str | Path, out: str | Path) -> None:
    """Put the finished directory `tmp` in place of `out`. os.replace cannot overwrite a non-empty directory, so an
    existing `out` is first moved aside and removed only once `tmp` is in place: a crash never loses both."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def hash_into(h, path: str | Path) -> int:
    """Feed the bytes of `path` into the hash object `h`, streamed in 1 MiB blocks; returns the byte count."""
    n = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
            n += len(block)
    return n


def file_digest(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read once."""
    h = hashlib.sha256()
    size = hash_into(h, path)
    return size, h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if needed) for the `with` block; one holder at a time.

    The holder writes its PID, host and start time into the file, so a refused process can say
    whom it waited for. The kernel, not the file's existence, decides: the lock goes with the
    process, so a holder killed with SIGKILL leaves a stale file that blocks nobody. A second
    attempt fails at once with a ValueError naming `what` and the holder; it does not wait.
    """
    import fcntl

    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not O_TRUNC: the holder's record stays readable
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise UserError(f"{what} is in use by another job ({holder}); wait for it to finish or stop it "
                             f"(lock file {path})") from None
        record = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting locker)


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {record['pid']} on host {record['host']}, since {record['started']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "holder unknown: it has not written its PID and host yet"
