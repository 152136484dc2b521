"""One registry type: every lookup by name (pooling modes, target kinds, objectives, local tasks, eval model kinds,
CLI verbs) registers one way and refuses an unknown name with the same one line: every registered name, the name
given, the nearest one."""

from __future__ import annotations

import pytest

from t2t.errors import ConfigError, UserError
from t2t.registry import Registry


def test_a_name_is_registered_once_and_an_unknown_one_is_named_with_the_nearest():
    colours = Registry[int]("colour")
    colours.register("red", 1)
    colours.register("green", 2)
    assert colours.get("green") == 2 and list(colours) == ["red", "green"] and "red" in colours
    with pytest.raises(AssertionError, match="colour 'red' registered twice"):
        colours.register("red", 3)
    with pytest.raises(UserError) as e:
        colours.get("gren", key="paint.colour")
    assert str(e.value) == "paint.colour must be one of red, green; got 'gren'; did you mean 'green'?"
    assert str(colours.unknown("blue")) == "a colour must be one of red, green; got 'blue'"
    assert colours.unregister("red") == 1 and list(colours) == ["green"]


def test_every_registry_refuses_an_unknown_name_the_same_way():
    from t2t.eval.models import MODEL_KINDS
    from t2t.eval.tasks import LOCAL_TASKS
    from t2t.objectives import OBJECTIVES
    from t2t.pooling import POOLINGS
    from t2t.targets.kinds import TARGET_KINDS
    from t2t.cli import VERBS

    for registry, near, error in [(POOLINGS, "maen", ConfigError), (TARGET_KINDS, "data-drivn", ConfigError),
                                  (OBJECTIVES, "simcs", ConfigError), (LOCAL_TASKS, "BIOSES", UserError),
                                  (MODEL_KINDS, "tfid", UserError), (VERBS, "pipline", UserError)]:
        assert isinstance(registry, Registry)
        with pytest.raises(error, match=rf"^a {registry.what} must be one of {', '.join(registry)}; got '{near}'; "
                                        r"did you mean '.+'\?$"):
            registry.get(near)


def test_an_unknown_verb_is_one_line_with_a_did_you_mean(capsys):
    from t2t.cli import main

    assert main(["pipline", "--config", "recipes/demo.yaml"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("t2t: error: a verb must be one of config, ") and "did you mean 'pipeline'?" in line
