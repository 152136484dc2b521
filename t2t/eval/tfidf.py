"""A TF-IDF baseline: the lexical floor any trained embedder should beat.

    t2t tfidf --corpus data/corpus/wiki_sentences_60k.txt.gz --out runs/baselines/tfidf
    t2t eval --model runs/baselines/tfidf all-MiniLM-L6-v2 runs/demo/stage1/model

Text2Token embeddings point at the tokens of a text, so plain word overlap is the obvious thing
they must improve on. `fit_tfidf` fits scikit-learn's TfidfVectorizer on the training corpus and
saves it as a model directory: `tfidf_vocabulary.json` (word → column), `tfidf_idf.npy` (the IDF
weights) and `tfidf_config.json` (the vectorizer's settings). No pickle: loading a directory someone
hands you runs none of its code. `t2t eval` recognises such a directory (see `t2t.eval.models`) and
runs it through `TfidfEncoder` like any other model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from t2t.data.corpus import CorpusStats, iter_texts
from t2t.data.files import replace_dir
from t2t.errors import UserError

TFIDF_CONFIG = "tfidf_config.json"
TFIDF_MODEL = "tfidf_idf.npy"
TFIDF_VOCAB = "tfidf_vocabulary.json"
LEGACY_PICKLE = "tfidf.joblib"
# The vectorizer's settings: fixed here, for fitting and loading alike; each fit records them in its config.
SETTINGS = dict(sublinear_tf=True, lowercase=True, norm="l2", smooth_idf=True)


def _vectorizer(max_features: int | None, vocabulary: dict | None = None):
    import sklearn.feature_extraction.text as sk_text

    return sk_text.TfidfVectorizer(max_features=max_features, vocabulary=vocabulary, dtype=np.float32, **SETTINGS)


def _fit_vectorizer(texts: list[str], max_features: int, corpus: str | Path):
    # Sublinear tf (1 + log tf) keeps a word repeated in one text from dominating it; the default
    # lowercase word tokenisation and l2 norm make a dot product of two rows their cosine.
    vectorizer = _vectorizer(max_features)
    try:
        vectorizer.fit(texts)
    except ValueError as e:  # e.g. "empty vocabulary": texts with no word of two or more characters
        raise UserError(f"corpus {corpus}: TF-IDF could not be fitted ({e})") from None
    return vectorizer


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` onto `out`; an older TF-IDF directory (or an empty one) there is replaced, anything
    else is kept."""
    if out.exists() and not (out / TFIDF_CONFIG).is_file() and any(out.iterdir()):
        raise UserError(f"output directory {out} exists and is not a TF-IDF model directory "
                        f"(no {TFIDF_CONFIG}); refusing to overwrite it")
    replace_dir(tmp, out)


def fit_tfidf(corpus: str | Path, out_dir: str | Path, max_texts: int = 100_000,
              max_features: int = 16384) -> Path:
    """Fit a TF-IDF vectorizer on (at most `max_texts` of) `corpus` and save it as a model directory in `out_dir`.

    `max_features` caps the vocabulary and so the embedding size. mteb wants dense float32 arrays,
    so one encode call holds texts × max_features × 4 bytes: 16384 dims × ~13k texts (Banking77's
    train + test) stays under 1 GB. The directory is written next to `out_dir` and renamed into
    place, so `t2t eval` (which keys its cache by the directory's content) never sees half of one.
    """
    if max_texts < 1 or max_features < 1:
        raise UserError(f"max_texts and max_features must be >= 1 (got {max_texts}, {max_features})")
    texts = [t.text for t in iter_texts(corpus, CorpusStats(), limit=max_texts)]
    if not texts:
        raise UserError(f"corpus {corpus} holds no texts to fit TF-IDF on")
    vectorizer = _fit_vectorizer(texts, max_features, corpus)

    import sklearn

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a run that crashed under the same pid
    tmp.mkdir()
    try:
        vocabulary = {word: int(column) for word, column in vectorizer.vocabulary_.items()}
        (tmp / TFIDF_VOCAB).write_text(json.dumps(vocabulary, ensure_ascii=False, sort_keys=True))
        np.save(tmp / TFIDF_MODEL, vectorizer.idf_.astype(np.float64))
        config = dict(corpus=str(corpus), texts=len(texts), max_texts=max_texts, max_features=max_features,
                      vocabulary_size=len(vocabulary), settings=SETTINGS, sklearn_version=sklearn.__version__)
        (tmp / TFIDF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_tfidf_dir(path: str | Path) -> Path:
    """`path`, unless its arrays are missing (a UserError that says to refit, naming the directory)."""
    p = Path(path)
    if not (p / TFIDF_MODEL).is_file() or not (p / TFIDF_VOCAB).is_file():
        legacy = " (it holds a pickled model from an older t2t, which is never loaded)" \
            if (p / LEGACY_PICKLE).is_file() else ""
        raise UserError(f"TF-IDF directory {p} has no {TFIDF_MODEL} and {TFIDF_VOCAB}{legacy}; "
                        f"refit it with `t2t tfidf`")
    return p


def load_tfidf(path: str | Path):
    """The fitted vectorizer of a TF-IDF directory, rebuilt from its vocabulary and IDF arrays (no pickle)."""
    p = check_tfidf_dir(path)
    try:
        vocabulary = json.loads((p / TFIDF_VOCAB).read_text())
        idf = np.load(p / TFIDF_MODEL, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"TF-IDF directory {p} is damaged ({e}); refit it with `t2t tfidf`") from None
    if not isinstance(vocabulary, dict) or idf.shape != (len(vocabulary),):
        raise UserError(f"TF-IDF directory {p}: {TFIDF_VOCAB} and {TFIDF_MODEL} do not match; refit it")
    vectorizer = _vectorizer(None, vocabulary)
    vectorizer.idf_ = idf  # sklearn's setter builds the fitted transformer around the fixed vocabulary
    return vectorizer
