"""The shard manifest: the contract between a target job and the trainer, written, read and checked here.

`<shards_dir>/<stage>/manifest.json` (written atomically; `complete` turns true only when every shard is there):

    format          "t2t-targets/2" (a "t2t-targets/1" manifest, whose shards carry no size or checksum, is refused)
    code_version    t2t.__version__ of the writer
    complete        false while the job runs, true at the end
    stage           the stage name the targets were made for
    params          everything that decides the targets; a rerun with other params recomputes:
      stage           the stage name
      target          the kind's parameters (`TargetKind.manifest_params`), e.g. {kind: data-driven, stopwords,
                      stopwords_sha256, max_target_tokens, weighting} or {kind: model-derived, tau, delta, top_k, epsilon}
      tokenizer       {fingerprint (t2t.data.tokens.tokenizer_fingerprint), vocab_size (len(tokenizer))}
      vocab_size      rows of the LM head (config.json vocab_size): every id is below it
      backbone_revision  hash of the backbone's files (weights included for kinds that run the model)
      embedding       kinds that run the model: the `EmbeddingIdentity` they embedded with; else null
      corpus_sha256   hash of the corpus files' names and contents
      max_texts       the cap on texts read in effect (0 = all)
      shard_size      samples per shard
      text_cut        kinds that run the model: how a text too long was cut (`t2t.data.tokens.CUT_RULE`)
    tokenizer_name  where the tokenizer was loaded from
    backbone        {path, revision_covers}
    corpus          {path, files: [{name, bytes}], counters: {read, skipped_empty, invalid_utf8, truncated}}
    <pass name>     per corpus pass of the kind (`background`: θ, `idf`): {file, sha256, texts} of its float64 .npy
    ...             what the kind's `summary` adds (model-derived: dropped_mass {bound, delta_bound, mean,
                    texts_cut_by_top_k})
    shards          [{name, samples, bytes, sha256}] in index order, recorded by the worker that wrote each. The
                    trainer checks every shard's size when it opens the directory; `t2t pipeline` calls the job
                    up to date only if every shard's sha256 matches (re-read only where a file's size or time
                    changed since it last matched: `verified.json`); a rerun of `t2t targets` checks sizes and
                    sha256 and recomputes the shards that fail.
    samples         total samples; empty_targets: how many have no target ids

Next to it: `ledger.jsonl` (finished shards of an unfinished job), the corpus passes' files and partial
sums, `targets.lock` (the one job writing the directory), and `verified.json` and `inputs_verified.json` (the
shards, and the corpus and backbone, as they were when last hashed: a check reads again only what changed).
What a job does with that directory over its life (resume, restart, start and finish the manifest) is
`t2t.data.target_job`'s. Torch-free; no Ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from t2t.config import Config
from t2t.data.corpus import corpus_files
from t2t.data.files import hash_into, write_json_atomic
from t2t.data.shards import verified_problems
from t2t.errors import UserError
from t2t.identity import EmbeddingIdentity
from t2t.run_paths import corpus_of, for_stage, shards_dir, texts_limit
from t2t.targets.kinds import TargetKind, target_kind

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "t2t-targets/2"
REQUIRED = ("format", "code_version", "complete", "stage", "params", "shards", "samples")
SHARD_KEYS = {"name", "samples", "bytes", "sha256"}
LEDGER = "ledger.jsonl"
LOCK_FILE = "targets.lock"
"""In the shard directory: `--overwrite` removes only the job's outputs (`_outputs`), never it or the directory."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


# --------------------------------------------------------------------------- the file


