"""The local mteb tasks: official split/metric/main score, the shipped data, sampling and bad data files."""

from __future__ import annotations

import shutil

import mteb
import pytest

from t2t.errors import UserError
from t2t.eval.tasks import DEFAULT_DATA_DIR, LOCAL_TASKS, local_task, read_tsv


@pytest.mark.parametrize("name", list(LOCAL_TASKS))
def test_local_task_follows_the_official_one(name):
    local, official = local_task(name), mteb.get_task(name)
    for field in ("name", "type", "main_score", "eval_splits", "eval_langs", "category"):
        assert getattr(local.metadata, field) == getattr(official.metadata, field), field
    assert isinstance(local, type(official).__mro__[1])  # the same mteb abstract task class
    assert local.metadata.revision.startswith("local-") and "Local copy" in local.metadata.description


def test_full_data_matches_the_documented_counts():
    counts = {}
    for name in LOCAL_TASKS:
        task = local_task(name)
        task.load_data()
        counts[name] = task.dataset
    assert len(counts["STSBenchmark"]["test"]) == 1379
    assert len(counts["BIOSSES"]["test"]) == 100
    scifact = counts["SciFact"]["default"]["test"]
    assert (len(scifact["corpus"]), len(scifact["queries"])) == (5183, 300)
    assert sum(len(d) for d in scifact["relevant_docs"].values()) == 339
    banking = counts["Banking77Classification"]
    assert (len(banking["train"]), len(banking["test"]), len(set(banking["test"]["label"]))) == (10003, 3080, 77)
    news = counts["TwentyNewsgroupsClustering"]["test"]
    assert len(news[0]["sentences"]) == 7532 and len(set(news[0]["labels"])) == 20
    twitter = counts["TwitterURLCorpus"]["test"]
    assert len(twitter) == 9334 and sum(twitter["labels"]) == 1821


def test_max_samples_gives_the_same_seeded_sample():
    a, b = local_task("SciFact", max_samples=20), local_task("SciFact", max_samples=20)
    a.load_data(), b.load_data()
    qa, qb = a.dataset["default"]["test"], b.dataset["default"]["test"]
    assert qa["queries"]["id"] == qb["queries"]["id"] and len(qa["queries"]) == 20
    relevant = {d for docs in qa["relevant_docs"].values() for d in docs}
    assert relevant <= set(qa["corpus"]["id"]) and set(qa["relevant_docs"]) == set(qa["queries"]["id"])
    sts = local_task("STSBenchmark", max_samples=50)
    sts.load_data()
    assert len(sts.dataset["test"]) == 50


def test_changed_or_missing_data_file_is_named(tmp_path):
    shutil.copytree(DEFAULT_DATA_DIR / "sts", tmp_path / "sts")
    task = local_task("BIOSSES", data_dir=tmp_path)
    with (tmp_path / "sts" / "biosses_test.tsv").open("a") as f:
        f.write("one more\tline\t1.0\n")
    with pytest.raises(UserError, match=r"biosses_test\.tsv has changed"):
        task.load_data()
    (tmp_path / "sts" / "biosses_test.tsv").unlink()
    with pytest.raises(UserError, match=r"biosses_test\.tsv not found"):
        local_task("BIOSSES", data_dir=tmp_path).load_data()


def test_bad_tsv_line_names_file_and_line(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("sentence1\tsentence2\tscore\na\tb\t1\nonly one field\n")
    with pytest.raises(UserError, match=r"x\.tsv:3: expected 3"):
        read_tsv(p, ("sentence1", "sentence2", "score"))
    with pytest.raises(UserError, match=r"x\.tsv:1: expected columns"):
        read_tsv(p, ("text", "label"))


def test_unknown_local_task_lists_the_available_ones():
    with pytest.raises(UserError, match="a local task must be one of STSBenchmark, BIOSSES, SciFact, .*; "
                                        "got 'STSBenchmrk'; did you mean 'STSBenchmark'"):
        local_task("STSBenchmrk")
