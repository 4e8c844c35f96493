"""The preflight loads every model of a sweep offline in a fresh process, whatever its source: a
broken file of the shipped toy model or of a plain folder is one problem line naming the file and
the fix, and nothing runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmark.sweep.cli import main as sweep
from tests.helpers import PROJECT_ROOT

pytestmark = pytest.mark.slow
TOY_WEIGHTS = PROJECT_ROOT / "benchmark" / "toy" / "weights"


def toy_copy(tmp_path: Path) -> Path:
    """A copy of the shipped toy weights (the repository's own are never touched)."""
    return Path(shutil.copytree(TOY_WEIGHTS, tmp_path / "weights"))


def pointing_at(weights: Path, results: Path) -> list[str]:
    """The main job on the copy: the toy model and the toy metric models read from `weights`."""
    return ["experiment=toy_smoke", f"model.pretrained={weights / 'pipeline'}",
            f"metrics.clip.pretrained={weights / 'clip.pt'}", f"metrics.clip.config_file={weights / 'dvar-toy-clip.json'}",
            f"metrics.dino.checkpoint={weights / 'features.safetensors'}", f"paths.results={results}"]


def problem_lines(err: str) -> list[str]:
    """The preflight's problems: one per listed line, or the one error line of a single problem."""
    listed = [ln for ln in err.splitlines() if ln.startswith("  - ")]
    return listed or [ln for ln in err.splitlines() if ln.startswith("error: ") and "cannot start" in ln]


def test_an_intact_copy_loads_and_the_listing_says_what_was_checked(tmp_path, capsys):
    assert sweep(["preflight", *pointing_at(toy_copy(tmp_path), tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "ok    every model loads with the network off" in out
    assert "in the cache" not in out, "local files are not in a cache"


def test_each_broken_toy_file_is_one_problem_and_nothing_runs(tmp_path, capsys):
    weights = toy_copy(tmp_path)
    (weights / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (weights / "clip.pt").write_bytes(b"not a checkpoint")
    (weights / "dvar-toy-clip.json").unlink()
    results = tmp_path / "results"
    assert sweep(pointing_at(weights, results)) == 2
    captured = capsys.readouterr()
    assert "FAIL  every model loads with the network off" in captured.out
    problems = problem_lines(captured.err)
    assert len(problems) == 3, captured.err
    for name in ("unet/diffusion_pytorch_model.safetensors", "clip.pt", "dvar-toy-clip.json"):
        line = next((p for p in problems if str(weights / "pipeline" / name) in p or str(weights / name) in p), None)
        assert line is not None, f"no problem names {name}: {problems}"
        assert "python -m benchmark.toy.pretrain" in line, "the line says how to get the file back"
    assert "nothing was submitted" in captured.err
    assert not (results / "runs").exists() and not (results / "work").exists(), "nothing ran"


def test_a_plain_folder_without_checksums_is_loaded_too(tmp_path, capsys):
    folder = Path(shutil.copytree(TOY_WEIGHTS / "pipeline", tmp_path / "my_model"))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    args = ["preflight", "experiment=toy_smoke", f"model.pretrained={folder}", f"paths.results={tmp_path / 'r'}"]
    assert sweep(args) == 2
    err = capsys.readouterr().err
    problems = problem_lines(err)
    assert len(problems) == 1 and "model toy" in problems[0] and str(folder / "unet") in problems[0], err
    assert "no file named diffusion_pytorch_model" in problems[0]
