"""What decides each output: one table, `ROLES`, that gives every recipe field one role, and the answers derived
from it (no torch).

Four outputs are kept or redone by what decided them:

- a pipeline step (`step_fingerprints`, stored in `<run_dir>/pipeline.json`): a step reruns when a field of its
  roles changed, and so does everything downstream of it;
- a training run's checkpoint (`resume_identity`, stored with every checkpoint): `--resume auto` resumes only
  under the same values;
- a target job's shards (`t2t.data.target_job.TargetJob.resolve`): its manifest records the target kind's parameters
  (`TargetKind.manifest_params`, every field of the stage's `targets:` section but the corpus and the text cap,
  which it records as the corpus's hash and `max_texts`), `targets.shard_size`, the backbone's hash and, for a
  kind that runs the model, the `EMBEDDING` fields as a `t2t.identity.EmbeddingIdentity`;
- an eval cache entry (`t2t.eval.models.content_hash`): the model's files and its `EmbeddingIdentity` (the
  `EMBEDDING` fields but the compute dtype; results are cached per eval dtype).

tests/test_fingerprints.py changes every field in turn and checks each answer against its role.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from t2t import run_paths
from t2t.config import Config

BASE = "base"
"""The backbone's weights before any stage: the `base` step and everything after it."""
EMBEDDING = "embedding"
"""How a text becomes a vector (`t2t.identity.EmbeddingIdentity`): every step after `base`, the checkpoint, the
targets of a kind that runs the model, the eval cache."""
TARGETS = "targets"
"""What a stage's targets are: its targets step and everything after it, and its checkpoint."""
TRAINING = "training"
"""How a stage trains: its train step and everything after it, and its checkpoint."""
LENGTH = "length"
"""How far a stage trains: a finished stage trains on, and its checkpoint resumes."""
RANKS = "ranks"
"""The ranks, and with them the global batch: a finished stage retrains (the value as written is hashed, since
`0` resolves on the machine the step runs on), while a checkpoint resumes (the data stream restarts its epoch)."""
EVAL = "eval"
"""What the scores are of: the eval step and the report."""
NOTHING = "nothing"
"""Where outputs go, how fast, how often a run saves, logs and watches itself, what `t2t plan` sizes: nothing
reruns and every checkpoint resumes."""

ROLES: dict[str, str] = {
    "name": NOTHING, "run_dir": NOTHING, "seed": TRAINING,
    "model.path": BASE, "model.gguf": BASE, "model.tiny": BASE, "model.arch_config": NOTHING,
    "model.attention": EMBEDDING, "model.pooling": EMBEDDING, "model.prompt": EMBEDDING,
    "model.padding_side": EMBEDDING, "model.max_length": EMBEDDING, "model.dtype": EMBEDDING,
    "data.corpus": TARGETS, "data.max_texts": TARGETS, "data.shards_dir": NOTHING,
    "data.shuffle_buffer": TRAINING, "data.on_bad_shard": TRAINING, "data.loader_workers": TRAINING,
    "data.length_group": TRAINING,
    "targets.shard_size": TARGETS, "targets.workers": NOTHING, "targets.gpus_per_worker": NOTHING,
    "targets.batch_size": NOTHING, "targets.max_retries": NOTHING,
    "stages.*.name": NOTHING, "stages.*.start": TARGETS, "stages.*.targets": TARGETS,
    "stages.*.objective": TRAINING, "stages.*.steps": LENGTH, "stages.*.lr": TRAINING,
    "stages.*.schedule": TRAINING, "stages.*.warmup_steps": TRAINING,
    "train.ds_config": TRAINING, "train.micro_batch_size": TRAINING, "train.grad_accum_steps": TRAINING,
    "train.weight_decay": TRAINING, "train.grad_clip": TRAINING, "train.adamw_impl": TRAINING,
    "train.lora": TRAINING, "train.train_embeddings": TRAINING,
    "train.save_every": NOTHING, "train.keep_checkpoints": NOTHING, "train.log_every": NOTHING,
    "train.monitors": NOTHING, "train.peak_flops": NOTHING, "train.stop_after_zero_grad_steps": NOTHING,
    "train.nproc": RANKS,
    "eval.tasks": EVAL, "eval.benchmark": EVAL, "eval.dtype": EVAL, "eval.workers": NOTHING,
    "eval.gpus_per_worker": NOTHING, "eval.batch_size": NOTHING, "eval.out_dir": NOTHING,
    "layout": NOTHING,
}
"""Every recipe field's role: `section.key` for a shared field, `stages.*.key` for each stage's own (a stage's
`targets:` and `objective:` sections each as one). `stages.*.start` names the model a stage's targets are made with
and its training starts from, so it is a `TARGETS` field."""

