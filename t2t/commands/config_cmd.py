"""`t2t config`: print a recipe after overrides and validation (what a job will actually use)."""

from __future__ import annotations

import yaml

from t2t.commands import add_config_args, load_recipe


def register(sub) -> None:
    p = sub.add_parser("config", help="print the validated recipe")
    add_config_args(p, required=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.config import to_dict

    print(yaml.safe_dump(to_dict(load_recipe(args)), sort_keys=False), end="")
    return 0
