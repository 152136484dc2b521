"""The `sum` objective (t2t/objectives/sum.py): several objectives in one stage, each normalised by its own count.

Its recipe section and every refusal; a sum of one part trains exactly as the part alone; Text2Token + SimCSE gives
w1·L_t2t + w2·L_simcse with each part divided by what it counts; mntp composes with the others; `--explain` and the
report's label."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from t2t.config import ConfigError, load_config, to_dict
from t2t.objectives import OBJECTIVES, MNTPObjective, SimCSEObjective, SumObjective, Text2TokenObjective
from t2t.objectives.sum import part
from t2t.train.loss import objective_for, simcse_loss, text2token_loss
from t2t.train.trainer import train_step
from test_train_unit import EmbedderEngine, process_group  # noqa: F401 - process_group: the fixture

RECIPE = """model: {path: m, pooling: last}
stages:
  - name: stage1
    objective:
      name: sum
      parts:
        - {name: t2t, weight: 1.0}
        - {name: simcse, weight: 0.5, temperature: 0.05, dropout: 0.1}
"""

TEXTS = ["The river flows through the old town and into the sea.", "A short one.",
         "Mountains rise above the valley where the village lies.", "Rain fell all night.",
         "The market opens at dawn.", "She wrote three letters to her brother.", "Bridges cross the wide river.",
         "Nobody answered the phone."]


def write(tmp_path, text: str = RECIPE):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_the_recipe_form_loads_prints_and_reads_back_the_same(tmp_path):
    cfg = load_config(write(tmp_path))
    spec = cfg.stage("stage1").objective
    assert spec == SumObjective(parts=[part(Text2TokenObjective(), 1.0),
                                       part(SimCSEObjective(temperature=0.05, dropout=0.1), 0.5)])
    simcse = spec.parts[1]
    assert isinstance(simcse, SimCSEObjective) and (simcse.temperature, simcse.weight) == (0.05, 0.5)
    printed = to_dict(cfg)["stages"][0]["objective"]  # flat, as the recipe writes it (`t2t config` prints this)
    assert printed == {"name": "sum", "parts": [{"name": "t2t", "weight": 1.0},
                                                {"name": "simcse", "temperature": 0.05, "dropout": 0.1, "weight": 0.5}]}
    recipe = {"model": {"path": "m", "pooling": "last"}, "stages": [{"name": "stage1", "objective": printed}]}
    again = load_config(write(tmp_path, yaml.safe_dump(recipe)))
    assert again.stage("stage1").objective == spec
    assert pickle.loads(pickle.dumps(spec)) == spec  # a part's class is made at run time
    sum_kind = OBJECTIVES["sum"]
    assert sum_kind.loss_label(spec) == "1·KL + 0.5·InfoNCE" and sum_kind.reads(spec)
    texts_only = SumObjective(parts=[part(SimCSEObjective(), 1.0), part(MNTPObjective(), 2.0)])
    assert not sum_kind.reads(texts_only) and sum_kind.needs(texts_only) == {"attention": "bidirectional"}


PARTS = "stages.stage1.objective.parts"


@pytest.mark.parametrize("parts, message", [
    ("[{name: t2t, weight: 0}]", rf"{PARTS}\[0\]\.weight must be a finite number > 0, got 0\.0"),
    ("[{name: t2t}, {name: simcse, weight: -1}]", rf"{PARTS}\[1\]\.weight must be a finite number > 0, got -1\.0"),
    ("[{name: t2t, weight: .inf}]", rf"{PARTS}\[0\]\.weight must be a finite number > 0, got inf"),
    ("[{name: t2t, weight: .nan}]", rf"{PARTS}\[0\]\.weight must be a finite number > 0, got nan"),
    ("[{name: t2t, weight: heavy}]", rf"{PARTS}\[0\]\.weight must be a number, got 'heavy'"),
    ("[{name: t2t}, {name: simcsee}]", rf"{PARTS}\[1\]\.name must be one of t2t, simcse, mntp, sum; got 'simcsee'; "
                                       r"did you mean 'simcse'\?"),
    ("[{name: t2t}, {name: sum, parts: [{name: t2t}]}]", rf"{PARTS}\[1\]\.name is sum: a part cannot be a sum"),
    ("[]", rf"{PARTS} is empty; list the objectives to sum"),
    ("{name: t2t}", rf"{PARTS} must be a list of objectives with weights"),
    ("[t2t]", rf"{PARTS}\[0\] must be a mapping with a name and a weight"),
    ("[{weight: 1.0}]", rf"{PARTS}\[0\] must be a mapping with a name and a weight"),
    ("[{name: t2t}, {name: simcse, temperature: 0}]", rf"{PARTS}\[1\]\.temperature must be > 0, got 0\.0"),
    ("[{name: t2t}, {name: simcse, temprature: 0.1}]",
     rf"unknown key {PARTS}\[1\]\.temprature; did you mean {PARTS}\[1\]\.temperature\?"),
    ("[{name: t2t}, {name: t2t, weight: 2}]", rf"{PARTS}\[1\]\.name is t2t, as {PARTS}\[0\] is; a sum takes each "
                                              r"objective once"),
    ("[{name: t2t}, {name: mntp, probability: 1.5}]", rf"{PARTS}\[1\]\.probability must be in \(0, 1\)"),
    ("[{name: t2t}, {name: mntp}]", r"stages\.stage1\.objective sum needs model\.attention=bidirectional "
                                    r"\(it is causal\)"),
])
def test_a_bad_sum_is_refused_in_one_line_naming_the_key(tmp_path, parts, message):
    recipe = write(tmp_path, f"model: {{path: m}}\nstages: [{{name: stage1, objective: {{name: sum, parts: {parts}}}}}]\n")
    with pytest.raises(ConfigError, match=message) as e:
        load_config(recipe)
    assert "\n" not in str(e.value)


def test_parts_that_need_different_model_settings_are_refused():
    """Two parts needing different values of one setting (here: mntp's bidirectional attention and an objective,
    registered for the test, that needs causal attention) cannot both be had."""
    from t2t.objectives import ObjectiveKind, ObjectiveSpec, register_objective

    class Causal(ObjectiveKind):
        name, spec, label, builder, attention = "causal-only", ObjectiveSpec, "x", "x:x", "causal"

    register_objective(Causal())
    try:
        with pytest.raises(ConfigError, match=rf"{PARTS}\[1\] \(causal-only\) needs model\.attention=causal, but "
                                              rf"{PARTS}\[0\] needs model\.attention=bidirectional; no model is both"):
            load_config(None, ["model.path=m", "model.attention=bidirectional",
                               "stages.stage1.objective={name: sum, parts: [{name: mntp}, {name: causal-only}]}"])
    finally:
        OBJECTIVES.unregister("causal-only")
    cfg = load_config(None, ["model.path=m", "model.attention=bidirectional",  # LLM2Vec's two steps at once
                             "stages.stage1.objective={name: sum, parts: [{name: mntp}, {name: simcse}]}"])
    assert [p.name for p in cfg.stage("stage1").objective.parts] == ["mntp", "simcse"]


def test_explain_shows_the_parts_and_their_weight(capsys):
    from t2t.cli import main

    assert main(["config", "--explain", "sum"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "== stages.objective with name: sum ==" in out
    assert "stages[].objective.parts: list of mappings (fields below) = [] The objectives summed" in out
    assert "stages[].objective.parts[].weight: float = 1.0 The part's factor in the sum: a finite number > 0." in out


def embedder(model_dir, **model):
    from t2t.config import ModelConfig
    from t2t.model import from_config

    return from_config(ModelConfig(path=str(model_dir), max_length=32, **model))


def micro_batches(emb, texts: list[str], size: int, empty: set[int]) -> list[dict]:
    """Tokenized batches of `size` texts with sparse targets (three distinct ids each), empty for the texts `empty`."""
    out = []
    for start in range(0, len(texts), size):
        batch = emb.tokenize(texts[start:start + size])
        n = batch["input_ids"].shape[0]
        rows = torch.arange(start, start + n).unsqueeze(1)
        batch.update(target_ids=rows + 7 * torch.arange(3), target_w=torch.full((n, 3), 1 / 3),
                     target_mask=torch.tensor([[i not in empty] * 3 for i in range(start, start + n)]),
                     keys=[f"k{i}" for i in range(start, start + n)], epochs=[0] * n)
        out.append(batch)
    return out


def step(model_dir, spec, model: dict, seed: int = 0, micro: int = 4):
    """One train_step of `spec` on a fresh tiny embedder (2 micro-batches): its result and the gradients."""
    emb = embedder(model_dir, **model)
    objective = objective_for(spec, seed)
    objective.prepare(emb)
    emb.train()
    batches = [objective.prepare_batch(b) for b in micro_batches(emb, TEXTS, micro, empty={1, 4, 6, 7})]
    torch.manual_seed(seed)  # the dropout masks
    result = train_step(EmbedderEngine(emb, len(batches)), objective, batches, world_size=1)
    return result, {n: p.grad.clone() for n, p in emb.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("alone, model", [(Text2TokenObjective(), {}), (SimCSEObjective(dropout=0.2), {}),
                                          (MNTPObjective(), {"attention": "bidirectional"})],
                         ids=["t2t", "simcse", "mntp"])
def test_a_sum_of_one_part_trains_exactly_as_the_part_alone(tiny_model_dir, process_group, alone, model):  # noqa: F811
    result, grads = step(tiny_model_dir, alone, model)
    summed, summed_grads = step(tiny_model_dir, SumObjective(parts=[part(alone, 1.0)]), model)
    assert (summed.loss, summed.counted, summed.parts) == (result.loss, result.counted, {})
    assert grads.keys() == summed_grads.keys() and grads
    assert all(torch.equal(grads[n], summed_grads[n]) for n in grads)


def test_text2token_and_simcse_each_keep_their_own_normalisation(tiny_model_dir, process_group):  # noqa: F811
    """0.7·L_t2t + 0.25·L_simcse over 2 micro-batches of 4 texts, 4 of the 8 with an empty target: t2t divides its
    sum by the 4 texts it counts, simcse by all 8 (dropout 0, so a direct computation gives the same views)."""
    spec = SumObjective(parts=[part(Text2TokenObjective(), 0.7), part(SimCSEObjective(dropout=0.0), 0.25)])
    result, grads = step(tiny_model_dir, spec, {"pooling": "last"})

    emb = embedder(tiny_model_dir, pooling="last")
    emb.train()
    batches = micro_batches(emb, TEXTS, 4, empty={1, 4, 6, 7})
    kl = sum(text2token_loss(emb, b).total for b in batches)
    infonce = sum(simcse_loss(emb, b, temperature=0.05).total for b in batches)
    expected = 0.7 * kl / 4 + 0.25 * infonce / 8
    expected.backward()

    assert result.counted is None and result.parts.keys() == {"t2t", "simcse"}
    assert [n for _, n in result.parts.values()] == [4, 8]
    assert result.parts["t2t"][0] == pytest.approx(kl.item() / 4, rel=1e-5)
    assert result.parts["simcse"][0] == pytest.approx(infonce.item() / 8, rel=1e-5)
    assert result.loss == pytest.approx(expected.item(), rel=1e-5)
    for name, p in emb.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)


def test_mntp_is_a_part_beside_others_which_read_the_unmasked_texts(tiny_model_dir, process_group):  # noqa: F811
    """mntp's prepare_batch adds its masked copy beside the input ids: simcse, in the same sum, embeds the texts as
    read, and each part counts what it counts alone."""
    model = {"attention": "bidirectional"}
    mntp, _ = step(tiny_model_dir, MNTPObjective(), model)
    simcse, _ = step(tiny_model_dir, SimCSEObjective(dropout=0.0), model)
    both, _ = step(tiny_model_dir, SumObjective(parts=[part(MNTPObjective(), 1.0),
                                                       part(SimCSEObjective(dropout=0.0), 1.0)]), model)
    assert both.parts["mntp"][1] == mntp.counted and both.parts["simcse"][1] == simcse.counted == 8
    assert both.parts["simcse"][0] == pytest.approx(simcse.loss, rel=1e-6)  # not the masked texts
    assert both.loss == pytest.approx(mntp.loss + simcse.loss, rel=1e-6)


def test_a_stage_trains_the_sum_and_logs_each_parts_loss(tiny_model_dir, tmp_path, monkeypatch):
    """A real stage of two steps (ZeRO-3 on CPU, one rank, in this process), Text2Token + SimCSE from the Text2Token
    start (`last` pooling): metrics.jsonl has each part's loss and count beside the total, and the export is made."""
    from t2t.train import trainer
    from t2t.train.engine import free_port
    from train_support import metrics, write_recipe, write_stage_shards

    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)  # a lone rank's, which init_distributed would otherwise leave in os.environ
    write_stage_shards(tiny_model_dir, tmp_path / "shards" / "stage1", n_shards=1, per_shard=16)  # texts 3, 10: empty
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "shards", tmp_path / "run",
                          stage1=dict(steps=2, lr=1.0e-3))
    objective = "{name: sum, parts: [{name: t2t, weight: 1.0}, {name: simcse, weight: 0.5}]}"
    cfg = load_config(recipe, ["model.pooling=last", f"stages.stage1.objective={objective}",
                               "train.peak_flops=1e12", "train.monitors=[]"])  # no peak to time, no monitor files
    assert str(trainer.train(cfg, "stage1")) == str(tmp_path / "run" / "stage1" / "model")
    lines = metrics(tmp_path / "run")
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert m["loss"] == pytest.approx(m["loss_t2t"] + 0.5 * m["loss_simcse"], rel=1e-9)
        assert m["loss_t2t"] > 0 and m["loss_simcse"] > 0 and m["texts_counted"] is None
        assert m["texts_counted_simcse"] == 4 and m["texts_counted_t2t"] <= 4
