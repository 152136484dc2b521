"""ZeRO-3 sharding is exact: 2 ranks give the loss and gradients of 1 process on the same global batch.

`t2t` and `mntp`: 2 ranks × 2 micro-steps. `simcse`: 2 ranks × 1 micro-step, its in-batch negatives
gathered over the ranks with gradients (see tests/dist_step_check.py for why not 2 micro-steps). `sum` (t2t + 0.5 ×
simcse): as simcse, each part normalised by its own count over the global batch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from train_support import REPO, rank_env, torchrun, write_recipe, write_stage_shards

SCRIPT = str(REPO / "tests" / "dist_step_check.py")


@pytest.fixture(scope="module")
def two_and_one(tiny_model_dir, tmp_path_factory):
    """One launch of each: 2 ranks and 1 process, both objectives in each."""
    root = tmp_path_factory.mktemp("sharding")
    write_stage_shards(tiny_model_dir, root / "shards" / "stage1", n_shards=2, per_shard=8)
    recipe = write_recipe(root / "r.yaml", tiny_model_dir, root / "shards", root / "run")
    torchrun(2, [SCRIPT, str(recipe), str(root / "two.pt")], root / "two.log")
    done = subprocess.run([sys.executable, SCRIPT, str(recipe), str(root / "one.pt")], env=rank_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two, one = torch.load(root / "two.pt"), torch.load(root / "one.pt")
    assert (two["world"], one["world"]) == (2, 1)
    return two, one


@pytest.mark.slow
@pytest.mark.parametrize("objective, counted", [("t2t", 7), ("simcse", 8), ("mntp", None),
                                                ("sum", {"t2t": 7, "simcse": 8})])
def test_two_ranks_match_one_process(two_and_one, objective, counted):
    two, one = (r[objective] for r in two_and_one)
    # t2t: 8 texts, one with an empty target; simcse counts every text; mntp the masked tokens of all 8
    if objective == "sum":  # each part its own count, and its own mean loss
        assert {k: n for k, (_, n) in two["parts"].items()} == {k: n for k, (_, n) in one["parts"].items()} == counted
        for k, (loss, _) in one["parts"].items():
            assert two["parts"][k][0] == pytest.approx(loss, rel=1e-6)
    else:
        assert two["counted"] == one["counted"] == (counted or one["counted"]) > 0
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["grads"].keys() == one["grads"].keys() and len(one["grads"]) > 10
    for name, g in one["grads"].items():
        if "embed_tokens" in name or name.endswith("lm_head.weight"):
            # frozen by default (train.train_embeddings: false): no gradient on any rank
            assert g is None and two["grads"][name] is None, name
            continue
        if objective == "simcse" and name.endswith("lm_head.weight"):
            # SimCSE uses the pooled state only: the untied LM head gets no gradient
            assert g is None or g.abs().sum() == 0, name
            assert two["grads"][name] is None or two["grads"][name].abs().sum() == 0, name
            continue
        assert g.abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")
