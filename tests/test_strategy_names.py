"""No code switches on a strategy's name: the names appear only in the strategies' own file, their
configs (conf/strategy/) and the tables' display names (derived from the strategies, so nowhere in
analysis/). A string literal of the package that holds a name as a word is a switch waiting to be
missed when someone adds a strategy."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("baseline", "clip_s", "few_iters_mean", "few_iters_max", "few_iters", "dvar")
# a literal that is a name ("clip_s") or picks one ("strategy=clip_s"); prose, paths and help texts that
# hold the word ("/scratch/dvar", "few_iters_steps.json") are not switches
ALT = "|".join(NAMES)
WORD = re.compile(rf"^(?:strategy=)?({ALT})$")
OWN = {ROOT / "benchmark" / "protocol" / "strategies.py"}
# Measurement scripts pick a strategy for their own runs, as an experiment file does (conf/experiments/):
# data, not dispatch.
DATA = ROOT / "benchmark" / "measure"
NOT_A_STRATEGY = {("benchmark/toy/pretrain.py", "clip_s")}  # the seconds the toy world's CLIP took to train


def docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def logger_names(tree: ast.AST) -> set[int]:
    """logging.getLogger("dvar"): the project's logger, named after the paper, not a strategy."""
    return {id(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call) and node.args
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "getLogger"}


def name_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = docstrings(tree) | logger_names(tree)
    where = str(path.relative_to(ROOT))
    return [f"{where}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and WORD.search(node.value) and (where, node.value) not in NOT_A_STRATEGY]


def test_no_strategy_name_outside_its_own_file():
    files = sorted(p for d in ("benchmark", "analysis") for p in (ROOT / d).rglob("*.py") 
             if p not in OWN and DATA not in p.parents)
    found = [hit for p in files for hit in name_literals(p)]
    assert not found, "strategy names outside benchmark/protocol/strategies.py:\n" + "\n".join(found)


def test_the_check_finds_a_switch():
    """The check itself can fail: a switch written the usual ways is found."""
    tree = ast.parse('if s == "dvar": pass\nx = "strategy=clip_s"\ny = "few_iters_steps.json"\nz = "dvar/x"\n')
    hits = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and WORD.search(n.value)]
    assert sorted(hits) == ["dvar", "strategy=clip_s"]
