"""Study v2's report reads its goals off the numbers, with no machine paths, and merges its evaluations."""

from pathlib import Path

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"


def synthetic_table(scores: dict[str, dict[str, float]]) -> dict:
    """A results table as run_eval returns it, for the given model → task → score."""
    tasks = [{"name": "STSBenchmark", "category": "STS"}, {"name": "SciFact", "category": "Retrieval"}]
    return {"models": [{"name": n, "path": str(QUALITY / "runs" / n), "kind": "t2t", "mteb_name": n,
                        "revision": "r"} for n in scores],
            "tasks": [dict(t, main_score="x", splits=["test"], source="local", dataset_revision="r") for t in tasks],
            "scores": scores, "status": {n: {} for n in scores}, "errors": {n: {} for n in scores},
            "seconds": {n: {} for n in scores}, "max_samples": 0,
            "category_means": {n: {"STS": s["STSBenchmark"], "Retrieval": s["SciFact"]} for n, s in scores.items()},
            "overall_mean": {n: (s["STSBenchmark"] + s["SciFact"]) / 2 for n, s in scores.items()}}


def test_study_v2_reads_its_goals_off_the_numbers_and_lists_what_is_missing(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(QUALITY / "smollm2"))  # its summary.py
    spec = importlib.util.spec_from_file_location("study_v2_report", QUALITY / "smollm2" / "report.py")
    v2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(v2)
    scores = {"prompteol-untrained": {"STSBenchmark": 65.0, "SciFact": 20.0},
              "t2t-s1-seed0": {"STSBenchmark": 69.0, "SciFact": 24.0},
              "t2t-s1-seed1": {"STSBenchmark": 67.0, "SciFact": 24.0},
              "llm2vec-seed0": {"STSBenchmark": 60.0, "SciFact": 22.0},
              "llm2vec-seed1": {"STSBenchmark": 61.0, "SciFact": 22.0}}
    steps = dict(t2t=30, t2t_stage1_part=22, t2t_stage2=8, simcse=12, llm2vec_each=8)
    meta = dict(minutes=10, seeds=[0, 1], corpus="c", texts=8000, heldout=500, eval_cap=1000, steps=steps,
                steps_long=steps, planned=list(scores) + ["t2t-s12-seed0"], session_minutes=3)
    state = {"seconds_per_step/t2t": 18.0, "seconds/t2t-s1-seed0/stage1": dict(
        seconds=540, load_before=[2.0, 2.0, 2.0], load_after=[2.1, 2.0, 2.0], steps=30)}
    alignment = {n: {"hit@10": 0.5, "precision@10": 0.1} for n in scores}
    v2.write_results(tmp_path, synthetic_table(scores), alignment, state, meta)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Text2Token (best: t2t-s1) 46.00 vs LLM2Vec-unsupervised 41.25" in text and "**met**" in text
    assert "STSBenchmark 68.00 vs the training-free PromptEOL 65.00: +3.00 points (goal +3): **met**" in text
    assert "Stage 2 adds to stage 1: not measured yet." in text and "Not yet run: t2t-s12-seed0." in text
    assert "| (3) Text2Token stage 1 (PromptEOL) | 68.00 [2.00] |" in text
    assert "| t2t-s1-seed0 | stage1 | 30 | 540 | [2.0, 2.0, 2.0] → [2.1, 2.0, 2.0] |" in text
    assert str(QUALITY) not in text

    # One seed of each arm has no spread: a gain is not established, whatever its size.
    scores["t2t-s12-seed0"] = {"STSBenchmark": 70.0, "SciFact": 30.0}
    del scores["t2t-s1-seed1"]
    v2.write_results(tmp_path, synthetic_table(scores), alignment, state, dict(meta, seeds=[0]))
    text = (tmp_path / "RESULTS.md").read_text()
    assert ("Stage 2 on top of stage 1, six-task mean: 50.00 vs 46.50 (+3.50, one seed, no spread yet): "
            "**not established (one seed)**") in text


def test_study_v2_merges_its_full_and_capped_evaluations():
    import sys

    sys.path.insert(0, str(QUALITY / "smollm2"))
    try:
        from run_study import merge_tables
    finally:
        sys.path.remove(str(QUALITY / "smollm2"))
    full = synthetic_table({"a": {"STSBenchmark": 60.0, "SciFact": 10.0}})
    capped = dict(synthetic_table({"a": {"STSBenchmark": 0.0, "SciFact": 0.0}}), max_samples=1000)
    full["tasks"], capped["tasks"] = full["tasks"][:1], capped["tasks"][1:]
    full["scores"]["a"], capped["scores"]["a"] = {"STSBenchmark": 60.0}, {"SciFact": 20.0}
    table = merge_tables(full, capped)
    assert [t["name"] for t in table["tasks"]] == ["STSBenchmark", "SciFact"]
    assert table["tasks"][1]["max_samples"] == 1000 and table["overall_mean"]["a"] == 40.0
    assert table["category_means"]["a"] == {"STS": 60.0, "Retrieval": 20.0}
