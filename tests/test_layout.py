"""The package's layout is its architecture: each sub-package sits on a layer, imports go down (or
sideways within a layer), never up, and no module imports itself through others. Function-local
imports exist only to keep torch (and the libraries built on it) out of commands that do not train;
each says so in a comment.

The walk reads the source (ast), top-level and function-local imports alike; nothing is imported."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import PROJECT_ROOT

# The layers, lowest first. A module may import its own layer and the ones below. The longest
# matching prefix decides a module's layer.
LAYERS = {
    "benchmark": 0,                 # the package's docstring and version
    "benchmark.core": 0,            # errors, registry, the CLI convention, provenance, checksums, fs
    "benchmark.concepts": 1,        # the concepts: manifest, fetch, images
    "benchmark.protocol": 2,        # run config, stopping criteria, strategies, experiments
    "benchmark.store": 3,           # records and run identity on disk
    "analysis": 3.5,                # tables, figures, report, replay: the records only, no torch
    "benchmark.engine": 4,          # the training engine: model, data, objective, methods, the loop
    "benchmark.toy": 4,             # the toy world: its data and pretraining beside the engine
    "benchmark.weights": 5,         # which weight files a config loads, fetch, load check
    "benchmark.preflight": 6,       # the checks and the cost before a sweep
    "benchmark.sweep": 7,           # plan, execute and report an experiment's grid
    # `python -m benchmark.preflight` is the sweep's `preflight` command under its own name: it runs
    # the sweep's parse and plan, so it sits with the sweep (the preflight's checks stay below it).
    "benchmark.preflight.__main__": 7,
    "benchmark.run": 8,             # one run from the command line
    "benchmark.measure": 9,         # measurements beside the product: bench, GPU check, kill trials
}
PACKAGES = ("benchmark", "analysis")

# Words a function-local import's comment must contain one of: it names why the import waits.
WHY = ("torch", "diffusers", "transformers", "open_clip", "timm", "lpips", "peft", "matplotlib", "scipy",
       "tensorboard", "wandb", "optional", "GPU", "CUDA")

@dataclass(frozen=True)
class Import:
    importer: str
    target: str          # the most specific module of the project it names
    line: int
    local: bool          # inside a function (runs when called, not when the module loads)
    comment: str         # the comment on the import's lines or the line above


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def resolve(name: str) -> str | None:
    """The project module an import names: itself, or the nearest package above it that exists."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _comment(lines: list[str], node: ast.stmt) -> str:
    text = [lines[i - 1] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)]
    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    found = [t.split("#", 1)[1] for t in text if "#" in t]
    if above.startswith("#"):
        found.append(above)
    return " ".join(found)


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "__future__":
                continue
            names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in `base`
        else:
            continue
        local = id(node) in local_nodes
        comment = _comment(lines, node)
        for name in names:
            target = resolve(name)
            out.append(Import(module, target or name, node.lineno, local, comment))
    return out


IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def layer(module: str) -> float:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no layer: add its package to LAYERS in tests/test_layout.py"
    return LAYERS[max(prefixes, key=len)]


def project_edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.target in MODULES and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_the_package():
    """The walk finds the modules and both kinds of import (a guard against a walk that sees nothing)."""
    assert {"benchmark.sweep.cli", "benchmark.engine.train", "analysis.tables"} <= set(MODULES)
    sweep = {i.target for i in IMPORTS if i.importer == "benchmark.sweep.cli"}
    assert "benchmark.sweep.plan" in sweep
    assert any(i.local for i in IMPORTS) and any(not i.local for i in IMPORTS)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(project_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_import():
    upward = sorted({f"{i.importer} (layer {layer(i.importer)}) imports {i.target} (layer {layer(i.target)}), "
                     f"line {i.line}" for i in IMPORTS
                     if i.target in MODULES and layer(i.target) > layer(i.importer)})
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_every_layer_is_a_package():
    """Every module sits in a package of LAYERS: a new top-level module must be placed on a layer."""
    for module in MODULES:
        layer(module)


def test_function_local_imports_say_why():
    """A function-local import exists only to keep torch (or a library built on it) out of a command
    that does not need it, and its comment says so; anything else is imported at the top."""
    silent = sorted(f"{MODULES[i.importer].relative_to(PROJECT_ROOT)}:{i.line}: {i.target}" for i in IMPORTS
                    if i.local and not any(w.lower() in i.comment.lower() for w in WHY))
    assert not silent, (f"{len(silent)} function-local imports without a comment saying what heavy import they "
                        "keep out (move them to the top of the module if none):\n" + "\n".join(silent))
