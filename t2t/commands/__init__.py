"""One module per CLI verb; each defines `register(subparsers)` and sets `run` as the parser default."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """`--config R` and repeated `--set section.key=value` (the common recipe arguments)."""
    p.add_argument("--config", required=required, help="YAML recipe (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.stage1.lr=1e-4 (repeatable)")


def load_recipe(args: argparse.Namespace):
    from t2t.config import load_config

    return load_config(args.config, args.overrides)