CHANGING = {BASE: "reruns every step",
            EMBEDDING: "reruns every step after base",
            TARGETS: "reruns the stage's targets and every step after them",
            TRAINING: "retrains the stage (its checkpoints are not resumed) and reruns every step after it",
            LENGTH: "trains a finished stage on from its checkpoint, then reruns every step after it",
            RANKS: "retrains a finished stage (another global batch); a checkpoint still resumes",
            EVAL: "reruns the evaluation and the report",
            NOTHING: "reruns nothing"}
"""What changing a field of each role does to a run that has already run, in `t2t config --explain`'s words."""

RESUMES_UNDER_CHANGE = frozenset({LENGTH, RANKS, NOTHING, EVAL})
"""The roles a checkpoint resumes under when their fields changed; the others make `resume_identity`."""


def role_of(path: str) -> str | None:
    """The role of a field as `t2t config --explain` writes it (`stages[].targets.tau`, `train.lora.r`): the role of
    the field or of the section that holds it; None for one that holds sections (`stages`)."""
    parts = path.replace("[]", ".*").split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in ROLES:
            return ROLES[".".join(parts[:end])]
    return None


def fields_of(*roles: str) -> list[str]:
    """The fields that have one of `roles`, in `ROLES` order."""
    return [name for name, role in ROLES.items() if role in roles]


def values(cfg: Config, roles, stage: str | None = None) -> dict:
    """The values of the fields with `roles`, by field name: the shared ones, and with `stage` that stage's own as
    `stages.<stage>.key`. A stage's corpus and text cap are the ones it reads (`run_paths.corpus_of`,
    `texts_limit`): the shared default does not decide a stage that sets its own."""
    out = {}
    for name in fields_of(*roles):
        section, _, key = name.rpartition(".")
        if section == "stages.*":
            if stage is not None:
                out[f"stages.{stage}.{key}"] = _plain(getattr(cfg.stage(stage), key))
        elif stage is not None and name == "data.corpus":
            out[name] = run_paths.corpus_of(cfg, stage)
        elif stage is not None and name == "data.max_texts":
            out[name] = run_paths.texts_limit(cfg, stage)
        else:
            out[name] = _plain(getattr(getattr(cfg, section), key) if section else getattr(cfg, key))
    return out


def resume_identity(cfg: Config, stage: str) -> dict:
    """What stage `stage` trains, as `field: value`: every field whose role a checkpoint does not resume under
    (`RESUMES_UNDER_CHANGE`). `cfg` is the recipe as the stage runs it (`run_paths.for_stage`: `model.path` is the
    model it starts from)."""
    return values(cfg, set(ROLES.values()) - RESUMES_UNDER_CHANGE, stage)


def step_fingerprints(cfg: Config) -> dict[str, str]:
    """Per pipeline step, a hash of the fields of its roles and of the fingerprints of the steps it reads from:
    `base` (BASE), each model a stage starts from (its step, and EMBEDDING), `STAGE:targets` (TARGETS),
    `STAGE:train` (TRAINING, LENGTH, RANKS), `eval` (EVAL, every model), `report` (eval)."""
    fp = {"base": _hash(values(cfg, [BASE]))}
    model_fp = {"base": _hash([fp["base"], values(cfg, [EMBEDDING])])}  # each model a stage can start from
    for stage in cfg.stage_names:
        start = cfg.stage(stage).start
        targets = fp[f"{stage}:targets"] = _hash([model_fp[start], values(cfg, [TARGETS], stage)])
        train = values(cfg, [TRAINING, LENGTH, RANKS], stage)
        fp[f"{stage}:train"] = model_fp[stage] = _hash([targets, model_fp[start], train])
    fp["eval"] = _hash([list(model_fp.values()), values(cfg, [EVAL])])
    fp["report"] = _hash([fp["eval"]])
    return fp


def _plain(value):
    """A field's value as plain data (a section as a dict)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
