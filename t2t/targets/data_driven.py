"""Stage-1 (data-driven) targets: the meaningful tokens *in* a text (docs/DESIGN.md §1).

1. Every non-word character (and `_`) becomes a space; English stopwords (case-insensitive,
   scikit-learn's list, shipped with the package) are dropped; so is bare punctuation.
2. What is left is tokenized with the backbone's tokenizer, cut at `max_target_tokens`; every
   special token and every token that decodes to whitespace only (`▁`, `Ġ`, Llama-3's BOS, ...)
   is dropped, decided per vocabulary entry so it holds for any tokenizer style.
3. The target is uniform over the unique surviving ids (or, with `weighting: idf`, proportional
   to their corpus IDF from a first pass). A text with none gets an empty target.

    from t2t.targets.kinds import DataDrivenTargets
    from t2t.targets.data_driven import DataDrivenBuilder
    batch, truncated = DataDrivenBuilder(tokenizer, DataDrivenTargets(), vocab_size).targets(texts)

The `data-driven` target kind (`t2t.targets.kinds`) runs it in Ray workers through `DataDrivenWorker`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np

from t2t.errors import UserError
from t2t.targets.sparse import TargetBatch

_NON_WORD = re.compile(r"[\W_]+")


def stopword_list(name: str) -> frozenset[str]:
    """The named stopword list, lower-cased; `sklearn-english` comes from the installed scikit-learn."""
    if name == "sklearn-english":
        return frozenset(w.lower() for w in sklearn_english_stopwords())
    if name == "none":
        return frozenset()
    raise UserError(f"unknown stopword list {name!r}; use sklearn-english or none")


def sklearn_english_stopwords() -> frozenset[str]:
    """scikit-learn's `ENGLISH_STOP_WORDS`, read from the installed package's source as a literal: importing
    sklearn costs 1.5-2 s of CPU, and every process that checks whether a stage's targets are up to date (each
    `t2t pipeline`, each sweep step) needs the list's hash, not sklearn."""
    source = Path(importlib.util.find_spec("sklearn").origin).parent / "feature_extraction" / "_stop_words.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["ENGLISH_STOP_WORDS"]:
            return frozenset(ast.literal_eval(node.value.args[0]))
    raise AssertionError(f"{source} no longer assigns ENGLISH_STOP_WORDS a literal list (scikit-learn is pinned)")


def stopwords_hash(words: frozenset[str]) -> str:
    """A hash of the list itself, so a changed scikit-learn list shows up in the manifest."""
    return hashlib.sha256("\n".join(sorted(words)).encode()).hexdigest()[:16]


def clean_text(text: str, stopwords: frozenset[str]) -> str:
    """Non-word characters to spaces, stopwords out, words joined by single spaces."""
    return " ".join(w for w in _NON_WORD.sub(" ", text).split() if w.lower() not in stopwords)


def droppable_ids(tokenizer) -> np.ndarray:
    """Boolean mask over the vocabulary: special tokens and tokens that decode to whitespace only."""
    size = len(tokenizer)
    drop = np.zeros(size, dtype=bool)
    special = set(tokenizer.all_special_ids)
    special.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    drop[[i for i in special if 0 <= i < size]] = True
    # Decoding each id alone is what makes this tokenizer-agnostic: `Ġ`, `▁`, byte tokens for
    # tabs and newlines all decode to whitespace (or nothing), whatever their spelling.
    decoded = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    drop |= np.fromiter((not s.strip() for s in decoded), dtype=bool, count=size)
    return drop


def idf_weights(document_frequency: np.ndarray, texts: int) -> np.ndarray:
    """Smoothed IDF (as scikit-learn's `TfidfVectorizer`): ln((1 + n) / (1 + df)) + 1, always > 0."""
    df = document_frequency.astype(np.float64)
    return np.log((1.0 + texts) / (1.0 + df)) + 1.0


class DataDrivenBuilder:
    """Builds data-driven targets for batches of texts with one tokenizer."""

    def __init__(self, tokenizer, targets, vocab_size: int):
        """`targets`: a `DataDrivenTargets` (stopwords, max_target_tokens, weighting)."""
        if len(tokenizer) > vocab_size:
            raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model's LM head only {vocab_size}")
        self.tokenizer = tokenizer
        self.max_tokens = targets.max_target_tokens
        self.weighting = targets.weighting
        self.stopwords = stopword_list(targets.stopwords)
        self.vocab_size = vocab_size
        # A Python set is faster than array indexing for the short id lists of one text.
        self.dropped = frozenset(np.flatnonzero(droppable_ids(tokenizer)).tolist())

    def token_ids(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Per text, the sorted unique surviving ids; and how many texts were cut at `max_target_tokens`."""
        cleaned = [clean_text(t, self.stopwords) for t in texts]
        encoded = self.tokenizer(cleaned, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        truncated = 0
        result = []
        for row in encoded:
            if len(row) > self.max_tokens:
                truncated += 1
                row = row[: self.max_tokens]
            result.append(sorted(set(row) - self.dropped))
        return result, truncated

    def document_frequency(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(df over the vocabulary, int64) for the IDF pass, and how many texts it counted."""
        ids, _ = self.token_ids(texts)
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
        return np.bincount(flat, minlength=self.vocab_size), len(texts)

    def targets(self, texts: list[str], idf: np.ndarray | None = None) -> tuple[TargetBatch, int]:
        """(targets of `texts`, number of texts truncated). `idf` is required with `weighting: idf`."""
        if (self.weighting == "idf") != (idf is not None):
            raise ValueError("weighting=idf needs the corpus IDF weights (and only it uses them)")
        ids, truncated = self.token_ids(texts)
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(lengths.sum()))
        weights = idf[flat] if idf is not None else np.ones(flat.size)
        return TargetBatch.pack(flat, weights, lengths), truncated


class DataDrivenWorker:
    """The `data-driven` kind inside a target worker: the tokenizer loaded once, then chunk after chunk."""

    def __init__(self, model_dir: str, spec, vocab_size: int, batch_size: int, embedder=None):
        from t2t.data.tokens import load_tokenizer

        self.builder = DataDrivenBuilder(load_tokenizer(model_dir), spec, vocab_size)

    def reduce(self, pass_name: str, texts: list[str]) -> tuple[np.ndarray, int]:
        assert pass_name == "idf", pass_name
        return self.builder.document_frequency(texts)

    def targets(self, texts: list[str], arrays: dict[str, np.ndarray]) -> tuple[TargetBatch, dict]:
        batch, truncated = self.builder.targets(texts, arrays.get("idf"))
        return batch, dict(truncated=truncated)
