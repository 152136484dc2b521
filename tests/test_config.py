"""Recipes load into typed configs; bad keys, types and combinations are rejected with the key named.

A recipe is a list of stages (`stages:`), each addressed by its name in overrides; a recipe or override of the
layout before (`train.stage1`, `data.stage2_corpus`, `targets.tau`, ...) is refused, naming the key it became.
The `t2t config` verb itself (docstrings, --explain) is tested in test_config_cmd.py.
"""

from __future__ import annotations

import pytest

from conftest import REPO
from t2t import config as C
from t2t.config import ConfigError, load_config, to_dict
from t2t.targets.kinds import TARGET_KINDS, DataDrivenTargets, ModelDerivedTargets
from t2t.errors import UserError


def write(tmp_path, text: str, name: str = "r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


TWO_STAGES = """\
stages:
  - name: stage1
    targets: {kind: data-driven}
    lr: 1e-4
  - name: stage2
    start: stage1
    targets: {kind: model-derived}
    steps: 50
"""


# --------------------------------------------------------------------------- defaults and overrides


def test_defaults_are_text2tokens_two_stages():
    cfg = C.Config()
    assert cfg.stage_names == ["stage1", "stage2"]
    s1, s2 = cfg.stages
    assert (s1.start, s1.objective.name, type(s1.targets)) == ("base", "t2t", DataDrivenTargets)
    assert (s2.start, s2.objective.name, type(s2.targets)) == ("stage1", "t2t", ModelDerivedTargets)
    assert (s1.steps, s2.steps) == (100, 50)
    assert cfg.stage("stage2") is s2
    with pytest.raises(ConfigError, match=r"no stage 'stage3' in this recipe \(stages: stage1, stage2\)"):
        cfg.stage("stage3")
    # A recipe that lists no stages trains the same two.
    assert to_dict(load_config(None, ["model.path=m"]))["stages"] == to_dict(C.Config())["stages"]


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "model: {path: m, pooling: mean}\n" + TWO_STAGES)
    cfg = load_config(p, ["model.attention=bidirectional", "stages.stage2.steps=7", "stages.stage2.targets.tau=1e-6",
                          "stages.stage1.targets.weighting=idf"])
    assert cfg.model.attention == "bidirectional"
    assert cfg.stage("stage1").lr == 1e-4  # YAML reads 1e-4 as a string; it is coerced to float
    assert cfg.stage("stage2").steps == 7
    assert cfg.stage("stage2").targets.tau == 1e-6
    assert cfg.stage("stage1").targets.weighting == "idf"
    assert cfg.stage("stage2").lr == 5e-5  # untouched fields keep their defaults
    assert cfg.model.template == "{text}"


def test_overrides_address_a_stage_by_name(tmp_path):
    p = write(tmp_path, """\
model: {path: m}
stages:
  - {name: warm, targets: {kind: data-driven}}
  - {name: sharpen, start: warm}
""")
    cfg = load_config(p, ["stages.warm.lr=2e-5", "stages.sharpen.targets.weighting=idf",
                          "stages.sharpen.steps=3"])
    assert (cfg.stage("warm").lr, cfg.stage("sharpen").steps) == (2e-5, 3)
    # A stage that writes no `targets:` has the default kind's, and its parameters can be overridden.
    assert cfg.stage("sharpen").targets == DataDrivenTargets(weighting="idf")
    cfg = load_config(p, ["stages.sharpen.targets.kind=model-derived", "stages.sharpen.targets.top_k=8"])
    assert cfg.stage("sharpen").targets == ModelDerivedTargets(top_k=8)
    # Without a stage list in the recipe, overrides address the default stages.
    cfg = load_config(None, ["model.path=m", "stages.stage1.lr=1e-3", "stages.stage2.targets.tau=1e-4"])
    assert (cfg.stage("stage1").lr, cfg.stage("stage2").targets.tau) == (1e-3, 1e-4)


def test_an_override_of_an_unknown_stage_lists_the_stages(tmp_path):
    p = write(tmp_path, "model: {path: m}\n" + TWO_STAGES)
    with pytest.raises(ConfigError, match=r"no stage named 'stage3' \(stages: stage1, stage2\)"):
        load_config(p, ["stages.stage3.lr=1e-5"])
    with pytest.raises(ConfigError, match=r"no stage named 'stage3' \(stages: stage1, stage2\)"):
        load_config(None, ["model.path=m", "stages.stage3.steps=1"])


