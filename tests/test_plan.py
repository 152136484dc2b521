"""`t2t plan` against reality: parameter shapes from transformers, model states from a real 2-rank
ZeRO-3 run (tests/zero3_probe.py), activation bytes from autograd, and the CLI end to end.

    .venv/bin/pytest tests/test_plan.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from t2t.cli import main
from t2t.commands.plan_cmd import _duration
from t2t.config import LoraConfig, ModelConfig, load_config
from t2t.errors import UserError
from t2t.plan import Arch, Cluster, activation_bytes, forward_time, load_arch, make_plan, read_ds_config, state_items

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("zero3_probe.py")

# A few-M-parameter Llama with grouped kv heads: big enough that every rank's shards are megabytes,
# small enough that two CPU ranks finish a ZeRO-3 step in seconds.
PROBE_ARCH = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False)


def meta_numels(hf: dict) -> list[int]:
    """Parameter sizes of the model transformers builds from this config (on the meta device: no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf))
    return sorted(p.numel() for p in model.parameters())


@pytest.mark.parametrize("hf", [
    PROBE_ARCH,
    dict(PROBE_ARCH, model_type="mistral", tie_word_embeddings=True),
    dict(PROBE_ARCH, model_type="qwen2", head_dim=32),  # q/k/v biases; head_dim apart from hidden/heads
    *sorted((REPO / "recipes" / "arch").glob("*.json")),  # the shipped 7-8B architectures
], ids=lambda hf: hf.name if isinstance(hf, Path) else hf["model_type"])
def test_param_shapes_match_transformers(hf):
    source = str(hf)
    if isinstance(hf, Path):
        hf = json.loads(hf.read_text())
    assert sorted(Arch.from_hf(hf, source).param_numels()) == meta_numels(hf)


def write_zero3_config(path: Path, micro_batch: int, **zero) -> Path:
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "bf16": {"enabled": True}, "zero_optimization": {"stage": 3, **zero},
        "steps_per_print": 10**9, "wall_clock_breakdown": False}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("train_embeddings", [False, True], ids=["frozen_embeddings", "train_embeddings"])
