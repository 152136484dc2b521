"""The ledger of a sharded job: which shards are finished (with their size and sha256), so a rerun skips them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from t2t.data.files import atomic_path


class Ledger:
    """`ledger.jsonl`: one JSON line per finished shard, appended by the driver only (a later line for the
    same index replaces an earlier one; `forget` rewrites the file without some)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[int, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash; that shard is redone
                self.entries[entry["index"]] = entry

    def record(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry["index"]] = entry

    def forget(self, indices: Iterable[int]) -> None:
        """Drop these shards from the ledger (they will be redone); the file is rewritten atomically, fsynced."""
        for i in indices:
            self.entries.pop(i, None)
        with atomic_path(self.path, fsync=True) as tmp:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(self.entries[i]) + "\n" for i in sorted(self.entries))
