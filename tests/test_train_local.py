"""launchers/train_local.sh: the DeepSpeed launcher on this machine, its ranks from the recipe, `--resume`, the
stage by name (a number N: the recipe's Nth stage)."""

from __future__ import annotations

import subprocess

import pytest

from train_support import REPO, metrics, rank_env, write_recipe, write_stage_shards


def train_local(recipe, stage: str, *args: str) -> subprocess.CompletedProcess:
    env = rank_env()
    env.pop("NPROC", None)  # the recipe's train.nproc decides
    return subprocess.run(["bash", str(REPO / "launchers" / "train_local.sh"), str(recipe), stage, *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_local_resume_never_and_from_a_directory(tiny_model_dir, tmp_path):
    write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=2, per_shard=8)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "shards", tmp_path / "run",
                          stage1=dict(steps=2, lr=1.0e-3))
    first = train_local(recipe, "stage1", "--resume", "never")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2]

    again = train_local(recipe, "1", "--resume", "never")  # stage 1 of the recipe: stage1, which has checkpoints
    assert again.returncode != 0 and "--resume never" in again.stdout + again.stderr

    ckpt = tmp_path / "run" / "stage1" / "checkpoints" / "step00000002"
    more = train_local(recipe, "stage1", f"--resume={ckpt}", "--set", "stages.stage1.steps=3")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "resumed from" in more.stdout + more.stderr
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3]

    bad = train_local(recipe, "stage1", "--bogus")
    assert bad.returncode == 2 and "unexpected argument --bogus" in bad.stderr
    unknown = train_local(recipe, "stage9")
    assert unknown.returncode == 2, unknown.stderr[-3000:]
    assert "train_local.sh: error: --stage stage9: the recipe's stages are stage1, stage2" in unknown.stderr
