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
      text_cut        kinds that run the model: how a text too long was cut (`t2t.data.tokens.cut_rule`)
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
What decides a job's params, and what a job does with that directory over its life (resume, restart, start and
finish the manifest), are `t2t.data.target_job`'s; the input hashes `t2t.data.inputs`'. Torch-free; no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

from t2t.data.files import write_json_atomic
from t2t.errors import UserError
from t2t.identity import EmbeddingIdentity

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "t2t-targets/2"
REQUIRED = ("format", "code_version", "complete", "stage", "params", "shards", "samples")
SHARD_KEYS = {"name", "samples", "bytes", "sha256"}
LEDGER = "ledger.jsonl"
LOCK_FILE = "targets.lock"
"""In the shard directory: `--overwrite` removes only the job's outputs (`_outputs`), never it or the directory."""


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
