"""`t2t config`: every field of a recipe carries a docstring, and `--explain [SECTION|KEY]` prints each field's
type, default and docstring; without --explain it prints the validated recipe."""

from __future__ import annotations

import dataclasses

import pytest

from t2t import config as C
from t2t.config import ConfigError, load_config
from t2t.targets.kinds import TARGET_KINDS, ModelDerivedTargets, TargetsSpec
from test_config import TWO_STAGES, write


def _own_fields(cls: type) -> list[str]:
    """The fields `cls` declares itself (inherited ones are documented where they are declared)."""
    own = cls.__dict__.get("__annotations__", {})
    return [f.name for f in dataclasses.fields(cls) if f.name in own]


def _documented_classes() -> list[type]:
    from t2t.config import schema

    classes = [c for c in vars(schema).values() if dataclasses.is_dataclass(c) and c.__module__ == schema.__name__]
    return classes + [TargetsSpec] + [kind.spec for kind in TARGET_KINDS.values()]


def test_every_field_has_a_docstring():
    classes = _documented_classes()
    assert len(classes) >= 11 and C.StageConfig in classes and ModelDerivedTargets in classes
    for cls in classes:
        docs = C.field_docs(cls)
        missing = [name for name in _own_fields(cls) if not docs.get(name)]
        assert not missing, f"{cls.__name__} fields without docstring: {missing}"


def _explain(capsys, *section: str) -> tuple[int, str, str]:
    from t2t.cli import main

    rc = main(["config", "--explain", *section])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_explain_prints_every_field_of_every_section(capsys):
    rc, out, err = _explain(capsys)
    assert rc == 0 and not err
    flat = _flat(out)
    expected = [("", C.Config), ("model.", C.ModelConfig), ("model.tiny.", C.TinyModelConfig),
                ("data.", C.DataConfig), ("targets.", C.TargetsConfig), ("train.", C.TrainConfig),
                ("train.lora.", C.LoraConfig), ("eval.", C.EvalConfig), ("stages[].", C.StageConfig),
                ("stages[].targets.", TargetsSpec)]
    expected += [("stages[].targets.", kind.spec) for kind in TARGET_KINDS.values()]
    for prefix, cls in expected:
        docs = C.field_docs(cls)
        for name in _own_fields(cls):
            if cls is C.Config and name in ("model", "data", "targets", "train", "eval"):
                assert f"== {name} ==" in out  # a section of its own, headed by its class docstring
                continue
            assert f"\n{prefix}{name}: " in out, f"{prefix}{name} missing"
            assert _flat(docs[name]) in flat, f"docstring of {prefix}{name} missing"
    for kind in TARGET_KINDS:
        assert f"== stages.targets with kind: {kind} ==" in out
    # Type and default, the way a recipe writes them.
    assert '\nmodel.pooling: mean | last | eos | echo = "mean"\n' in out
    assert "\nstages[].lr: float = 5e-05\n" in out
    assert "\nmodel.tiny: section (below) | null = null\n" in out
    assert "\nstages: list of stages = [stage1 (data-driven, from base), stage2 (model-derived, from stage1)]\n" in out


def test_explain_a_section(capsys):
    rc, out, _ = _explain(capsys, "model")
    assert rc == 0
    assert "\nmodel.pooling: " in out and "\nmodel.tiny.vocab_size: " in out  # nested sections come along
    assert "train." not in out and "stages[]" not in out and "\nname: " not in out
    rc, out, _ = _explain(capsys, "train.lora")
    assert rc == 0 and "\ntrain.lora.r: int = 16\n" in out and "train.micro_batch_size" not in out
    rc, out, _ = _explain(capsys, "stages")
    assert rc == 0 and "\nstages[].start: " in out and "\nstages[].targets.tau: " in out and "model." not in out
    rc, out, _ = _explain(capsys, "stages.targets")
    assert rc == 0 and "\nstages[].targets.corpus: " in out and "\nstages[].targets.weighting: " in out
    assert "\nstages[].lr" not in out
    rc, out, _ = _explain(capsys, "model.pooling")  # one field
    assert rc == 0 and "\nmodel.pooling: " in out and "model.path" not in out
    # a field as `--set` writes it (with its stage's name), or as the layout before stages were a list did (a
    # kind's field under `targets`): a recipe or override of that layout is refused, but --explain only reads
    for key, field in (("stages.stage1.lr", "stages[].lr"), ("stages.stage2.targets.tau", "stages[].targets.tau"),
                       ("targets.tau", "stages[].targets.tau")):
        rc, out, _ = _explain(capsys, key)
        assert rc == 0 and out.count("\n" + field + ": ") == 1 and "stages[].start" not in out, (key, out)


def test_explain_says_what_changing_each_field_reruns(capsys):
    """Every field but the stage list itself carries its role's line (t2t/fingerprints.py)."""
    from t2t.commands.config_cmd import sections
    from t2t.fingerprints import CHANGING, role_of

    entries = [e.path for s in sections() for e in s.entries]
    assert [p for p in entries if role_of(p) is None] == ["stages"]
    for key, line in (("train.save_every", "Changing it reruns nothing."),
                      ("stages.stage1.lr", f"Changing it {CHANGING['training']}."),
                      ("stages.targets.tau", f"Changing it {CHANGING['targets']}."),
                      ("train.lora.r", f"Changing it {CHANGING['training']}.")):
        rc, out, _ = _explain(capsys, key)
        assert rc == 0 and line in _flat(out), (key, out)


def test_explain_a_kind(capsys):
    rc, out, _ = _explain(capsys, "model-derived")
    assert rc == 0
    for name in ("tau", "delta", "top_k"):
        assert f"\nstages[].targets.{name}: " in out
    assert "weighting" not in out and "stages[].lr" not in out
    rc, out, _ = _explain(capsys, "data-driven")
    assert rc == 0 and "\nstages[].targets.weighting: uniform | idf = \"uniform\"\n" in out and "tau" not in out


def test_explain_an_unknown_section_is_one_line(capsys):
    rc, out, err = _explain(capsys, "modle")
    assert rc == 2 and not out
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--explain modle: no such section; did you mean model?" in err
    for key in ("model", "train.lora", "stages", "stages.targets", *TARGET_KINDS):
        assert key in err


def test_config_without_explain_prints_the_recipe_and_needs_one(tmp_path, capsys):
    from t2t.cli import main

    import yaml

    recipe = write(tmp_path, "model: {path: m}\n" + TWO_STAGES)
    assert main(["config", "--config", str(recipe), "--set", "stages.stage2.steps=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [s["name"] for s in printed["stages"]] == ["stage1", "stage2"] and printed["stages"][1]["steps"] == 3
    assert main(["config"]) == 2
    assert "--config R is required" in capsys.readouterr().err


def test_a_directory_as_recipe_and_a_missing_ds_config_are_named(tmp_path, capsys):
    from t2t.cli import main

    with pytest.raises(ConfigError, match=f"recipe {tmp_path} is a directory"):
        load_config(tmp_path)
    recipe = write(tmp_path, "model: {path: m}\ntrain: {ds_config: nowhere/zero3.json}\n")
    assert main(["config", "--config", str(recipe)]) == 2
    assert "train.ds_config: nowhere/zero3.json does not exist" in capsys.readouterr().err
