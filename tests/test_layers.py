"""The import graph of `t2t` points one way (docs/DESIGN.md §2), read statically from the source: every `import`
inside t2t, at any depth (a lazy import inside a function is still a dependency), except under TYPE_CHECKING.

- no import cycle between modules;
- `t2t/data` and `t2t/targets` import neither `t2t.model`'s internals (its modules; the package's public names
  are allowed) nor anything that drives jobs (Ray drivers, training, evaluation, the pipeline);
- the torch-free modules the recipe loader and the manifest use really load without torch or Ray.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "t2t"
DRIVERS = ("t2t.ray_jobs", "t2t.train", "t2t.eval", "t2t.pipeline", "t2t.commands", "t2t.cli", "t2t.report",
           "t2t.plan")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The t2t modules `path` imports (`from t2t.x import y` counts as t2t.x.y when that is a module)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks are for annotations only
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("t2t")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("t2t") and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt in g and state.get(nxt) is None:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(g):
        if state.get(node) is None:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_data_and_targets_do_not_reach_up():
    bad = []
    for name, deps in graph().items():
        if not name.startswith(("t2t.data", "t2t.targets")):
            continue
        for dep in deps:
            if dep.startswith("t2t.model.") or dep.startswith(DRIVERS):
                bad.append(f"{name} imports {dep}")
    assert not bad, "\n".join(bad)


def test_loader_and_manifest_modules_load_without_torch_or_ray():
    code = ("import sys, t2t.config, t2t.data.manifest, t2t.data.shards, t2t.targets.kinds, t2t.run_paths, "
            "t2t.identity, t2t.data.tokens; heavy = [m for m in ('torch', 'ray', 'deepspeed') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
