"""The quality study's report renders from its committed results.json, with no machine paths."""

import json
from pathlib import Path

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"


def test_results_render_every_arm_without_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    from report import ARMS, write_results

    saved = json.loads((QUALITY / "results.json").read_text())
    # paths as run_study hands them over: absolute, on whatever machine ran the study
    table = dict(saved["table"], models=[dict(m, path=str(QUALITY.parents[1] / m["path"]))
                                         for m in saved["table"]["models"]])
    write_results(tmp_path, table, saved["alignment"], saved["state"], saved["meta"])
    text = (tmp_path / "RESULTS.md").read_text()
    for _, label in ARMS:
        assert f"| {label} |" in text
    assert str(QUALITY.parents[1]) not in text and (tmp_path / "scores.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["t2t-stage1"]["models"] == [
        "t2t-stage1-seed0", "t2t-stage1-seed1"]
