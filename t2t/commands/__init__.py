"""One module per CLI verb; each defines `register(subparsers)` and sets `run` as the parser default."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """`--config R` and repeated `--set section.key=value` (the common recipe arguments)."""
    p.add_argument("--config", required=required, help="YAML recipe (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set stages.stage1.lr=1e-4 (repeatable; a stage is "
                        "addressed by its name)")


def add_stage_arg(p: argparse.ArgumentParser) -> None:
    """`--stage NAME` (a number N means the recipe's Nth stage)."""
    p.add_argument("--stage", required=True, metavar="NAME",
                   help="a stage of the recipe by name (e.g. stage1, stage2 for Text2Token); N = the Nth stage")


def stage_name(cfg, given: str) -> str:
    """The stage `--stage` names: a name of the recipe, or a 1-based position in its list."""
    from t2t.errors import UserError

    names = cfg.stage_names
    if given in names:
        return given
    if given.isdigit() and 1 <= int(given) <= len(names):
        return names[int(given) - 1]
    raise UserError(f"--stage {given}: the recipe's stages are {', '.join(names)} (or 1..{len(names)})")


def load_recipe(args: argparse.Namespace):
    from t2t.config import load_config

    return load_config(args.config, args.overrides)
