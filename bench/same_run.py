"""Did two pipeline runs produce the same results? The check behind a refactor's "behaviour stays identical" rule.

    python bench/same_run.py DIR_A DIR_B [--run runs/short --shards shards/short]

DIR_A and DIR_B are the working directories two `t2t pipeline` runs of the same recipe ran in (e.g. one per
commit: `git worktree add /tmp/before REV`, run there, then run the same recipe with the new code elsewhere).
Compared: every target shard and corpus-pass vector byte for byte, every stage's per-step losses exactly, every
export's weights byte for byte, and the evaluation scores exactly. Prints one line per item and exits 1 if any
differs. Paths, timings and provenance (which record where and when) are not compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def results(root: Path, run: str, shards: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted((root / shards).rglob("*")):
        if p.is_file() and p.suffix in (".tar", ".npy"):
            out[f"bytes of {p.relative_to(root)}"] = digest(p)
    for metrics in sorted((root / run).glob("*/metrics.jsonl")):
        out[f"losses of {metrics.parent.name}"] = [json.loads(line)["loss"] for line in metrics.open()]
    for weights in sorted((root / run).glob("**/model.safetensors")):
        if ".replaced" not in str(weights):
            out[f"weights of {weights.parent.relative_to(root)}"] = digest(weights)
    table = root / run / "eval" / "results.json"
    if table.is_file():
        scores = json.loads(table.read_text())
        out["eval scores"] = scores["scores"]
        out["eval category means"] = scores.get("category_means")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--run", default="runs/short", help="the recipe's run_dir, relative to each directory")
    p.add_argument("--shards", default="shards/short", help="the recipe's data.shards_dir, relative to each directory")
    args = p.parse_args()
    a, b = results(args.a, args.run, args.shards), results(args.b, args.run, args.shards)
    differ = 0
    for key in sorted(set(a) | set(b)):
        same = a.get(key) == b.get(key) and key in a and key in b
        differ += not same
        print(f"{'same  ' if same else 'DIFFER'} {key}")
    print(f"{len(set(a) | set(b)) - differ} same, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
