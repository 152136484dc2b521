"""Model directories as mteb encoders, each with a ModelMeta unique to its content.

Two kinds of directory are accepted:
- a t2t export (`t2t_config.json` present): loaded with `t2t.model.load` and embedded with
  `Embedder.encode` (its prompt, pooling and attention mode, length-sorted batches);
- a plain sentence-transformers directory (`modules.json`), e.g. a reference model such as
  all-MiniLM-L6-v2: loaded offline and run through mteb's own SentenceTransformer wrapper.

mteb caches results per (model name, revision, task). The revision here is a SHA-256 of every
file in the directory, so two checkpoints never share cached results, and an unchanged
directory reuses them. A sample cap for smoke tests goes into the meta's `experiment_kwargs`,
which mteb keeps in a separate cache folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mteb.models import ModelMeta, SentenceTransformerEncoderWrapper
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from t2t.model.io import T2T_CONFIG, check_model_dir, load

ST_MODULES = "modules.json"


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a model and what the cache needs to key its results."""

    path: str
    name: str
    kind: str  # "t2t" or "sentence-transformers"
    revision: str
    experiment_kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def mteb_name(self) -> str:
        return f"t2t-eval/{self.name}"


def content_hash(path: Path) -> str:
    """SHA-256 over the relative path and bytes of every file in the directory (sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_kind(path: Path) -> str:
    if (path / T2T_CONFIG).is_file():
        return "t2t"
    if (path / ST_MODULES).is_file():
        return "sentence-transformers"
    raise ValueError(f"model directory {path} is neither a t2t export ({T2T_CONFIG}) "
                     f"nor a sentence-transformers directory ({ST_MODULES})")


def describe_model(path: str | Path, name: str | None = None, max_samples: int = 0) -> ModelSpec:
    """Check a model directory and key it by content; a missing or unusable directory is a ValueError naming it."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model directory {p} does not exist")
    kind = model_kind(p)
    if kind == "t2t":
        check_model_dir(p)  # names a missing config, weights or tokenizer before any worker starts
    display = re.sub(r"[^A-Za-z0-9._-]+", "_", name or p.resolve().name)
    return ModelSpec(path=str(p.resolve()), name=display, kind=kind, revision=content_hash(p)[:16],
                     experiment_kwargs={"max_samples": max_samples} if max_samples else {})


def model_meta(spec: ModelSpec, embed_dim: int | None = None, max_tokens: int | None = None) -> ModelMeta:
    return ModelMeta.create_empty(overwrites=dict(
        name=spec.mteb_name, revision=spec.revision, similarity_fn_name=ScoringFunction.COSINE,
        framework=["PyTorch"] if spec.kind == "t2t" else ["Sentence Transformers", "PyTorch"],
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
    """An exported t2t embedder as an mteb encoder (no task instructions: the export's prompt applies)."""

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


def load_encoder(spec: ModelSpec, device: str | None = None) -> AbsEncoder:
    """Load the model of `spec` (offline) as an mteb encoder on `device` (default: cuda if available)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec.kind == "t2t":
        embedder = load(spec.path).to(device)
        meta = model_meta(spec, embedder.lm.config.hidden_size, embedder.settings.max_length)
        return T2TEncoder(embedder, meta)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(spec.path, device=device, local_files_only=True)
    meta = model_meta(spec, st.get_embedding_dimension(), st.max_seq_length)
    return CheckedSentenceTransformer(st, meta)
