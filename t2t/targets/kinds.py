"""Target kinds: what a stage's target token distributions are, as a registry (docs/DESIGN.md §1).

A stage's `targets:` section names its `kind`; the kind owns
- its parameters: a dataclass (the recipe's typed section; `manifest_params` puts what decides the targets
  into the shard manifest, so a changed parameter never reuses old shards);
- its corpus passes: vectors summed over the whole corpus before any shard is written (IDF, background θ);
- its worker: `builder()` builds, inside a Ray worker, the object that turns chunks of texts into pass sums
  and target batches;
- its check against the model config (`validate`, at recipe load).

The Ray driver (`t2t.jobs.targets`) knows none of them by name. A new kind is a builder in its own module
plus a `TargetKind` subclass registered here with `register_target_kind`.

This module imports neither torch nor Ray: the recipe loader reads it.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from t2t.errors import ConfigError
from t2t.registry import Registry

EPSILON = 1e-8
"""The constant in r = p / (p + q + ε) of model-derived targets (docs/DESIGN.md §1)."""


@dataclass
class TargetsSpec:
    """What every kind's `targets:` section has: the kind, and which texts."""

    kind: str = ""
    """The target kind (`data-driven`, `model-derived`)."""
    corpus: str = ""
    """Corpus of this stage's targets (and texts); empty means `data.corpus`."""
    max_texts: int = 0
    """Read at most this many texts of the corpus (0 = `data.max_texts`)."""


@dataclass
class DataDrivenTargets(TargetsSpec):
    """Data-driven targets: the meaningful tokens *in* the text (Text2Token stage 1)."""

    kind: str = "data-driven"
    """The target kind (`data-driven`, `model-derived`)."""
    stopwords: Literal["sklearn-english", "none"] = "sklearn-english"
    """English stopword list removed before tokenizing (scikit-learn's, shipped with the package)."""
    max_target_tokens: int = 128
    """Truncate the cleaned text at this many tokens."""
    weighting: Literal["uniform", "idf"] = "uniform"
    """Uniform over unique ids (the method) or corpus IDF (an ablation)."""


@dataclass
class ModelDerivedTargets(TargetsSpec):
    """Model-derived targets: the tokens the stage's start model ties to the text beyond it (Text2Token stage 2)."""

    kind: str = "model-derived"
    """The target kind (`data-driven`, `model-derived`)."""
    tau: float = 1e-5
    """Temperature of `softmax(r / tau)`."""
    delta: float = 1e-6
    """Keep ids whose weight is at least `delta` times the largest."""
    top_k: int = 64
    """Keep at most this many ids per text."""


@dataclass(frozen=True)
class CorpusPass:
    """A vector summed over every text of the corpus, in chunk order, before the shards are written."""

    name: str
    """Its key in the manifest and the name the builder's `reduce` and `targets` know it by."""
    file: str
    """Where the finished vector is saved, next to the shards."""
    finish: Callable[[np.ndarray, int], np.ndarray]
    """(sum over the corpus, texts counted) → the vector the targets use."""


class TargetKind(ABC):
    """One kind of target distribution; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    spec: ClassVar[type[TargetsSpec]]
    runs_model: ClassVar[bool] = False
    """Its workers run the start model (one model per worker, GPUs on a cluster), so the model's weights and its
    embedding identity decide the targets; otherwise only the tokenizer does."""

    def validate(self, spec: TargetsSpec, key: str) -> None:
        """Raise a ConfigError naming `key` (e.g. `stages.stage2.targets`) for a bad parameter. A kind whose
        parameters are all checked by their types (Literal, int) keeps this default, which accepts them."""
        return None

    @abstractmethod
    def manifest_params(self, spec: TargetsSpec) -> dict:
        """Every parameter that decides the targets' bytes, for the shard manifest."""

    def corpus_passes(self, spec: TargetsSpec) -> list[CorpusPass]:
        return []

    worker: ClassVar[str]
    """`module:Class` of what a Ray worker builds once and feeds chunk after chunk: `Class(model_cfg, model_dir, spec,
    vocab_size, batch_size)` with `reduce(pass_name, texts) -> (vector, texts)` and
    `targets(texts, arrays: {pass name: vector}) -> (TargetBatch, counts)`; `counts` go into the ledger. Named, not
    imported: the recipe loader reads this module, and the worker may need the model."""

    def builder(self, model_dir: str, spec: TargetsSpec, vocab_size: int, batch_size: int, embedder=None):
        """The kind's worker, built inside a target worker. A kind that `runs_model` is handed the frozen start
        model as an `Embedder` (loaded by the job's worker, `t2t.jobs.target_workers`); it never loads one."""
        module, name = self.worker.split(":")
        return getattr(importlib.import_module(module), name)(model_dir, spec, vocab_size, batch_size, embedder)

    def summary(self, entries: list[dict], params: dict) -> dict | None:
        """What the manifest says about the whole job beyond counts (from the ledger entries), or None."""
        return None


