"""Offline MTEB tasks over real data shipped in `data/eval` (sources and licences in data/SOURCES.md).

Each task is a real mteb task class (mteb's own evaluators, splits, metrics and main score);
only `load_data` differs: it reads the local files instead of the Hugging Face hub. The task
names are those of the official tasks, so results read naturally; each description says where
the local data differs from the official one.

The dataset revision recorded in every result is derived from the SHA-256 of the task's data files
(its `files`, the same sums as the upstream SOURCES.md), and `load_data` checks the files against
them: a changed or damaged file fails its task with a clear error instead of producing a score that
silently differs from earlier ones.

    from t2t.eval.tasks import local_task
    task = local_task("STSBenchmark")                  # reads data/eval/sts/stsbenchmark_test.tsv
    task = local_task("SciFact", max_samples=50)       # a small seeded sample, for smoke tests

A task is a module of this package (a `LocalTaskMixin` subclass of its mteb abstract task, with its files
and their sums) plus its line in `_MODULES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from t2t.eval.tasks.base import DEFAULT_DATA_DIR, LocalTaskMixin, read_tsv  # noqa: F401 - the package's API
from t2t.registry import Registry

LOCAL_TASKS = Registry[type[LocalTaskMixin]]("local task")
"""The tasks evaluated from `data/eval` (offline), by their official mteb names."""

_MODULES = {"sts_benchmark": "LocalSTSBenchmark", "biosses": "LocalBIOSSES", "scifact": "LocalSciFact",
            "banking77": "LocalBanking77Classification", "twenty_newsgroups": "LocalTwentyNewsgroupsClustering",
            "twitter_url": "LocalTwitterURLCorpus"}
"""Each task's module in this package → its class: the one registration of a local task."""

for _module, _class in _MODULES.items():
    _task = getattr(importlib.import_module(f"{__name__}.{_module}"), _class)
    LOCAL_TASKS.register(_task.metadata.name, _task)


def local_task(name: str, data_dir: str | Path | None = None, max_samples: int = 0):
    """A local task by its (official) name; a UserError lists the registered ones."""
    return LOCAL_TASKS.get(name)(data_dir=data_dir, max_samples=max_samples)
