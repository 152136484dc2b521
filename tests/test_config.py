"""Recipes load into typed configs; bad keys, types and combinations are rejected with the key named."""

from __future__ import annotations

import dataclasses

import pytest

from t2t import config as C
from t2t.config import ConfigError, load_config


def write(tmp_path, text: str):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "model: {path: m, pooling: mean}\ntrain: {stage1: {lr: 1e-4}}\n")
    cfg = load_config(p, ["model.attention=bidirectional", "train.stage2.steps=7", "targets.tau=1e-6"])
    assert cfg.model.attention == "bidirectional"
    assert cfg.train.stage1.lr == 1e-4  # YAML reads 1e-4 as a string; it is coerced to float
    assert cfg.train.stage2.steps == 7
    assert cfg.targets.tau == 1e-6
    assert cfg.model.template == "{text}"


def test_last_pooling_defaults_to_prompteol(tmp_path):
    cfg = load_config(write(tmp_path, "model: {path: m, pooling: last}\n"))
    assert cfg.model.template == C.PROMPT_EOL


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key model\.poolng; did you mean model\.pooling\?"):
        load_config(write(tmp_path, "model: {path: m, poolng: mean}\n"))
    with pytest.raises(ConfigError, match=r"unknown key trian; did you mean train\?"):
        load_config(write(tmp_path, "model: {path: m}\ntrian: {}\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size must be an integer"):
        load_config(write(tmp_path, "model: {path: m}\ntrain: {micro_batch_size: big}\n"))
    with pytest.raises(ConfigError, match=r"model\.pooling must be one of mean, last, eos"):
        load_config(write(tmp_path, "model: {path: m, pooling: max}\n"))


def test_inconsistent_combination(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.pooling=last needs model\.padding_side=left"):
        load_config(write(tmp_path, "model: {path: m, pooling: last, padding_side: right}\n"))
    with pytest.raises(ConfigError, match=r"model\.prompt must contain \{text\}"):
        load_config(write(tmp_path, "model: {path: m, prompt: 'no placeholder'}\n"))


def test_config_error_is_value_error_and_names_file(tmp_path):
    with pytest.raises(ValueError, match=r"r\.yaml"):
        load_config(write(tmp_path, "model: {path: m}\ntargets: {tau: 2}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, "model: {path: m}\n"), ["nonsense"])


def test_every_field_has_a_docstring():
    classes = [c for c in vars(C).values() if dataclasses.is_dataclass(c) and c.__module__ == C.__name__]
    assert len(classes) >= 8
    for cls in classes:
        docs = C.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without docstring: {missing}"


def test_stage2_reads_its_own_text_cap_or_the_shared_one():
    from t2t.config import DataConfig

    assert DataConfig(max_texts=10).texts_limit(1) == DataConfig(max_texts=10).texts_limit(2) == 10
    capped = DataConfig(max_texts=10, stage2_max_texts=4)
    assert (capped.texts_limit(1), capped.texts_limit(2)) == (10, 4)
    assert DataConfig(stage2_max_texts=4).texts_limit(1) == 0  # 0: the whole stage-1 corpus


@pytest.mark.parametrize("override, message", [
    ("data.max_texts=-1", r"data\.max_texts must be >= 0"),
    ("data.stage2_max_texts=-5", r"data\.stage2_max_texts must be >= 0"),
    ("train.stage1.lr=.nan", r"train\.stage1: .*lr a finite number > 0"),
    ("train.stage2.lr=.inf", r"train\.stage2: .*lr a finite number > 0"),
    ("train.grad_clip=.nan", r"train\.grad_clip must be a finite number >= 0"),
    ("train.grad_clip=-1", r"train\.grad_clip must be a finite number >= 0"),
    ("train.weight_decay=.inf", r"train\.weight_decay must be a finite number >= 0"),
    ("train.simcse_temperature=.inf", r"train\.simcse_temperature must be > 0"),
])
def test_nonsense_numbers_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "model: {path: m}\n"), [override])


def test_a_directory_as_recipe_and_a_missing_ds_config_are_named(tmp_path, capsys):
    from t2t.cli import main

    with pytest.raises(ConfigError, match=f"recipe {tmp_path} is a directory"):
        load_config(tmp_path)
    recipe = write(tmp_path, "model: {path: m}\ntrain: {ds_config: nowhere/zero3.json}\n")
    assert main(["config", "--config", str(recipe)]) == 2
    assert "train.ds_config: nowhere/zero3.json does not exist" in capsys.readouterr().err