TARGET_KINDS = Registry[TargetKind]("target kind", ConfigError)


def register_target_kind(kind: TargetKind) -> TargetKind:
    return TARGET_KINDS.register(kind.name, kind)


def target_kind(name: str, key: str = "targets.kind") -> TargetKind:
    return TARGET_KINDS.get(name, key)


# --------------------------------------------------------------------------- the two Text2Token kinds


class DataDriven(TargetKind):
    """Uniform (or IDF) over the unique meaningful tokens of the text itself (`t2t.targets.data_driven`)."""

    name = "data-driven"
    spec = DataDrivenTargets
    worker = "t2t.targets.data_driven:DataDrivenWorker"

    def validate(self, spec: DataDrivenTargets, key: str) -> None:
        if spec.max_target_tokens < 1:
            raise ConfigError(f"{key}.max_target_tokens must be at least 1, got {spec.max_target_tokens}")

    def manifest_params(self, spec: DataDrivenTargets) -> dict:
        from t2t.targets.data_driven import stopword_list, stopwords_hash

        return dict(kind=self.name, stopwords=spec.stopwords, stopwords_sha256=stopwords_hash(stopword_list(spec.stopwords)),
                    max_target_tokens=spec.max_target_tokens, weighting=spec.weighting)

    def corpus_passes(self, spec: DataDrivenTargets) -> list[CorpusPass]:
        from t2t.targets.data_driven import idf_weights

        return [CorpusPass("idf", "idf.npy", idf_weights)] if spec.weighting == "idf" else []



class ModelDerived(TargetKind):
    """softmax(r/τ) of the start model's own LM-head distribution against the corpus background, sparsified
    (`t2t.targets.model_derived`)."""

    name = "model-derived"
    spec = ModelDerivedTargets
    runs_model = True
    worker = "t2t.targets.model_derived:ModelDerivedWorker"

    def validate(self, spec: ModelDerivedTargets, key: str) -> None:
        for field_name in ("tau", "delta"):
            value = getattr(spec, field_name)
            if not (math.isfinite(value) and 0 < value < 1):
                raise ConfigError(f"{key}.{field_name} must be in (0, 1), got {value}")
        if spec.top_k < 1:
            raise ConfigError(f"{key}.top_k must be at least 1, got {spec.top_k}")

    def manifest_params(self, spec: ModelDerivedTargets) -> dict:
        return dict(kind=self.name, tau=spec.tau, delta=spec.delta, top_k=spec.top_k, epsilon=EPSILON)

    def corpus_passes(self, spec: ModelDerivedTargets) -> list[CorpusPass]:
        return [CorpusPass("background", "background_theta.npy", lambda total, texts: total / texts)]


    def summary(self, entries: list[dict], params: dict) -> dict:
        texts = max(sum(e["samples"] for e in entries), 1)
        return dict(dropped_mass=dict(
            bound=max(e["dropped_max"] for e in entries),
            delta_bound=(params["vocab_size"] - 1) * params["target"]["delta"],
            mean=sum(e["dropped_sum"] for e in entries) / texts,
            texts_cut_by_top_k=sum(e["cut_by_top_k"] for e in entries)))


register_target_kind(DataDriven())
register_target_kind(ModelDerived())


def spec_from(raw: dict, build: Callable[[type, Any, str], Any], key: str) -> TargetsSpec:
    """The typed spec of a `targets:` mapping, by its `kind` (`build` is the recipe loader's `from_dict`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a mapping with a kind, got {type(raw).__name__}")
    kind = target_kind(raw.get("kind", ""), f"{key}.kind")
    spec = build(kind.spec, raw, f"{key}.")
    kind.validate(spec, key)
    return spec
