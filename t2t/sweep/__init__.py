"""Sweeps: a grid of recipe overrides run as separate pipelines that share their identical steps (see runner)."""

from t2t.sweep.grid import expand, parse_grid
from t2t.sweep.runner import Sweep, run_sweep

__all__ = ["Sweep", "run_sweep", "expand", "parse_grid"]