def test_last_pooling_defaults_to_prompteol(tmp_path):
    cfg = load_config(write(tmp_path, "model: {path: m, pooling: last}\n"))
    assert cfg.model.template == C.PROMPT_EOL


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key model\.poolng; did you mean model\.pooling\?"):
        load_config(write(tmp_path, "model: {path: m, poolng: mean}\n"))
    with pytest.raises(ConfigError, match=r"unknown key trian; did you mean train\?"):
        load_config(write(tmp_path, "model: {path: m}\ntrian: {}\n"))
    with pytest.raises(ConfigError, match=r"unknown key stages\.stage1\.lrr; did you mean stages\.stage1\.lr\?"):
        load_config(write(tmp_path, "model: {path: m}\n" + TWO_STAGES), ["stages.stage1.lrr=1"])
    # A kind's parameters belong to that kind: tau is not a data-driven parameter.
    with pytest.raises(ConfigError, match=r"unknown key stages\.stage1\.targets\.tau"):
        load_config(write(tmp_path, "model: {path: m}\n" + TWO_STAGES), ["stages.stage1.targets.tau=1e-5"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size must be an integer"):
        load_config(write(tmp_path, "model: {path: m}\ntrain: {micro_batch_size: big}\n"))
    with pytest.raises(ConfigError, match=r"model\.pooling must be one of mean, last, eos"):
        load_config(write(tmp_path, "model: {path: m, pooling: max}\n"))
    with pytest.raises(ConfigError, match=r"stages\.stage2\.steps must be an integer"):
        load_config(write(tmp_path, "model: {path: m}\n" + TWO_STAGES), ["stages.stage2.steps=many"])
    with pytest.raises(ConfigError, match=r"stages\.stage1\.targets\.weighting must be one of uniform, idf"):
        load_config(write(tmp_path, "model: {path: m}\n" + TWO_STAGES), ["stages.stage1.targets.weighting=tfidf"])
    with pytest.raises(ConfigError, match=r"stages must be a list"):
        load_config(write(tmp_path, "model: {path: m}\nstages: {stage1: {lr: 1}}\n"))


def test_inconsistent_combination(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.tiny and model\.gguf are both set"):
        load_config(write(tmp_path, "model: {path: m, gguf: a.gguf, tiny: {tokenizer_corpus: c}}\n"))
    with pytest.raises(ConfigError, match=r"model\.prompt must contain \{text\}"):
        load_config(write(tmp_path, "model: {path: m, prompt: 'no placeholder'}\n"))
    with pytest.raises(ConfigError, match=r": model\.prompt must contain \{text\} exactly 2 times for model\.pooling "
                                          r"echo \(it pools over the last copy\); got 1 in 'Text: \{text\}'$"):
        load_config(write(tmp_path, "model: {path: m, pooling: echo, prompt: 'Text: {text}'}\n"))
    with pytest.raises(ConfigError, match=r"model\.prompt must contain \{text\}; got 'Echo:'"):
        load_config(write(tmp_path, "model: {path: m, pooling: echo, prompt: 'Echo:'}\n"))
    with pytest.raises(ConfigError, match=r"train\.train_embeddings applies to full-parameter training"):
        load_config(write(tmp_path, "model: {path: m}\ntrain: {lora: {}, train_embeddings: true}\n"))


def test_echo_pooling_defaults_to_the_echo_prompt(tmp_path):
    from t2t.pooling import ECHO_PROMPT

    assert load_config(write(tmp_path, "model: {path: m, pooling: echo}\n")).model.template == ECHO_PROMPT
    own = "model: {path: m, pooling: echo, prompt: 'Document: {text} Again: {text}'}\n"
    assert load_config(write(tmp_path, own)).model.template.count("{text}") == 2


def test_config_error_is_value_error_and_names_file(tmp_path):
    with pytest.raises(UserError, match=r"r\.yaml"):
        load_config(write(tmp_path, "model: {path: m}\n" + TWO_STAGES), ["stages.stage2.targets.tau=2"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, "model: {path: m}\n"), ["nonsense"])


def test_a_stage_reads_its_own_corpus_and_text_cap_or_the_shared_ones(tmp_path):
    from t2t.run_paths import corpus_of, texts_limit

    p = write(tmp_path, "model: {path: m}\ndata: {corpus: all.txt, max_texts: 10}\n" + TWO_STAGES)
    cfg = load_config(p)
    assert (texts_limit(cfg, "stage1"), texts_limit(cfg, "stage2")) == (10, 10)
    assert (corpus_of(cfg, "stage1"), corpus_of(cfg, "stage2")) == ("all.txt", "all.txt")
    cfg = load_config(p, ["stages.stage2.targets.max_texts=4", "stages.stage2.targets.corpus=s2.txt"])
    assert (texts_limit(cfg, "stage1"), texts_limit(cfg, "stage2")) == (10, 4)
    assert (corpus_of(cfg, "stage1"), corpus_of(cfg, "stage2")) == ("all.txt", "s2.txt")
    cfg = load_config(p, ["data.max_texts=0", "stages.stage2.targets.max_texts=4"])
    assert texts_limit(cfg, "stage1") == 0  # 0: the whole corpus


# --------------------------------------------------------------------------- stage-list validation


@pytest.mark.parametrize("stages, message", [
    ("[]", r"stages is empty"),
    ("[{name: a}, {name: a}]", r"two stages are named 'a'"),
    ("[{name: base}]", r"stages\.base\.name must be a name of letters, digits, - and _ \(not 'base'\)"),
    ("[{name: 'my stage'}]", r"stages\.my stage\.name must be a name of letters"),
    ("[{name: ../up}]", r"name must be a name of letters"),
    ("[{name: ''}]", r"stages\.\?\.name must be a name of letters"),
    ("[{name: a, start: b}, {name: b}]", r"stages\.a\.start is 'b', a later stage; a stage starts from base or an "
                                         r"earlier stage \(base\)"),
    ("[{name: a}, {name: b, start: c}]", r"stages\.b\.start is 'c', no stage; .*\(base, a\)"),
    ("[{name: a, targets: {kind: oracle}}]", r"stages\.a\.targets\.kind must be one of data-driven, model-derived; "
                                             r"got 'oracle'"),
    ("[{name: a, targets: {corpus: c.txt}}]", r"stages\.a\.targets\.kind must be one of data-driven, model-derived"),
    ("[{name: a, targets: {kind: model-derived, tau: 2}}]", r"stages\.a\.targets\.tau must be in \(0, 1\), got 2"),
    ("[{name: a, targets: {kind: model-derived, top_k: 0}}]", r"stages\.a\.targets\.top_k must be at least 1"),
    ("[{name: a, targets: {kind: data-driven, max_target_tokens: 0}}]",
     r"stages\.a\.targets\.max_target_tokens must be at least 1"),
    ("[{name: a, targets: {kind: data-driven, max_texts: -1}}]", r"stages\.a\.targets\.max_texts must be >= 0"),
    ("[{name: a, warmup_steps: 5}]", r"stages\.a\.warmup_steps is set but stages\.a\.schedule is constant"),
    ("[{name: a, steps: -1}]", r"stages\.a: steps and warmup_steps must be >= 0"),
    ("[{name: a, nme: b}]", r"unknown key stages\.a\.nme; did you mean stages\.a\.name\?"),
])
def test_a_bad_stage_list_is_refused_naming_the_key(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"model: {{path: m}}\nstages: {stages}\n"))


def test_a_kind_parameter_out_of_range_names_its_stage(tmp_path):
    p = write(tmp_path, "model: {path: m}\n" + TWO_STAGES)
    with pytest.raises(ConfigError, match=r"stages\.stage2\.targets\.tau must be in \(0, 1\), got 2"):
        load_config(p, ["stages.stage2.targets.tau=2"])
    with pytest.raises(ConfigError, match=r"stages\.stage2\.targets\.delta must be in \(0, 1\)"):
        load_config(p, ["stages.stage2.targets.delta=.nan"])


def test_unknown_objective_and_kind_name_the_registered_ones(tmp_path, capsys):
    """Both are checked at load, against their registries (no torch), with a did-you-mean."""
    from t2t.cli import main
    from t2t.objectives import OBJECTIVES

    p = write(tmp_path, "model: {path: m}\n" + TWO_STAGES)
    with pytest.raises(ConfigError, match=f"stages\\.stage2\\.targets\\.kind must be one of {', '.join(TARGET_KINDS)}"):
        load_config(p, ["stages.stage2.targets.kind=oracle"])
    message = (f"stages\\.stage1\\.objective\\.name must be one of {', '.join(OBJECTIVES)}; got 'simcsee'; "
               "did you mean 'simcse'\\?")
    with pytest.raises(ConfigError, match=message):
        load_config(p, ["stages.stage1.objective.name=simcsee"])
    assert main(["config", "--config", str(p), "--set", "stages.stage1.objective.name=contrastive"]) == 2
    err = capsys.readouterr().err
    assert "stages.stage1.objective.name must be one of" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match=r"stages\.stage1\.objective must be a mapping with a name, e\.g\. "
                                          r"\{name: simcse\}; got 'simcse'"):
        load_config(p, ["stages.stage1.objective=simcse"])


def test_an_objective_owns_its_settings_and_simcse_takes_the_recipes_pooling(tmp_path, capsys):
    """SimCSE from the Text2Token start (causal, PromptEOL, `last` pooling) loads as LLM2Vec's mean pooling does: the
    objective forces no pooling."""
    from t2t.cli import main
    from t2t.objectives import SimCSEObjective, Text2TokenObjective

    p = write(tmp_path, "model: {path: m, pooling: last, attention: causal}\n" + TWO_STAGES)
    simcse = "stages.stage1.objective.name=simcse"
    assert main(["config", "--config", str(p), "--set", simcse]) == 0
    assert "pooling: last" in capsys.readouterr().out
    for pooling in ("last", "mean"):
        cfg = load_config(p, [simcse, "stages.stage1.objective.temperature=0.1", f"model.pooling={pooling}"])
        assert [s.objective for s in cfg.stages] == [SimCSEObjective(temperature=0.1), Text2TokenObjective()]
        assert (cfg.model.pooling, cfg.model.attention) == (pooling, "causal")
    with pytest.raises(ConfigError, match=r"unknown key stages\.stage2\.objective\.temperature"):
        load_config(p, ["model.pooling=mean", "stages.stage2.objective.temperature=0.1"])  # t2t has no temperature


@pytest.mark.parametrize("override, message", [
    ("data.max_texts=-1", r"data\.max_texts must be >= 0"),
    ("stages.stage2.targets.max_texts=-5", r"stages\.stage2\.targets\.max_texts must be >= 0"),
    ("stages.stage1.lr=.nan", r"stages\.stage1: .*lr a finite number > 0"),
    ("stages.stage2.lr=.inf", r"stages\.stage2: .*lr a finite number > 0"),
    ("stages.stage2.lr=0", r"stages\.stage2: .*lr a finite number > 0"),
    ("train.grad_clip=.nan", r"train\.grad_clip must be a finite number >= 0"),
    ("train.grad_clip=-1", r"train\.grad_clip must be a finite number >= 0"),
    ("train.weight_decay=.inf", r"train\.weight_decay must be a finite number >= 0"),
    ("stages.stage1.objective={name: simcse, temperature: .inf}", r"stages\.stage1\.objective\.temperature must be > 0"),
    ("targets.workers=-1", r"targets\.workers must be >= 0 \(0 = automatic\), got -1"),
    ("seed=-1", r"r\.yaml: seed must be an integer in \[0, 2\*\*32\), got -1$"),  # it hung the loader workers
    ("seed=4294967296", r"r\.yaml: seed must be an integer in \[0, 2\*\*32\)"),
])
def test_nonsense_numbers_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "model: {path: m}\n"), [override])