def write_manifest(shard_dir: str | Path, manifest: dict) -> None:
    """Write `<shard_dir>/manifest.json` atomically."""
    missing = [k for k in REQUIRED if k not in manifest]
    assert not missing, f"manifest lacks {missing}"
    write_json_atomic(Path(shard_dir) / MANIFEST, manifest)


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a shard directory; a UserError names the file when it is missing or invalid."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} does not exist: not a t2t shard directory (run `t2t targets` first)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} must hold a JSON object")
    recompute = (f"recompute the targets: `t2t targets --stage {manifest.get('stage', 'NAME')} --config R "
                 "--overwrite`, or a rerun of `t2t pipeline`")
    if "format" in manifest and manifest["format"] != MANIFEST_FORMAT:  # format 1 recorded no shard size or sha256
        raise UserError(f"{path}: format {manifest['format']!r} is not {MANIFEST_FORMAT!r} (written by an older "
                        f"t2t); {recompute}")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise UserError(f"{path} is missing {', '.join(missing)}")
    unvouched = [i for i, e in enumerate(manifest["shards"]) if not isinstance(e, dict) or not SHARD_KEYS <= set(e)]
    if unvouched:  # every reader relies on them: a shard is checked against its size and sha256
        raise UserError(f"{path}: shards[{unvouched[0]}] does not record {', '.join(sorted(SHARD_KEYS))}; {recompute}")
    return manifest


def model_vocab_size(model_dir: str | Path) -> int:
    """Rows of the LM head, from the model directory's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the model's vocabulary size from {path}: {e}") from None
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    if not isinstance(size, int):
        raise UserError(f"{path} has no integer vocab_size")
    return size


def check_manifest(manifest: dict, model_cfg, tokenizer, where: str) -> None:
    """Raise a UserError naming `where` and every way these targets do not fit this model (before training).

    Checked: the job finished; vocab size and tokenizer hash; for targets a model derived (`embedding` set), the
    embedding fields they must share with the student (`EmbeddingIdentity.TARGET_FIELDS`).
    """
    from t2t.data.tokens import tokenizer_fingerprint

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
        made_with = EmbeddingIdentity.from_dict(params["embedding"])
        problems += [f"{d} (targets → model config)" for d in
                     made_with.differences(EmbeddingIdentity.of(model_cfg), fields=EmbeddingIdentity.TARGET_FIELDS)]
    if problems:
        raise UserError(f"shards in {where} do not match the model: " + "; ".join(problems))


# --------------------------------------------------------------------------- what decides the targets


@dataclass
class Plan:
    """Everything a target job decides before it starts: paths, the kind, and the params the manifest records."""

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


def hash_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over (label, size, content) of each file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    for label, path in files:
        h.update(f"{label}\0{path.stat().st_size}\0".encode())
        hash_into(h, path)
    return h.hexdigest()[:24]


INPUTS_VERIFIED = "inputs_verified.json"
"""In a target job's directory: the hash of its corpus and of its backbone's files, with the path, size and
modification time of each file hashed. Only the check that a job is up to date (`is_complete`, at every pipeline
and sweep run) reads and writes it: it takes a hash from here while those are unchanged, instead of reading a
corpus or a 15 GB backbone again (`t2t pipeline --verify` reads them in full and records them anew). A target job
itself always reads its inputs in full and records nothing."""

INPUTS = Literal["read", "cached", "refresh"]
"""How `plan` hashes the corpus and backbone: `read` in full, recording nothing (a target job); `cached` from
`INPUTS_VERIFIED` while unchanged, else in full and recorded (the up-to-date check); `refresh` in full, recorded
(the check under `--verify`)."""


def input_hash(role: str, files: list[tuple[str, Path]], out: Path | None, inputs: INPUTS) -> str:
    """`hash_files(files)`, or its record in `out`'s `INPUTS_VERIFIED` under `role` (see `INPUTS`)."""
    if inputs == "read" or out is None:
        return hash_files(files)
    stamp = [[label, str(path.resolve()), st.st_size, st.st_mtime_ns] for label, path in files for st in [path.stat()]]
    record_file = out / INPUTS_VERIFIED
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    entry = record.get(role)
    if inputs == "cached" and isinstance(entry, dict) and entry.get("files") == stamp:
        return entry["sha256"]
    digest = hash_files(files)
    if out.is_dir():
        try:
            write_json_atomic(record_file, {**record, role: {"files": stamp, "sha256": digest}})
        except OSError:
            pass  # a directory that cannot be written keeps hashing
    return digest


