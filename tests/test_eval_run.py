"""`t2t eval` end to end on a tiny exported model: every local task, Ray workers, cache, failures, bad input.

Local tasks are capped with `max_samples` (a seeded sample per split) so the suite stays fast.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from t2t.eval import run_eval
from t2t.eval.tasks import DEFAULT_DATA_DIR, LOCAL_TASKS
from t2t.dtypes import usable_dtype
from t2t.errors import UserError

CAP = 48
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory):
    from t2t.config import ModelConfig
    from t2t.model import export, from_config

    return export(from_config(ModelConfig(path=str(tiny_model_dir))), tmp_path_factory.mktemp("eval") / "tiny-export")


@pytest.fixture(scope="module")
def one_worker_run(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-1w")
    return out, run_eval([str(tiny_export)], workers=1, out_dir=str(out), max_samples=CAP, batch_size=16)


def test_every_local_task_runs_end_to_end(one_worker_run):
    out, table = one_worker_run
    (model,) = table["models"]
    name = model["name"]
    assert table["errors"][name] == {}
    assert set(table["scores"][name]) == set(LOCAL_TASKS)
    for task, score in table["scores"][name].items():
        assert math.isfinite(score) and -100 <= score <= 100, (task, score)
        assert table["status"][name][task] == "ran"
    # mteb's own per-task JSON, under the model's unique name and content revision (and the sample cap)
    result_dir = out / "results" / f"t2t-eval__{name}" / model["revision"] / "experiments" / f"max_samples_{CAP}"
    assert {p.stem for p in result_dir.glob("*.json")} >= set(LOCAL_TASKS)
    assert json.loads((out / "results.json").read_text())["scores"] == table["scores"]
    md = (out / "results.md").read_text()
    assert "| STS | STSBenchmark | cosine_spearman |" in md and "**mean (task)**" in md
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    categories = {"STS", "Retrieval", "Classification", "Clustering", "PairClassification"}
    assert set(table["category_means"][name]) == categories
    assert table["overall_mean"][name] == pytest.approx(sum(table["scores"][name].values()) / len(LOCAL_TASKS))


def test_bf16_encoding_is_cached_apart_from_fp32(one_worker_run, tiny_export):
    out, first = one_worker_run
    table = run_eval([str(tiny_export)], tasks=["BIOSSES"], workers=1, out_dir=str(out), max_samples=CAP,
                     batch_size=16, dtype="bfloat16")
    (model,) = table["models"]
    assert math.isfinite(table["scores"][model["name"]]["BIOSSES"])
    if usable_dtype("bfloat16") != "bfloat16":  # t2t encodes in fp32 instead: the same computation as the cached fp32 result
        assert table["status"][model["name"]]["BIOSSES"] == "cached"
        return
    assert table["status"][model["name"]]["BIOSSES"] == "ran"  # not the fp32 result from the cache
    result_dir = out / "results" / f"t2t-eval__{model['name']}" / model["revision"] / "experiments"
    assert (result_dir / f"max_samples_{CAP}__dtype_bfloat16" / "BIOSSES.json").is_file() or \
        any("bfloat16" in p.name for p in result_dir.iterdir())


def test_rerun_reuses_the_cache(one_worker_run, tiny_export):
    out, first = one_worker_run
    files = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json") if p.name != "model_meta.json"}
    again = run_eval([str(tiny_export)], workers=1, out_dir=str(out), max_samples=CAP, batch_size=16)
    name = first["models"][0]["name"]
    assert set(again["status"][name].values()) == {"cached"}
    assert again["scores"] == first["scores"]
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_automatic_workers_stay_in_this_process_on_one_machine(tiny_export, tmp_path, monkeypatch, caplog):
    import logging
    import sys

    from t2t.eval.runner import automatic_workers

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with caplog.at_level(logging.INFO):
        assert automatic_workers(None, 0.0) == 1
    assert "one worker in this process" in caplog.text
    assert automatic_workers("127.0.0.1:6379", 0.0) == 0  # a cluster: its size decides, once Ray is up
    assert automatic_workers(None, 1.0) == 0  # workers that ask for GPUs: one per GPU
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert automatic_workers(None, 0.0) == 0
    monkeypatch.delenv("RAY_ADDRESS")
    table = run_eval([str(tiny_export)], tasks=["BIOSSES"], workers=0, out_dir=str(tmp_path), max_samples=CAP)
    assert set(table["status"][table["models"][0]["name"]].values()) == {"ran"}
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()  # no Ray was started for it


@pytest.mark.slow
def test_a_dead_ray_worker_fails_only_its_pair(monkeypatch):
    import os

    from t2t.eval import runner
    from t2t.eval.models import ModelSpec

    class Crashing(runner.EvalWorker):  # defined here, so Ray ships it to the workers by value
        def __init__(self, *args, **kwargs):
            pass  # no torch to import

        def run(self, model, task):
            if task.name.startswith("crash"):
                os._exit(1)  # the worker process dies (twice: Ray restarts the actor and retries once)
            return runner._outcome(model, task, result=task.name)

    monkeypatch.setattr(runner, "EvalWorker", Crashing)
    model = ModelSpec(path="/nowhere", name="m", kind="t2t", revision="0")
    tasks = ["crash1", "a", "b", "c", "crash2", "d", "e"]
    todo = [(model, runner.TaskSpec(t, "local")) for t in tasks]
    outcomes = {o["task"]: o for o in runner._with_ray(todo, 2, 1, None, 0.0, 1)}
    assert sorted(outcomes) == sorted(tasks)
    # one worker dies on crash1 and the other runs a, b, c in the meantime; then it dies on crash2 and
    # no worker is left for d and e: they fail at once instead of waiting forever
    assert all(outcomes[t]["error"].startswith("Ray worker failed: ActorDiedError") for t in ("crash1", "crash2"))
    assert all(outcomes[t]["error"] is None and outcomes[t]["result"] == t for t in "abc")
    assert all(outcomes[t]["error"] == "no Ray worker left alive to run this task" for t in "de")


def test_failed_task_leaves_the_rest_and_rerun_runs_only_it(tiny_export, tmp_path):
    data = tmp_path / "data"
    for sub in ("sts", "classification"):
        shutil.copytree(DEFAULT_DATA_DIR / sub, data / sub)
    hidden = data / "sts" / "biosses_test.tsv"
    hidden.rename(hidden.with_suffix(".away"))
    tasks = ["STSBenchmark", "BIOSSES", "Banking77Classification"]
    kw = dict(tasks=tasks, out_dir=str(tmp_path / "out"), max_samples=CAP, data_dir=str(data), batch_size=16)
    first = run_eval([str(tiny_export)], **kw)
    name = first["models"][0]["name"]
    assert first["status"][name] == {"STSBenchmark": "ran", "BIOSSES": "failed", "Banking77Classification": "ran"}
    assert "biosses_test.tsv not found" in first["errors"][name]["BIOSSES"]
    assert first["scores"][name]["BIOSSES"] is None and first["overall_mean"][name] is None
    assert "Failed" in (tmp_path / "out" / "results.md").read_text()

    hidden.with_suffix(".away").rename(hidden)
    second = run_eval([str(tiny_export)], **kw)
    assert second["status"][name] == {"STSBenchmark": "cached", "BIOSSES": "ran", "Banking77Classification": "cached"}
    assert second["errors"][name] == {} and second["overall_mean"][name] is not None
    for task in ("STSBenchmark", "Banking77Classification"):
        assert second["scores"][name][task] == first["scores"][name][task]


def test_official_task_unreachable_offline_is_a_per_task_error(tiny_export, tmp_path):
    table = run_eval([str(tiny_export)], tasks=["BIOSSES", "STS12"], out_dir=str(tmp_path), max_samples=CAP)
    name = table["models"][0]["name"]
    assert table["status"][name] == {"BIOSSES": "ran", "STS12": "failed"}
    assert "data for task STS12 could not be loaded" in table["errors"][name]["STS12"]


def test_nan_embeddings_fail_the_task_with_the_reason(tiny_model_dir, tmp_path):
    import torch

    from t2t.config import ModelConfig
    from t2t.model import export, from_config

    embedder = from_config(ModelConfig(path=str(tiny_model_dir)))
    with torch.no_grad():
        embedder.lm.model.norm.weight.fill_(float("nan"))
    broken = export(embedder, tmp_path / "nan-model")
    table = run_eval([str(broken)], tasks=["BIOSSES"], out_dir=str(tmp_path / "out"), max_samples=CAP)
    error = table["errors"]["nan-model"]["BIOSSES"]
    assert "NaN or infinite embeddings" in error and "BIOSSES" in error
    assert not list((tmp_path / "out" / "results").rglob("BIOSSES.json"))


def test_bad_input_is_named(tiny_export, tmp_path):
    with pytest.raises(UserError, match=r"unknown task 'STSBenchmrk'.*local tasks: STSBenchmark, BIOSSES"):
        run_eval([str(tiny_export)], tasks=["STSBenchmrk"], out_dir=str(tmp_path))
    missing = tmp_path / "no-such-model"
    with pytest.raises(UserError, match=f"model directory {missing} does not exist"):
        run_eval([str(missing)], out_dir=str(tmp_path))
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(UserError, match="neither a t2t export"):
        run_eval([str(not_a_model)], out_dir=str(tmp_path))


def test_benchmark_names_resolve_to_official_tasks():
    from t2t.eval.runner import build_task, resolve_tasks

    specs = resolve_tasks(["ignored"], benchmark="MTEB(eng, v2)")
    assert len(specs) == 41 and {s.source for s in specs} == {"benchmark"}
    sts = build_task(next(s for s in specs if s.name == "STSBenchmark"))
    assert type(sts).__module__.startswith("mteb.tasks") and not sts.data_loaded
    with pytest.raises(UserError, match=r"unknown benchmark 'MTEB\(eng, v9\)'.*available: .*MTEB\(eng, v2\)"):
        resolve_tasks(None, benchmark="MTEB(eng, v9)")


def test_each_checkpoint_gets_its_own_revision(tiny_export, tmp_path):
    from t2t.eval.models import describe_model, model_meta

    same = shutil.copytree(tiny_export, tmp_path / "a" / "export")
    changed = shutil.copytree(tiny_export, tmp_path / "b" / "export")
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    original, copy, other = (describe_model(p) for p in (tiny_export, same, changed))
    assert copy.revision == original.revision and other.revision != original.revision
    assert model_meta(other).name == "t2t-eval/export" and model_meta(other).revision == other.revision
    table = run_eval([str(same), str(changed)], tasks=["BIOSSES"], out_dir=str(tmp_path / "out"), max_samples=CAP)
    names = [m["name"] for m in table["models"]]
    assert names == [f"export@{copy.revision[:8]}", f"export@{other.revision[:8]}"]
    assert all(table["status"][n] == {"BIOSSES": "ran"} for n in names)


def test_echos_cut_rule_keys_its_eval_results_only(tiny_model_dir, tiny_export, monkeypatch):
    """Echo pooling's cut rule is part of its cache key, so a change to the rule redoes its results, and only
    theirs: the other modes' keys stay what they were."""
    import dataclasses

    import t2t.eval.models as M
    from t2t.config import ModelConfig
    from t2t.model import EmbeddingIdentity
    from t2t.pooling import ECHO_PROMPT

    mean = EmbeddingIdentity.of(ModelConfig(path=str(tiny_model_dir)))
    echo = dataclasses.replace(mean, pooling="echo", prompt=ECHO_PROMPT)
    before = [M.content_hash(tiny_export), M.content_hash(tiny_model_dir, mean), M.content_hash(tiny_model_dir, echo)]
    monkeypatch.setattr(M, "SPAN_CUT_RULE", "another rule")
    after = [M.content_hash(tiny_export), M.content_hash(tiny_model_dir, mean), M.content_hash(tiny_model_dir, echo)]
    assert after[:2] == before[:2] and after[2] != before[2]


