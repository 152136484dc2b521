"""A sweep's grid: `--grid key=v1,v2` flags → named, validated, de-duplicated points.

Each point is the recipe with one `--set key=value` per grid key. Its name is built from the swept keys'
last components and the values as given (`tau=1e-5_lr=1e-3`), so a directory listing reads as the grid.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from t2t.config import Config, ConfigError, load_config, to_dict
from t2t.errors import UserError

SWEEP_OWNED = ("name", "run_dir", "data.shards_dir", "eval.out_dir")
"""Keys the sweep sets per point (each point's own name and directories): never a grid key."""


@dataclass
class Point:
    name: str
    assignments: dict[str, str]
    """Grid key → value, as given on the command line."""
    cfg: Config = field(repr=False, default=None)
    """The recipe with the recipe-wide overrides and this point's assignments (directories not yet the point's)."""

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.assignments.items()]


def parse_grid(flags: list[str]) -> dict[str, list[str]]:
    """`["a=1,2", "b=x,y"]` → {"a": ["1", "2"], "b": ["x", "y"]}; a key given twice has its values merged."""
    if not flags:
        raise UserError("the grid is empty: give at least one --grid KEY=V1,V2 (e.g. --grid stages.stage1.lr=1e-3,1e-4)")
    grid: dict[str, list[str]] = {}
    for flag in flags:
        key, sep, values = flag.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not items:
            raise UserError(f"--grid {flag!r} must look like KEY=V1,V2 with at least one value")
        if key in SWEEP_OWNED:
            raise UserError(f"--grid {key}: the sweep sets {', '.join(SWEEP_OWNED)} for each point; sweep another key")
        merged = grid.setdefault(key, [])
        merged += [v for v in items if v not in merged]
    return grid


def labels(keys: list[str]) -> dict[str, str]:
    """Short, unambiguous labels: the shortest dotted suffix of each key that no other key ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        out[key] = label
    return out


def point_name(assignments: dict[str, str], label: dict[str, str]) -> str:
    text = "_".join(f"{label[k]}={v}" for k, v in assignments.items())
    return re.sub(r"[^A-Za-z0-9=._+-]", "-", text)


def expand(recipe: str, overrides: list[str], grid: dict[str, list[str]]) -> tuple[list[Point], list[str]]:
    """Every point of the grid's cartesian product, validated; identical recipes once.

    Returns (points, notes): a note per point dropped as a duplicate of an earlier one. A key that does not
    exist fails once with the loader's nearest valid name; a value of the wrong type names its point."""
    load_config(recipe, overrides)  # the recipe and its recipe-wide overrides, alone
    keys = list(grid)
    for key in keys:  # an unknown key fails here, with the nearest valid name, before any point is named
        load_config(recipe, [*overrides, f"{key}={grid[key][0]}"])
    label = labels(keys)
    points: list[Point] = []
    seen: dict[str, str] = {}
    notes = []
    for values in itertools.product(*(grid[k] for k in keys)):
        assignments = dict(zip(keys, values))
        name = point_name(assignments, label)
        point = Point(name, assignments)
        try:
            point.cfg = load_config(recipe, [*overrides, *point.overrides])
        except ConfigError as e:
            raise ConfigError(f"grid point {name}: {e}") from None
        identity = repr(sorted(to_dict(point.cfg).items()))
        if identity in seen:
            notes.append(f"grid point {name} is the same recipe as {seen[identity]}: it runs once, as {seen[identity]}")
            continue
        if name in {p.name for p in points}:
            raise UserError(f"grid points {name!r} collide after making the name filesystem-safe; rename a value")
        seen[identity] = name
        points.append(point)
    return points, notes