def test_model_states_match_a_real_zero3_run(tmp_path, train_embeddings):
    """Predicted per-rank parameter and optimizer-state bytes vs what two ZeRO-3 ranks hold after a step."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(PROBE_ARCH))
    # Threshold between the attention and the MLP/embedding sizes, so both sharded and whole-kept tensors occur.
    ds = write_zero3_config(tmp_path / "ds.json", micro_batch=2, stage3_param_persistence_threshold=100_000)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    flags = ["--train-embeddings"] if train_embeddings else []
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(PROBE), "--model",
                           str(model_dir), "--ds-config", str(ds), "--out", str(tmp_path / "out"), *flags],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    arch = load_arch(ModelConfig(path=str(model_dir)))
    predicted = state_items(arch, read_ds_config(ds), world=2, batch=2, seq_len=32,
                            train_embeddings=train_embeddings)
    for rank in (0, 1):
        measured = json.loads((tmp_path / "out" / f"rank{rank}.json").read_text())
        assert measured["n_params"] == arch.n_params
        pairs = {  # predicted item(s) -> measured field
            "params": (predicted["params_shard"] + predicted["params_persistent"],
                       measured["param_partition"] + measured["persistent_params"]),
            "fp32 master": (predicted["fp32_master"], measured["fp32_master"]),
            "Adam m, v": (predicted["adam_m_v"], measured["optimizer_state"]),
            "gradients": (predicted["grads_shard"], measured["grad_partition"]),
        }
        assert measured["persistent_params"] > 0 and measured["param_partition"] > 0
        for name, (want, got) in pairs.items():
            assert abs(want - got) <= 0.10 * got, f"rank {rank} {name}: predicted {want}, measured {got}"
        total_pred = sum(pairs[k][0] for k in ("params", "fp32 master", "Adam m, v"))
        total_meas = sum(pairs[k][1] for k in ("params", "fp32 master", "Adam m, v"))
        assert abs(total_pred - total_meas) <= 0.10 * total_meas


def test_activation_bytes_match_autograd(tiny_model_dir, tmp_path):
    """Bytes autograd keeps for backward on a bf16 tiny Llama with padding vs the planner's formula."""
    from t2t.identity import EmbeddingIdentity
    from t2t.model.embedder import Embedder
    from t2t.model.io import load_lm, load_tokenizer

    batch, seq = 4, 48
    lm = load_lm(tiny_model_dir).to(torch.bfloat16)  # bf16 even on a CPU where load_lm would fall back to fp32
    embedder = Embedder(lm, load_tokenizer(tiny_model_dir), EmbeddingIdentity(pooling="mean", max_length=seq))
    ids = torch.randint(5, lm.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, :10] = 0  # left padding: the 4-D mask is materialised, as in training batches
    param_storages = {p.untyped_storage().data_ptr() for p in embedder.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, z = embedder(ids, mask)
        loss = (torch.logsumexp(z, dim=-1) - z[:, :3].mean(-1)).mean()  # keeps z, as the KL loss does
    loss.backward()

    arch = load_arch(ModelConfig(path=str(tiny_model_dir)))
    items = state_items(arch, read_ds_config(write_zero3_config(tmp_path / "ds.json", batch)), 2, batch, seq)
    assert items["activations"] == activation_bytes(arch, batch, seq, 2)
    predicted = items["activations"] + items["lm_head_fp32"] + items["logits"] // 3  # z itself is saved
    measured = sum(saved.values())
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_plan_cli_table_and_json(capsys):
    recipe = str(REPO / "recipes" / "mistral-7b.yaml")
    assert main(["plan", "--config", recipe, "--nodes", "2", "--gpus-per-node", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    mem, time = plan["memory"], plan["time"]
    n, trainable = 7_241_732_096, 7_241_732_096 - 2 * 32_000 * 4096  # input embeddings and LM head frozen
    assert plan["arch"]["n_params"] == n
    assert plan["params"] == {"total": n, "trainable": trainable, "frozen": n - trainable,
                              "frozen_what": "input embeddings, LM head", "train_embeddings": False}
    assert plan["batch"]["global_batch"] == 16 * 16
    assert mem["no_offload"]["fits"] and mem["recipe_mode"] == "no_offload"
    assert mem["offload_optimizer_params"]["gpu_peak"] < mem["offload_optimizer"]["gpu_peak"] \
        < mem["no_offload"]["gpu_peak"]
    # Across 16 ranks, 2 bytes per parameter and 14 more (gradient, master, Adam m and v) per trainable one,
    # plus padding of each tensor to 16 shards.
    states = sum(mem["items"][k] for k in ("params_shard", "grads_shard", "fp32_master", "adam_m_v"))
    assert (2 * n + 14 * trainable) / 16 <= states <= (2 * n + 14 * trainable) / 16 * 1.0001
    stages = time["stages"]
    assert [(s["name"], s["start"], s["objective"], s["kind"]) for s in stages] == [
        ("stage1", "base", "t2t", "data-driven"), ("stage2", "stage1", "t2t", "model-derived")]
    stage1, stage2 = stages
    assert stage1["train"]["steps"] == 10_000 and stage2["train"]["steps"] == 1_000
    assert stage1["train"]["seconds"] > stage2["train"]["seconds"] > 0
    # Data-driven targets: CPU tokenization of what training reads; model-derived: background θ + targets passes.
    assert stage1["targets"]["runs_model"] is False and stage1["targets"]["seconds"] is None
    assert stage1["targets"]["texts"] == 10_000 * 256
    assert stage2["targets"]["runs_model"] and stage2["targets"]["passes"] == 2 and stage2["targets"]["seconds"] > 0
    ev = time["eval"]
    assert ev["benchmark"] == "MTEB(eng, v2)" and ev["tasks"] == 41 and not ev["not_counted"]
    assert 3e6 < ev["texts"] < 6e6 and ev["seconds"] > 0
    # The pipeline evaluates the start model and each stage's export: three evaluations, all in the total.
    assert ev["models"] == ["base", "stage1", "stage2"] and ev["evaluations"] == 3
    assert time["total"] == pytest.approx(stage1["train"]["seconds"] + stage2["train"]["seconds"]
                                          + stage2["targets"]["seconds"] + 3 * ev["seconds"])
    assert main(["plan", "--config", recipe, "--nodes", "2", "--gpus-per-node", "8"]) == 0
    table = capsys.readouterr().out
    assert f"per model x 3 models (base, stage1, stage2) = {_duration(3 * ev['seconds'])}" in table
    assert "targets of stage2; 3 evaluations)" in table

    single = ["plan", "--config", recipe, "--nodes", "1", "--gpus-per-node", "1", "--gpu-mem", "24", "--no-eval"]
    assert main(single + ["--stage-texts", "stage2=1000000"]) == 0
    table = capsys.readouterr().out
    assert "memory per GPU" in table and "1.00M texts (--stage-texts) x 2 forward passes" in table
    assert "7.24B (6.98B trainable, 262.14M frozen: input embeddings, LM head)" in table
    assert "NO" in table  # 7B with no offload on one 24 GiB GPU cannot fit
    assert table.index("stage1  starts from base") < table.index("stage2  starts from stage1")


def test_the_recipe_layout_is_planned_unless_flags_override_it(capsys):
    """The 7-8B recipes name their reference layout (1 node x 8 GPUs); --nodes and --gpus-per-node override
    each its own half; with neither, the error names both flags and the recipe key."""
    recipe = str(REPO / "recipes" / "mistral-7b.yaml")
    for flags, layout in [([], (1, 8)), (["--nodes", "2"], (2, 8)), (["--gpus-per-node", "4"], (1, 4)),
                          (["--nodes", "3", "--gpus-per-node", "2"], (3, 2))]:
        assert main(["plan", "--config", recipe, "--no-eval", "--json", *flags]) == 0, flags
        c = json.loads(capsys.readouterr().out)["cluster"]
        assert (c["nodes"], c["gpus_per_node"]) == layout, flags
    assert main(["plan", "--config", recipe, "--no-eval"]) == 0
    assert "on 1 node x 8 GPUs = 8 ranks (the recipe's layout)" in capsys.readouterr().out
    for name in ("mistral-7b", "llama3-8b"):
        layout = load_config(REPO / "recipes" / f"{name}.yaml").layout
        assert (layout.nodes, layout.gpus_per_node) == (1, 8), name
    for name in ("demo", "tiny", "smollm2-lora", "llm2vec"):
        assert load_config(REPO / "recipes" / f"{name}.yaml").layout is None, name

    for flags in ([], ["--nodes", "2"]):
        assert main(["plan", "--config", recipe, "--no-eval", "--set", "layout=null", *flags]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert all(x in err for x in ("--nodes", "--gpus-per-node", "layout.nodes", "layout.gpus_per_node")), err
    assert main(["plan", "--config", recipe, "--no-eval", "--set", "layout.gpus_per_node=0"]) == 2
    assert "layout.gpus_per_node must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_frozen_embeddings_hold_no_gradient_or_optimizer_state(tmp_path, tied):
    """train.train_embeddings adds exactly the embedding (and untied head) elements' per-state bytes / W."""
    arch = Arch.from_hf(dict(PROBE_ARCH, tie_word_embeddings=tied), "test")
    world = 8
    embedding = (1 if tied else 2) * PROBE_ARCH["vocab_size"] * PROBE_ARCH["hidden_size"]
    assert embedding % world == 0  # no shard padding, so the difference is exact
    assert arch.n_params - arch.n_trainable(False) == embedding and arch.n_trainable(True) == arch.n_params
    zero = read_ds_config(write_zero3_config(tmp_path / "ds.json", 2))
    frozen, trained = (state_items(arch, zero, world, 2, 32, train_embeddings=x) for x in (False, True))
    per_element = {"grads_shard": zero.grad_bytes, "fp32_master": 4, "adam_m_v": 8, "fp32_grads_step": 4,
                   "params_shard": 0, "params_persistent": 0}
    for key, nbytes in per_element.items():
        assert trained[key] - frozen[key] == embedding * nbytes // world, key

    cfg = load_config(REPO / "recipes" / "llama3-8b.yaml")
    plans = {}
    for x in (False, True):
        cfg.train.train_embeddings = x
        plans[x] = make_plan(cfg, Cluster(1, 8), with_eval=False)
    assert plans[True]["params"]["frozen"] == 0 < plans[False]["params"]["frozen"]
    assert plans[True]["memory"]["no_offload"]["gpu_peak"] > plans[False]["memory"]["no_offload"]["gpu_peak"]
    # Frozen gradients are not reduce-scattered; the FLOPs model does not change.
    s_frozen, s_trained = (plans[x]["time"]["stages"][0]["train"] for x in (False, True))
    assert s_trained["step_comm_s"] > s_frozen["step_comm_s"]
    assert s_trained["step_compute_s"] == s_frozen["step_compute_s"]


def test_more_gpus_shrink_shards_and_steps():
    cfg = load_config(REPO / "recipes" / "llama3-8b.yaml")
    small = make_plan(cfg, Cluster(1, 8), with_eval=False)
    big = make_plan(cfg, Cluster(4, 8), with_eval=False)
    ratio = small["memory"]["items"]["adam_m_v"] / big["memory"]["items"]["adam_m_v"]
    assert 3.99 < ratio < 4.01
    # Same micro-batch per rank: 4x the texts per step, same compute time per step.
    for s_small, s_big in zip(small["time"]["stages"], big["time"]["stages"], strict=True):
        assert s_big["train"]["global_batch"] == 4 * s_small["train"]["global_batch"]
        assert s_big["train"]["step_compute_s"] == pytest.approx(s_small["train"]["step_compute_s"])


def test_bad_inputs_name_the_problem(tmp_path, capsys):
    with pytest.raises(UserError, match="model.arch_config .*missing.json does not exist"):
        load_arch(ModelConfig(path=str(tmp_path), arch_config=str(tmp_path / "missing.json")))
    with pytest.raises(UserError, match="has no config.json and model.arch_config is not set"):
        load_arch(ModelConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps(dict(PROBE_ARCH, model_type="gpt2")))
    with pytest.raises(UserError, match="config.json: model_type 'gpt2' is not supported"):
        load_arch(ModelConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps(dict(PROBE_ARCH, hidden_size="big")))
    with pytest.raises(UserError, match="hidden_size must be a positive integer"):
        load_arch(ModelConfig(path=str(tmp_path)))
    stage2 = tmp_path / "z2.json"
    stage2.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(UserError, match="z2.json: zero_optimization.stage is 2"):
        read_ds_config(stage2)
    with pytest.raises(UserError, match="--mfu must be in"):
        Cluster(1, 8, mfu=0)
    recipe = str(REPO / "recipes" / "mistral-7b.yaml")
    plan = ["plan", "--config", recipe, "--nodes", "1", "--gpus-per-node", "8", "--no-eval"]
    for extra, message in [
        (["--nodes", "0"], "--nodes must be a positive integer"),
        (["--tokens-per-text", "0"], "--tokens-per-text must be at least 1"),
        (["--stage-texts", "stage2"], "must look like NAME=N"),
        (["--stage-texts", "stage2=many"], "N must be an integer"),
        (["--stage-texts", "stage2=-1"], "N must be >= 0"),
        (["--stage-texts", "stage9=10"], "no stage 'stage9' in this recipe (stages: stage1, stage2)"),
        (["--stage-texts", "stage1=10"], "stage stage1's targets (data-driven) do not run the model"),
        (["--stage-texts", "stage2=10", "--stage-texts", "stage2=20"], "gives stage stage2 two counts: 10 and 20"),
    ]:
        assert main(plan + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_simcse_and_lora_are_refused_naming_the_stage(capsys):
    """t2t plan models full-parameter training with the t2t objective: any stage on another objective, or LoRA,
    is refused as bad input naming what to change."""
    recipe = str(REPO / "recipes" / "mistral-7b.yaml")
    assert main(["plan", "--config", recipe, "--nodes", "1", "--gpus-per-node", "8", "--no-eval",
                 "--set", "stages.stage2.objective.name=simcse", "--set", "model.pooling=mean"]) == 2
    err = capsys.readouterr().err
    assert "stages.stage2.objective.name=simcse" in err and "stage1" not in err
    cfg = load_config(recipe, ["stages.stage1.objective.name=simcse", "model.pooling=mean"])
    with pytest.raises(UserError, match=r"stages\.stage1\.objective\.name=simcse"):
        make_plan(cfg, Cluster(1, 8), with_eval=False)
    cfg = load_config(recipe)
    cfg.train.lora = LoraConfig()
    with pytest.raises(UserError, match="train.lora"):
        make_plan(cfg, Cluster(1, 8), with_eval=False)


def test_three_stages_are_each_timed(tmp_path, capsys):
    """Not only Text2Token's two stages: every stage of the list is timed, its targets by their kind, and the
    texts of model-run targets come from --stage-texts, else the counted corpus, else the cap, else training."""
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("".join(f"sentence number {i} about something.\n" for i in range(300)))
    recipe = tmp_path / "three.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "name": "three", "run_dir": str(tmp_path / "run"),
        "model": {"path": str(tmp_path / "no-weights"), "max_length": 64,
                  "arch_config": str(REPO / "recipes" / "arch" / "mistral-7b-instruct-v0.2.json")},
        "data": {"corpus": str(tmp_path / "absent.jsonl")},
        "train": {"ds_config": str(REPO / "ds_configs" / "zero3_bf16.json"), "micro_batch_size": 4},
        "stages": [
            {"name": "words", "start": "base", "targets": {"kind": "data-driven", "weighting": "idf"}, "steps": 300},
            {"name": "derived", "start": "words", "steps": 100,
             "targets": {"kind": "model-derived", "max_texts": 5000}},
            {"name": "again", "start": "derived", "steps": 40,
             "targets": {"kind": "model-derived", "corpus": str(corpus), "max_texts": 200}},
        ],
    }))
    args = ["plan", "--config", str(recipe), "--nodes", "1", "--gpus-per-node", "8", "--no-eval"]
    assert main(args + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    stages, global_batch = plan["time"]["stages"], 4 * 8
    assert [(s["name"], s["start"], s["kind"]) for s in stages] == [
        ("words", "base", "data-driven"), ("derived", "words", "model-derived"), ("again", "derived", "model-derived")]
    assert [s["train"]["steps"] for s in stages] == [300, 100, 40]
    assert all(s["train"]["seconds"] > 0 and s["train"]["global_batch"] == global_batch for s in stages)
    words, derived, again = (s["targets"] for s in stages)
    # IDF is a corpus pass of a kind that does not run the model: still CPU tokenization, not timed.
    assert not words["runs_model"] and words["seconds"] is None and words["texts"] == 300 * global_batch
    assert words["pass_names"] == ["idf"]
    assert derived["texts"] == 5000 and "stages.derived.targets.max_texts" in derived["texts_source"]
    assert again["texts"] == 200 and again["texts_source"] == f"counted in {corpus}"  # capped by max_texts
    arch, cluster = load_arch(load_config(recipe).model), Cluster(1, 8)
    for t, n in ((derived, 5000), (again, 200)):
        assert t["runs_model"] and t["passes"] == 2 and t["pass_names"] == ["background", "targets"]
        assert t["seconds"] == pytest.approx(forward_time(arch, cluster, [(2 * n, 64)], with_head=True))
    assert plan["time"]["total"] == pytest.approx(sum(s["train"]["seconds"] for s in stages)
                                                  + derived["seconds"] + again["seconds"])

    assert main(args + ["--stage-texts", "again=7000", "--stage-texts", "derived=0"]) == 0
    table = capsys.readouterr().out
    lines = [table.index(f"{name}  starts from {start}") for name, start in
             (("words", "base"), ("derived", "words"), ("again", "derived"))]
    assert lines == sorted(lines)
    assert "7.00k texts (--stage-texts) x 2 forward passes" in table and "0 texts (--stage-texts)" in table
    assert "training of words, derived, again; targets of derived, again" in table


def test_a_sweep_plan_counts_shared_steps_once(capsys):
    from t2t.config import load_config
    from t2t.plan import Cluster, make_plan
    from t2t.plan.sweep import plan_sweep

    recipe = "recipes/mistral-7b.yaml"
    grid = ["stages.stage2.targets.tau=1e-4,1e-5,1e-6", "stages.stage2.lr=1e-5,2e-5"]
    cluster = Cluster(2, 8, 80.0, 989.0, 0.4, None)
    plan = plan_sweep(recipe, [], grid, cluster, with_eval=False)
    assert len(plan["points"]) == 6 and plan["distinct_steps"] == 3 + 3 * 1 + 6 and plan["separate_steps"] == 30
    shared = {s["step"]: s for s in plan["shared"]}
    assert len(shared["stage1:train"]["points"]) == 6  # no key of the grid is read by stage 1
    single = make_plan(load_config(recipe), cluster, with_eval=False)["time"]["stages"]
    stage1, targets2, train2 = (single[0]["train"]["seconds"], single[1]["targets"]["seconds"],
                                single[1]["train"]["seconds"])
    stage2 = targets2 + train2
    assert plan["seconds"] == pytest.approx(stage1 + 3 * targets2 + 6 * train2)  # stage-2 targets: one per tau
    assert plan["separate_seconds"] == pytest.approx(6 * (stage1 + stage2))
    assert plan["gpu_hours"] == pytest.approx(plan["seconds"] * 16 / 3600)
    assert plan["longest_chain_seconds"] == pytest.approx(stage1 + stage2)

    assert main(["plan", "--config", recipe, "--nodes", "2", "--gpus-per-node", "8", "--no-eval",
                 "--grid", grid[0], "--grid", grid[1]]) == 0
    out = capsys.readouterr().out
    assert "12 distinct (separate pipelines: 30)" in out and "stage1:train" in out and "by all points" in out
    assert main(["plan", "--config", recipe, "--nodes", "2", "--gpus-per-node", "8", "--no-eval",
                 "--grid", "stages.stage2.targets.tauu=1e-4"]) == 2
    assert "did you mean stages.stage2.targets.tau?" in capsys.readouterr().err
