"""A target job: what decides it (`TargetJob.resolve`: paths, the kind, the params its manifest records), whether
one is finished (`is_complete`), and its directory over its life: verifying what an earlier run left (resume, or
refuse another job's shards), restarting shards after a new corpus-pass vector, saving those vectors, and the
manifest at the job's start and finish. The file format itself is `t2t.data.manifest`'s, the inputs' hashes
`t2t.data.inputs`'.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import t2t
from t2t.config import Config
from t2t.data.corpus import CorpusStats
from t2t.data.files import atomic_path
from t2t.data.ledger import Ledger
from t2t.data.inputs import INPUTS, backbone_revision, corpus_hash, hash_files, tokenizer_record
from t2t.data.manifest import LEDGER, MANIFEST, MANIFEST_FORMAT, model_vocab_size, read_manifest, write_manifest
from t2t.data.shards import VERIFIED, record_verified, shard_name, shard_problem, verified_now, verified_problems
from t2t.errors import UserError
from t2t.identity import EmbeddingIdentity
from t2t.run_paths import corpus_of, for_stage, shards_dir, texts_limit
from t2t.targets.kinds import TargetKind, target_kind

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- what decides a job


@dataclass
class TargetJob:
    """Everything a target job decides before it starts: paths, the kind, and the params the manifest records
    (`TargetJob.resolve`)."""

    cfg: Config
    """The recipe as the stage runs it (`run_paths.for_stage`)."""
    stage: str
    kind: TargetKind
    spec: object
    """The stage's `targets` section (the kind's spec dataclass)."""
    corpus: Path
    out: Path
    model_dir: Path
    tokenizer_name: str
    params: dict
    corpus_listing: list[dict]
    """[{name, bytes}] of the corpus files."""
    revision_covers: str
    """Which backbone files `params["backbone_revision"]` hashes."""

    @property
    def max_texts(self) -> int:
        return self.params["max_texts"]

    @classmethod
    def resolve(cls, recipe: Config, stage: str, corpus: str | None = None, out: str | None = None,
                inputs: INPUTS = "read") -> "TargetJob":
        """Resolve paths, load the tokenizer and compute the params that decide stage `stage`'s targets (the
        corpus and backbone hashed as `inputs` says)."""
        from t2t.data.tokens import cut_rule

        cfg = for_stage(recipe, stage)
        spec = cfg.stage(stage).targets
        kind = target_kind(spec.kind, f"stages.{stage}.targets.kind")
        corpus = corpus or corpus_of(cfg, stage)
        if not corpus:
            raise UserError(f"no corpus: set data.corpus or stages.{stage}.targets.corpus in the recipe, or pass "
                            "--corpus")
        out_dir = Path(out) if out else shards_dir(cfg, stage)
        corpus_sha, corpus_listing = corpus_hash(Path(corpus), out_dir, inputs)
        model_dir = Path(cfg.model.path)
        if not (model_dir / "config.json").is_file():  # the driver builds or converts the base model before this
            raise UserError(f"{model_dir} holds no model (no config.json); stage {stage} computes its targets with "
                            "it")
        tokenizer = tokenizer_record(model_dir, cfg.model.padding_side, out_dir, inputs)
        embedding = EmbeddingIdentity.of(cfg.model).as_dict() if kind.runs_model else None
        revision, covers = backbone_revision(model_dir, kind.runs_model, out_dir, inputs)
        params = dict(stage=stage, target=kind.manifest_params(spec),
                      tokenizer=dict(fingerprint=tokenizer["fingerprint"], vocab_size=tokenizer["vocab_size"]),
                      vocab_size=model_vocab_size(model_dir), backbone_revision=revision, embedding=embedding,
                      corpus_sha256=corpus_sha, max_texts=texts_limit(cfg, stage),
                      shard_size=cfg.targets.shard_size)
        if kind.runs_model:  # the model read texts cut by this rule; targets made under an older one are redone
            params["text_cut"] = cut_rule(cfg.model.pooling)
        params = json.loads(json.dumps(params))  # the form it has when read back from manifest.json
        return cls(cfg, stage, kind, spec, Path(corpus), out_dir, model_dir,
                   tokenizer["name"], params, corpus_listing, covers)


def is_complete(cfg: Config, stage: str, out: str | None = None, verify: bool = False) -> bool:
    """True only if `out` holds a finished job made with exactly the params `cfg` would use now.

    Every shard must be there as its manifest records it: its sha256, checked again only where the file's size
    or modification time changed since it last matched (`shards.verified_problems`); the corpus and backbone
    hashes likewise (`input_hash`). `verify` reads every input and shard in full."""
    out_dir = Path(out) if out else shards_dir(cfg, stage)
    try:
        manifest = read_manifest(out_dir)
    except UserError:
        return False
    if not manifest.get("complete") or not (Path(for_stage(cfg, stage).model.path) / "config.json").is_file():
        return False
    try:
        params = TargetJob.resolve(cfg, stage, out=str(out_dir), inputs="refresh" if verify else "cached").params
    except UserError:
        return False
    return manifest["params"] == params and not verified_problems(out_dir, manifest["shards"], verify)


# --------------------------------------------------------------------------- the job directory


def _outputs(p: TargetJob) -> list[Path]:
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


def prepare_out(p: TargetJob, overwrite: bool) -> dict | None:
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


def _forget_shards(p: TargetJob, ledger: Ledger, entries: dict[int, dict], bad: dict[int, str]) -> None:
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


def restart_shards(p: TargetJob, manifest: dict, ledger: Ledger, pass_name: str) -> None:
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


def start_manifest(p: TargetJob) -> dict:
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


def finish_manifest(p: TargetJob, manifest: dict, stats: CorpusStats) -> dict:
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
