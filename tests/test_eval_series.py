"""A checkpoint series: three saved checkpoints of a real (tiny, 1-rank ZeRO-3) training run exported and evaluated
through `t2t eval --checkpoints`, three scores and a best step that `t2t export --best` exports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from t2t.cli import main
from train_support import REPO, rank_env, torchrun, write_recipe, write_stage_shards


@pytest.mark.slow
def test_three_checkpoints_give_three_scores_and_the_best_step(tiny_model_dir, tmp_path, capsys):
    write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=2, per_shard=24)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "shards", tmp_path / "run",
                          save_every=1, keep_checkpoints=3, train_embeddings=True,
                          stage1=dict(steps=3, lr=5.0e-2, schedule="constant"))
    torchrun(1, ["-m", "t2t.cli", "train", "--stage", "stage1", "--config", str(recipe)], tmp_path / "train.log")
    checkpoints = tmp_path / "run" / "stage1" / "checkpoints"

    args = ["eval", "--config", str(recipe), "--checkpoints", str(checkpoints), "--tasks", "STSBenchmark",
            "--workers", "1", "--batch-size", "32"]
    assert main(args) == 0
    series = json.loads((tmp_path / "run" / "stage1" / "series" / "series.json").read_text())
    assert list(series["rows"]) == ["1", "2", "3"] and series["tasks"] == ["STSBenchmark"]
    scores = {int(s): r["scores"]["STSBenchmark"] for s, r in series["rows"].items()}
    assert all(v is not None for v in scores.values()) and len(set(scores.values())) > 1  # the weights moved
    best = max(scores, key=lambda s: (scores[s], -s))
    assert series["best"]["STSBenchmark"] == best and (tmp_path / "run" / "stage1" / "series" / "series.png").is_file()
    assert f"**{scores[best]:.2f}**" in capsys.readouterr().out

    # --every 2 keeps step 2 only; the exports and scores are reused from the first run.
    assert main([*args, "--every", "2", "--out", str(tmp_path / "even")]) == 0
    assert list(json.loads((tmp_path / "even" / "series.json").read_text())["rows"]) == ["2"]

    exported = subprocess.run([sys.executable, "-m", "t2t.cli", "export", "--config", str(recipe), "--stage",
                               "stage1", "--best", "STSBenchmark"], cwd=REPO, env=rank_env(), capture_output=True,
                              text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert f"best on STSBenchmark: step {best}" in exported.stdout
    info = json.loads((tmp_path / "run" / "stage1" / "best-STSBenchmark" / "t2t_train.json").read_text())
    assert info["steps"] == best

    assert main(["eval", "--config", str(recipe), "--checkpoints", str(tmp_path / "run")]) == 2  # not a stage's
    assert "is not the checkpoints directory of a stage" in capsys.readouterr().err
    assert main(["export", "--config", str(recipe), "--stage", "stage1", "--best", "SciFact"]) == 2
    assert "has no scores for 'SciFact'" in capsys.readouterr().err

    # A damaged checkpoint is named and skipped; the series goes on with the others.
    states = max((checkpoints / "step00000002").rglob("*.pt"), key=lambda f: f.stat().st_size)
    states.write_bytes(states.read_bytes()[:1000])
    assert main([*args, "--out", str(tmp_path / "damaged")]) == 0
    series = json.loads((tmp_path / "damaged" / "series.json").read_text())
    assert list(series["rows"]) == ["1", "3"] and list(series["skipped"]) == ["step00000002"]
    assert "Skipped step00000002: " in (tmp_path / "damaged" / "series.md").read_text()
    assert "--checkpoint DIR" not in series["skipped"]["step00000002"]  # `eval` has no such flag
