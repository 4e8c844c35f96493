"""A method is known by name only to its own file, its conf and the tables' display names: nothing
else in the package dispatches on it, so a new method is its file plus its conf (tests/test_custom_method.py)."""

import ast
from pathlib import Path

from tests.helpers import CONF_DIR, PROJECT_ROOT

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
# Where a method's name may stand as a string literal, and why.
ALLOWED = {
    "analysis/load.py": "the tables' display names",
    # The concept datasets are named after the papers that published them (concepts/manifest.csv `source`).
    "benchmark/concepts/": "dataset names",
    # Our methods beside the diffusers example script that trains the same thing (a peer exists only
    # for some methods, by nature).
    "benchmark/measure/peers.py": "the diffusers example script of each method",
}


def literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant that is exactly a method's name (prose mentioning one is fine)."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in METHODS]


def test_the_three_methods_are_found():
    assert {"textual_inversion", "dreambooth_lora", "custom_diffusion"} <= set(METHODS)


def test_no_method_name_outside_its_own_file():
    found = []
    for package in ("benchmark", "analysis"):
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            rel = path.relative_to(PROJECT_ROOT).as_posix()
            if any(rel.startswith(prefix) for prefix in ALLOWED):
                continue
            found += [f"{rel}:{line}: {value!r}" for line, value in literals(path)
                      if rel != f"benchmark/engine/methods/{value}.py"]
    assert not found, "method names used outside their plugin:\n" + "\n".join(found)