def test_a_plain_hf_dir_is_evaluated_with_the_recipe_settings(tiny_model_dir, tiny_export, tmp_path, capsys):
    """A directory without t2t_config.json embeds with the recipe's model settings: the scores of the export made
    with them, cached under a revision that includes them (two poolings never share results); an export keeps its
    own; without --config the directory is refused naming it and --config."""
    import dataclasses

    from t2t.cli import main
    from t2t.config import ModelConfig
    from t2t.eval.models import describe_model
    from t2t.model import EmbeddingIdentity

    mean = EmbeddingIdentity.of(ModelConfig(path=str(tiny_model_dir)))  # what tiny_export was made with
    last = dataclasses.replace(mean, pooling="last", prompt='This sentence : "{text}" means in one word:"')
    specs = [describe_model(tiny_model_dir, settings=s) for s in (mean, last, mean)]
    assert specs[0].kind == "hf" and specs[0].revision == specs[2].revision != specs[1].revision
    assert describe_model(tiny_export, settings=last) == describe_model(tiny_export)

    kw = dict(tasks=["BIOSSES"], out_dir=str(tmp_path / "out"), max_samples=CAP, batch_size=16)
    scores = {}
    for key, model, settings in (("export", tiny_export, None), ("mean", tiny_model_dir, mean),
                                 ("last", tiny_model_dir, last)):
        table = run_eval([str(model)], settings=settings, **kw)
        (name,) = table["scores"]
        assert table["status"][name] == {"BIOSSES": "ran"}, key
        scores[key] = table["scores"][name]["BIOSSES"]
    assert scores["mean"] == pytest.approx(scores["export"], abs=1e-6) and scores["last"] != scores["mean"]

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"model": {"path": str(tiny_model_dir), "pooling": "mean"}}))
    args = ["eval", "--model", str(tiny_model_dir), "--tasks", "BIOSSES", "--out", kw["out_dir"],
            "--max-samples", str(CAP)]
    assert main(args + ["--config", str(recipe), "--set", "model.pooling=last", "--workers", "1"]) == 0
    capsys.readouterr()
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    (name,) = table["scores"]
    assert table["status"][name] == {"BIOSSES": "cached"} and table["scores"][name]["BIOSSES"] == scores["last"]
    assert table["models"][0]["kind"] == "hf" and table["models"][0]["settings"]["pooling"] == "last"
    assert "embedded with the recipe's pooling 'last'" in (tmp_path / "out" / "results.md").read_text()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(x in err for x in (str(tiny_model_dir), "t2t_config.json", "--config"))


def test_cli_side_by_side_and_exit_codes(tiny_export, tmp_path, capsys):
    from t2t.cli import main

    out = tmp_path / "out"
    rc = main(["eval", "--model", str(tiny_export), str(tiny_export), "--names", "a", "b", "--tasks", "BIOSSES",
               "--out", str(out), "--max-samples", str(CAP)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| STS | BIOSSES | cosine_spearman |" in printed and "| a | b |" in printed
    table = json.loads((out / "results.json").read_text())
    assert table["scores"]["a"]["BIOSSES"] == pytest.approx(table["scores"]["b"]["BIOSSES"])
    assert main(["eval", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    # the recipe's eval section gives the defaults; flags override it
    rc = main(["eval", "--config", str(REPO / "recipes" / "tiny.yaml"), "--set", "eval.batch_size=8", "--workers", "1",
               "--model", str(tiny_export), "--tasks", "STSBenchmark", "--out", str(out), "--max-samples", str(CAP)])
    assert rc == 0 and "| STS | STSBenchmark | cosine_spearman |" in capsys.readouterr().out
