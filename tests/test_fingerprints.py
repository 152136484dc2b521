"""`t2t.fingerprints`: every recipe field has one role, and each answer (a pipeline step, a checkpoint's resume, a
target manifest, an eval cache entry) follows from it: each field is changed in turn and every answer checked."""

from __future__ import annotations

import dataclasses

import pytest

from t2t import fingerprints
from t2t.config import load_config
from t2t.config.schema import Config, StageConfig
from t2t.fingerprints import (BASE, EMBEDDING, EVAL, LENGTH, NOTHING, RANKS, RESUMES_UNDER_CHANGE, ROLES, TARGETS,
                              TRAINING, resume_identity, step_fingerprints)
from t2t.identity import EmbeddingIdentity
from t2t.targets.kinds import TARGET_KINDS

CHANGE = {
    "name": "name=other", "run_dir": "run_dir=runs/other", "seed": "seed=1",
    "model.path": "model.path=m2", "model.gguf": "model.gguf=m.gguf", "model.tiny": "model.tiny.tokenizer_corpus=c.txt",
    "model.arch_config": "model.arch_config=config.json", "model.attention": "model.attention=bidirectional",
    "model.pooling": "model.pooling=eos", "model.prompt": "model.prompt='Text: {text}'",
    "model.padding_side": "model.padding_side=right", "model.max_length": "model.max_length=64",
    "model.dtype": "model.dtype=bfloat16",
    "data.corpus": "data.corpus=other.txt", "data.max_texts": "data.max_texts=5",
    "data.shards_dir": "data.shards_dir=elsewhere", "data.shuffle_buffer": "data.shuffle_buffer=10",
    "data.on_bad_shard": "data.on_bad_shard=skip", "data.loader_workers": "data.loader_workers=0",
    "data.length_group": "data.length_group=2",
    "targets.shard_size": "targets.shard_size=10", "targets.workers": "targets.workers=2",
    "targets.gpus_per_worker": "targets.gpus_per_worker=1", "targets.batch_size": "targets.batch_size=8",
    "targets.max_retries": "targets.max_retries=1",
    "stages.*.start": "stages.stage2.start=base", "stages.*.targets": "stages.stage1.targets.max_target_tokens=5",
    "stages.*.objective": "stages.stage1.objective.name=simcse", "stages.*.steps": "stages.stage1.steps=7",
    "stages.*.lr": "stages.stage1.lr=0.1", "stages.*.schedule": "stages.stage1.schedule=cosine",
    "stages.*.warmup_steps": "stages.stage1.warmup_steps=2",
    "train.ds_config": "train.ds_config=ds_configs/zero3_bf16.json",
    "train.micro_batch_size": "train.micro_batch_size=4",
    "train.grad_accum_steps": "train.grad_accum_steps=2", "train.weight_decay": "train.weight_decay=0.1",
    "train.grad_clip": "train.grad_clip=0.5", "train.adamw_impl": "train.adamw_impl=foreach",
    "train.lora": "train.lora.r=4", "train.train_embeddings": "train.train_embeddings=true",
    "train.save_every": "train.save_every=5", "train.keep_checkpoints": "train.keep_checkpoints=3",
    "train.log_every": "train.log_every=5", "train.monitors": "train.monitors=[csv,tensorboard]",
    "train.peak_flops": "train.peak_flops=1.0e12",
    "train.stop_after_zero_grad_steps": "train.stop_after_zero_grad_steps=0",
    "train.nproc": "train.nproc=2",
    "eval.tasks": "eval.tasks=[BIOSSES]", "eval.benchmark": "eval.benchmark=MTEB(eng, v2)",
    "eval.dtype": "eval.dtype=bfloat16", "eval.workers": "eval.workers=2",
    "eval.gpus_per_worker": "eval.gpus_per_worker=1",
    "eval.batch_size": "eval.batch_size=8", "eval.out_dir": "eval.out_dir=elsewhere",
    "layout": "layout.gpus_per_node=8",
}
"""A change of each field (stage fields in stage 1, or for `start` stage 2). `stages.*.name` is not changed: it is
the key every stage output is found by, and renaming a stage is a new stage."""

BASE_RECIPE = ["model.path=m", "stages.stage1.schedule=warmup", "stages.stage1.warmup_steps=1"]

FIRST_STEP = {BASE: "base", EMBEDDING: "{stage}:targets", TARGETS: "{stage}:targets", TRAINING: "{stage}:train",
              LENGTH: "{stage}:train", RANKS: "{stage}:train", EVAL: "eval"}
"""The first pipeline step a field of each role decides, for the first stage it decides (with everything after
it); NOTHING decides none."""


def recipe_fields() -> set[str]:
    """Every field of the recipe schema, as `ROLES` names them: a shared section's fields one by one, each stage's
    as `stages.*.key`, an optional section (`layout`) as one."""
    names = set()
    for f in dataclasses.fields(Config):
        if f.name == "stages":
            names |= {f"stages.*.{g.name}" for g in dataclasses.fields(StageConfig)}
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            names |= {f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)}
        else:
            names.add(f.name)
    return names


def test_every_recipe_field_has_one_role_and_every_role_is_named():
    assert set(ROLES) == recipe_fields()
    assert set(ROLES.values()) == set(FIRST_STEP) | {NOTHING}
    assert set(CHANGE) == set(ROLES) - {"stages.*.name"}


@pytest.mark.parametrize("field", sorted(CHANGE))
def test_a_change_reruns_and_refuses_to_resume_exactly_what_its_role_says(field):
    base = load_config(None, BASE_RECIPE)
    changed = load_config(None, [*BASE_RECIPE, CHANGE[field]])
    role = ROLES[field]
    stage = CHANGE[field].split(".")[1] if field.startswith("stages.") else "stage1"
    before, after = step_fingerprints(base), step_fingerprints(changed)
    assert list(after) == list(before)
    steps = list(before)
    expected = steps[steps.index(FIRST_STEP[role].format(stage=stage)):] if role in FIRST_STEP else []
    assert [s for s in steps if after[s] != before[s]] == expected, f"{field} ({role})"
    resumes = resume_identity(base, stage) == resume_identity(changed, stage)
    assert resumes == (role in RESUMES_UNDER_CHANGE), f"{field} ({role})"


def test_a_stage_with_its_own_corpus_is_not_decided_by_the_shared_one():
    own = ["model.path=m", "stages.stage1.targets.corpus=mine.txt"]
    before = step_fingerprints(load_config(None, own))
    after = step_fingerprints(load_config(None, [*own, "data.corpus=other.txt"]))
    assert [s for s in before if after[s] != before[s]] == ["stage2:targets", "stage2:train", "eval", "report"]


def test_the_embedding_fields_are_the_embedding_identity():
    """What a manifest records of how the model embeds, and what keys an eval cache entry, is exactly the
    EMBEDDING role (the prompt as the template in effect)."""
    assert {name.split(".")[1] for name in fingerprints.fields_of(EMBEDDING)} == \
        {f.name for f in dataclasses.fields(EmbeddingIdentity)}


@pytest.mark.parametrize("kind", sorted(TARGET_KINDS.names()))
def test_a_target_manifest_records_every_parameter_of_its_kind(kind):
    """`stages.*.targets` is a TARGETS field as a whole: each of its kind's parameters is in the shard manifest,
    but the corpus and the text cap, which the manifest records as the corpus hash and `max_texts`."""
    target_kind = TARGET_KINDS.get(kind)
    spec = target_kind.spec()
    recorded = set(target_kind.manifest_params(spec))
    assert {f.name for f in dataclasses.fields(spec)} - {"corpus", "max_texts"} <= recorded