def corpus_hash(corpus: Path, out: Path | None = None, inputs: INPUTS = "read") -> tuple[str, list[dict]]:
    """(hash of the corpus files' names and contents, [{name, bytes}]); `out` and `inputs`: see `input_hash`."""
    files = corpus_files(corpus)
    labelled = [(f.name if corpus.is_file() else str(f.relative_to(corpus)), f) for f in files]
    return input_hash("corpus", labelled, out, inputs), [{"name": label, "bytes": f.stat().st_size}
                                                          for label, f in labelled]


def backbone_revision(model_dir: Path, with_weights: bool, out: Path | None = None,
                      inputs: INPUTS = "read") -> tuple[str, str]:
    """(hash of the backbone's files, what it covers). Targets from the tokenizer depend only on config and
    tokenizer; targets the model derives on the weights too (for a 7B model that is ~15 GB read, so a check
    takes it from `out`'s record while the files are unchanged: `input_hash`)."""
    names = ["config.json", *TOKENIZER_FILES]
    files = [(n, model_dir / n) for n in names if (model_dir / n).is_file()]
    if with_weights:
        files += [(f.name, f) for f in sorted(model_dir.iterdir()) if f.name.endswith(WEIGHT_SUFFIXES)]
    covers = "config, tokenizer" + (", weights" if with_weights else "")
    return input_hash("backbone", files, out, inputs), covers


def plan(recipe: Config, stage: str, corpus: str | None = None, out: str | None = None,
         inputs: INPUTS = "read") -> Plan:
    """Resolve paths, load the tokenizer and compute the params that decide stage `stage`'s targets (the corpus and
    backbone hashed as `inputs` says)."""
    from t2t.data.tokens import CUT_RULE, load_tokenizer, tokenizer_fingerprint

    cfg = for_stage(recipe, stage)
    spec = cfg.stage(stage).targets
    kind = target_kind(spec.kind, f"stages.{stage}.targets.kind")
    corpus = corpus or corpus_of(cfg, stage)
    if not corpus:
        raise UserError(f"no corpus: set data.corpus or stages.{stage}.targets.corpus in the recipe, or pass --corpus")
    out_dir = Path(out) if out else shards_dir(cfg, stage)
    corpus_sha, corpus_listing = corpus_hash(Path(corpus), out_dir, inputs)
    model_dir = Path(cfg.model.path)
    if not (model_dir / "config.json").is_file():  # the driver builds or converts the base model before planning
        raise UserError(f"{model_dir} holds no model (no config.json); stage {stage} computes its targets with it")
    tokenizer = load_tokenizer(model_dir, cfg.model.padding_side)
    embedding = EmbeddingIdentity.of(cfg.model).as_dict() if kind.runs_model else None
    revision, covers = backbone_revision(model_dir, kind.runs_model, out_dir, inputs)
    params = dict(stage=stage, target=kind.manifest_params(spec),
                  tokenizer=dict(fingerprint=tokenizer_fingerprint(tokenizer), vocab_size=len(tokenizer)),
                  vocab_size=model_vocab_size(model_dir), backbone_revision=revision, embedding=embedding,
                  corpus_sha256=corpus_sha, max_texts=texts_limit(cfg, stage), shard_size=cfg.targets.shard_size)
    if kind.runs_model:  # the model read texts cut by this rule; targets made under an older one are redone
        params["text_cut"] = CUT_RULE
    params = json.loads(json.dumps(params))  # the form it has when read back from manifest.json
    return Plan(cfg, stage, kind, spec, Path(corpus), out_dir, model_dir,
                str(getattr(tokenizer, "name_or_path", model_dir)), params, corpus_listing, covers)


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
        params = plan(cfg, stage, out=str(out_dir), inputs="refresh" if verify else "cached").params
    except UserError:
        return False
    return manifest["params"] == params and not verified_problems(out_dir, manifest["shards"], verify)