def test_a_recipe_that_names_no_directories_gets_its_own(tmp_path):
    """Not the demo's: the pipeline writes targets with overwrite, so a shared default would replace its shards."""
    cfg = load_config(write(tmp_path, "name: mine\nrun_dir: runs/mine\nmodel: {path: m}\n"))
    assert (cfg.data.shards_dir, cfg.eval.out_dir) == ("shards/mine", "runs/mine/eval")
    cfg = load_config(write(tmp_path, "model: {path: m}\n"), ["data.shards_dir=elsewhere"])
    assert (cfg.data.shards_dir, cfg.eval.out_dir) == ("elsewhere", "runs/t2t/eval")


def test_a_directory_that_cannot_be_written_is_one_line(capsys):
    """/sys refuses a new directory even to root, as a read-only mount or another user's directory would."""
    from t2t.cli import main

    assert main(["pipeline", "--config", str(REPO / "recipes" / "tiny.yaml"), "--set", "run_dir=/sys/t2t-run"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("t2t pipeline: error: cannot write /sys/t2t-run") and "run_dir" in line, line


def test_the_demo_run_from_another_directory_says_what_it_needs_in_one_line(tmp_path, monkeypatch, capsys):
    """Issue #25, 12: relative paths resolve against the current directory; the demo run from elsewhere used to
    convert its base model and then fail at stage1:targets with a traceback. Now nothing runs, and one line says
    which inputs are missing and against which directory they were looked up."""
    from t2t.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--config", str(REPO / "recipes" / "demo.yaml")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"t2t pipeline: error: {REPO / 'recipes' / 'demo.yaml'} names inputs that are not here: "
                           "data.corpus data/corpus/wiki_sentences_60k.txt.gz (relative paths resolve against the "
                           f"current directory, {tmp_path}"), line
    assert list(tmp_path.iterdir()) == []  # no step ran: nothing converted, no run directory


def test_a_bad_seed_stops_training_before_any_rank_starts(capsys):
    from t2t.cli import main

    assert main(["train", "--config", str(REPO / "recipes" / "tiny.yaml"), "--stage", "stage1", "--set", "seed=-1"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"t2t train: error: {REPO / 'recipes' / 'tiny.yaml'}: seed must be an integer in [0, 2**32), got -1"


# --------------------------------------------------------------------------- the layout before stages were a list

REFUSED = "is the layout before stages were a list; use"


@pytest.mark.parametrize("section, message", [
    ("train: {stage2: {steps: 24, lr: 2.0e-5, schedule: constant}}",
     f"train.stage2 {REFUSED} stages.stage2.steps/lr/schedule (see t2t config --explain stages)"),
    ("train: {objective: simcse}",
     f"train.objective {REFUSED} stages.<stage>.objective (see t2t config --explain stages)"),
    ("data: {stage1_corpus: wiki.txt.gz}",
     f"data.stage1_corpus {REFUSED} data.corpus (see t2t config --explain data.corpus)"),
    ("data: {stage2_corpus: s.txt}",
     f"data.stage2_corpus {REFUSED} stages.stage2.targets.corpus (see t2t config --explain stages.targets)"),
    ("train: {simcse_dropout: 0.3}",
     "train.simcse_dropout is the layout before objectives had their own sections; use "
     "stages.<stage>.objective.dropout (see t2t config --explain stages.objective)"),
    ("targets: {tau: 1.0e-4, shard_size: 8}",
     f"targets.tau {REFUSED} stages.<stage>.targets.tau (see t2t config --explain stages.targets)"),
])
def test_an_old_layout_recipe_is_refused_naming_the_new_key(tmp_path, section, message):
    for text in (section, section + "\n" + TWO_STAGES):  # with or without a stage list beside it
        p = write(tmp_path, "model: {path: m}\n" + text + "\n", "old.yaml")
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert str(e.value) == f"{p}: {message}"


@pytest.mark.parametrize("override, named, equivalent", [
    ("train.stage2.steps=7", "train.stage2 → stages.stage2.steps", "stages.stage2.steps=7"),
    ("train.stage1.lr=1e-3", "train.stage1 → stages.stage1.lr", "stages.stage1.lr=1e-3"),
    ("train.objective=simcse", "train.objective → stages.<stage>.objective", "stages.stage1.objective.name=simcse"),
    ("targets.tau=1e-6", "targets.tau → stages.<stage>.targets.tau", "stages.stage2.targets.tau=1e-6"),
    ("targets.weighting=idf", "targets.weighting → stages.<stage>.targets.weighting",
     "stages.stage1.targets.weighting=idf"),
    ("data.stage2_max_texts=5", "data.stage2_max_texts → stages.stage2.targets.max_texts",
     "stages.stage2.targets.max_texts=5"),
    ("data.stage2_corpus=s2.txt", "data.stage2_corpus → stages.stage2.targets.corpus",
     "stages.stage2.targets.corpus=s2.txt"),
    ("data.stage1_corpus=s1.txt", "data.stage1_corpus → data.corpus", "data.corpus=s1.txt"),
])
def test_an_old_layout_override_is_refused_naming_the_new_key(tmp_path, override, named, equivalent):
    p = write(tmp_path, "model: {path: m, pooling: mean}\n" + TWO_STAGES)
    with pytest.raises(ConfigError) as e:
        load_config(p, [override])
    old, new = named.split(" → ")
    assert str(e.value).startswith(f"{p}: override {override!r}: {old} {REFUSED} {new} (see t2t config --explain ")
    assert "\n" not in str(e.value)
    load_config(p, [equivalent])  # the key it names is the one that works now


def test_an_old_layout_override_is_one_line_and_exit_2(capsys):
    from t2t.cli import main

    recipe = REPO / "recipes" / "tiny.yaml"
    assert main(["config", "--config", str(recipe), "--set", "targets.tau=1e-5"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"t2t config: error: {recipe}: override 'targets.tau=1e-5': targets.tau {REFUSED} "
                    "stages.<stage>.targets.tau (see t2t config --explain stages.targets)")
