"""`t2t config`: print a recipe after overrides and validation (what a job will actually use), its
DeepSpeed JSON checked too."""

from __future__ import annotations

import yaml

from t2t.commands import add_config_args, load_recipe


def register(sub) -> None:
    p = sub.add_parser("config", help="print the validated recipe")
    add_config_args(p, required=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.config import to_dict
    from t2t.train.engine import build_ds_config

    cfg = load_recipe(args)
    build_ds_config(cfg)  # the DeepSpeed JSON exists, parses and has no "auto": a job would fail on it later
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
