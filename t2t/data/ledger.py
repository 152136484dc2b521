"""The ledger of a sharded job: which shards are finished, so a rerun skips them."""

from __future__ import annotations

import json
import os
from pathlib import Path


class Ledger:
    """`ledger.jsonl`: one JSON line per finished shard, appended by the driver only."""

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
