"""The import graph of `t2t` points one way (docs/DESIGN.md §2), read statically from the source: every `import`
inside t2t, at any depth (a lazy import inside a function is still a dependency) and under TYPE_CHECKING too (an
annotation that names a module above is still a dependency on it).

- `LAYERS` orders the rooms as docs/DESIGN.md lists them: a module imports from its own layer or lower ones only;
- no import cycle between modules;
- the torch-free modules the recipe loader and the manifest use really load without torch or Ray.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "t2t"
LAYERS = [
    ("core", ["t2t.errors", "t2t.dtypes", "t2t.data.files", "t2t.process", "t2t.registry"]),
    ("embedding", ["t2t.pooling", "t2t.identity", "t2t.data.tokens"]),
    ("kinds", ["t2t.data.corpus", "t2t.targets", "t2t.objectives"]),
    ("recipe", ["t2t.config", "t2t.run_paths", "t2t.fingerprints"]),
    ("model", ["t2t.model"]),
    ("shards", ["t2t.data"]),
    ("jobs", ["t2t.jobs"]),
    ("train", ["t2t.train"]),
    ("eval", ["t2t.eval"]),
    ("workflow", ["t2t.report", "t2t.pipeline", "t2t.sweep"]),
    ("plan", ["t2t.plan"]),
    ("cli", ["t2t.commands", "t2t.cli"]),
]
"""Lowest first; a module belongs to the layer of the longest prefix that names it (so `t2t.data.tokens` is in
`embedding`, the rest of `t2t.data` in `shards`). The same list, in words, is docs/DESIGN.md §2."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The t2t modules `path` imports (`from t2t.x import y` counts as t2t.x.y when that is a module)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
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


def layer_of(module: str) -> int:
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS and to docs/DESIGN.md §2"
    return max(matches)[1]


def test_no_import_runs_back_up():
    up = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
          for name, deps in sorted(graph().items()) if name != "t2t" for dep in sorted(deps)
          if dep != "t2t" and layer_of(dep) > layer_of(name)]
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(up)


def test_the_layers_are_those_docs_design_lists():
    design = (REPO / "docs" / "DESIGN.md").read_text()
    listed = [line.split("|")[1].strip() for line in design.splitlines() if line.startswith("| L")]
    assert listed == [f"L{i} {name}" for i, (name, _) in enumerate(LAYERS)], listed


def test_loader_and_manifest_modules_load_without_torch_or_ray():
    code = ("import sys, t2t.config, t2t.data.manifest, t2t.data.shards, t2t.targets.kinds, t2t.run_paths, "
            "t2t.identity, t2t.data.tokens; heavy = [m for m in ('torch', 'ray', 'deepspeed') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
