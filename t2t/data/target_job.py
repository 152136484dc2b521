"""A target job's directory over its life: verifying what an earlier run left (resume, or refuse another job's
shards), restarting shards after a new corpus-pass vector, saving those vectors, and the manifest at the job's
start and finish. The file format itself, and what decides the targets, are `t2t.data.manifest`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

import t2t
from t2t.data.corpus import CorpusStats
from t2t.data.files import atomic_path
from t2t.data.ledger import Ledger
from t2t.data.manifest import LEDGER, MANIFEST, MANIFEST_FORMAT, Plan, hash_files, read_manifest, write_manifest
from t2t.data.shards import VERIFIED, record_verified, shard_name, shard_problem, verified_now
from t2t.errors import UserError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the job directory


def _outputs(p: Plan) -> list[Path]:
    names = {MANIFEST, LEDGER, VERIFIED}
    for corpus_pass in p.kind.corpus_passes(p.spec):
        names |= {corpus_pass.file, partial_file(corpus_pass.name)}
    return sorted(p.out.glob("t2t-*.tar")) + [p.out / n for n in sorted(names) if (p.out / n).exists()]


def partial_file(pass_name: str) -> str:
    """The running sum of an unfinished corpus pass, next to the shards."""
    return f"{pass_name}_partial.npz"


def _param_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _param_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def prepare_out(p: Plan, overwrite: bool) -> dict | None:
    """The finished manifest if `p.out` already holds this exact job, every shard verified; otherwise get
    the directory ready.

    Shards of the same job are checked against their recorded size and sha256 (the manifest's when
    it is complete, else the ledger's); those that fail are removed, named in a warning, and redone.
    Shards of a different job (or of unknown provenance) are refused unless `overwrite`.
    The caller holds the directory's lock.
    """
    p.out.mkdir(parents=True, exist_ok=True)
    for stale in [*p.out.glob("t2t-*.tar.tmp*"), *p.out.glob("*.json*.tmp*"), *p.out.glob("*.np[yz].tmp*")]:
        stale.unlink()  # left by a process killed mid-write; never a finished file
    existing = _outputs(p)
    try:
        manifest = read_manifest(p.out)
    except UserError as e:
        manifest, problem = None, str(e)
    if manifest is not None and manifest["params"] == p.params:
        ledger = Ledger(p.out / LEDGER)
        if manifest["complete"]:
            entries = dict(enumerate(manifest["shards"]))
        else:  # unfinished: resume from the ledger, redoing missing shards anyway
            entries = {i: dict(e, name=shard_name(i)) for i, e in ledger.entries.items()
                       if (p.out / shard_name(i)).is_file()}
        bad = {i: problem for i, e in sorted(entries.items()) if (problem := shard_problem(p.out, e)) is not None}
        if manifest["complete"] and not bad:
            return manifest
        _forget_shards(p, ledger, entries, bad)
        return None
    if not existing:
        return None
    if not overwrite:
        why = ("its manifest differs: " + "; ".join(_param_diff(manifest["params"], p.params))
               if manifest is not None else problem)
        raise UserError(f"{p.out} already holds shards of another job ({why}); "
                        "pass --overwrite to replace them, or choose another --out")
    log.warning("--overwrite: removing %d files of another job from %s", len(existing), p.out)
    for f in existing:
        f.unlink()
    return None


def _forget_shards(p: Plan, ledger: Ledger, entries: dict[int, dict], bad: dict[int, str]) -> None:
    """Remove shards that failed verification and their ledger lines, so that the job recomputes them."""
    if not bad:
        return
    shown = list(bad.items())[:20]
    for i, problem in shown:
        log.warning("%s: recomputing %s: %s", p.out, entries[i]["name"], problem)
    if len(bad) > len(shown):
        log.warning("%s: recomputing %d more shard(s) that fail verification", p.out, len(bad) - len(shown))
    log.warning("%s: %d of %d finished shard(s) failed verification and will be recomputed", p.out, len(bad),
                len(entries))
    for i in bad:
        (p.out / entries[i]["name"]).unlink(missing_ok=True)
    ledger.forget(bad)


def restart_shards(p: Plan, manifest: dict, ledger: Ledger, pass_name: str) -> None:
    """A new corpus-pass vector (θ, IDF) invalidates every shard made with the old one: forget them, then record
    the new vector."""
    for i in list(ledger.entries):
        (p.out / shard_name(i)).unlink(missing_ok=True)
    ledger.entries.clear()
    ledger.path.unlink(missing_ok=True)
    write_manifest(p.out, manifest)
    (p.out / partial_file(pass_name)).unlink(missing_ok=True)


def write_array(out: Path, name: str, array: np.ndarray, texts: int) -> dict:
    """Save a float64 vector (θ or IDF) atomically next to the shards; returns its manifest entry."""
    path = out / name
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array.astype(np.float64), allow_pickle=False)
    return dict(file=name, sha256=hash_files([(name, path)]), texts=texts)


def array_intact(out: Path, entry: dict | None) -> bool:
    """True if the manifest entry of θ / IDF names a file that is there with the recorded hash."""
    if not entry or not (out / entry["file"]).is_file():
        return False
    return hash_files([(entry["file"], out / entry["file"])]) == entry["sha256"]


# --------------------------------------------------------------------------- start and finish


def start_manifest(p: Plan) -> dict:
    """The manifest of a job about to run: incomplete, with the corpus passes a resumed job already finished."""
    old = None
    try:
        old = read_manifest(p.out)
    except UserError:
        pass
    resumed = old if old is not None and old["params"] == p.params else {}
    manifest = dict(format=MANIFEST_FORMAT, code_version=t2t.__version__, complete=False, stage=p.stage,
                    params=p.params, tokenizer_name=p.tokenizer_name,
                    backbone=dict(path=str(p.model_dir), revision_covers=p.revision_covers),
                    corpus=dict(path=str(p.corpus), files=p.corpus_listing, counters=None))
    for corpus_pass in p.kind.corpus_passes(p.spec):
        manifest[corpus_pass.name] = resumed.get(corpus_pass.name)
    manifest.update(shards=[], samples=0, empty_targets=0)
    return manifest


def finish_manifest(p: Plan, manifest: dict, stats: CorpusStats) -> dict:
    """Record every shard of the ledger, the corpus counters and the kind's summary; `complete` turns true."""
    ledger = Ledger(p.out / LEDGER)
    indices = sorted(ledger.entries)
    assert indices == list(range(len(indices))), f"ledger of {p.out} has gaps: {indices}"
    entries = [ledger.entries[i] for i in indices]
    stats.truncated = sum(e["truncated"] for e in entries)
    shards = [dict(name=shard_name(e["index"]), samples=e["samples"], bytes=e["bytes"], sha256=e["sha256"])
              for e in entries]
    manifest.update(complete=True, shards=shards,
                    samples=sum(e["samples"] for e in entries), empty_targets=sum(e["empty"] for e in entries))
    manifest["corpus"]["counters"] = stats.as_dict()
    manifest.update(p.kind.summary(entries, p.params) or {})
    write_manifest(p.out, manifest)
    record_verified(p.out, verified_now(p.out, shards))
    c = stats.as_dict()
    log.info("%s targets: %d samples in %d shards at %s; texts read %d, skipped empty %d, invalid UTF-8 "
             "replaced %d, truncated %d; empty targets %d", p.stage, manifest["samples"], len(entries), p.out,
             c["read"], c["skipped_empty"], c["invalid_utf8"], c["truncated"], manifest["empty_targets"])
    return manifest
