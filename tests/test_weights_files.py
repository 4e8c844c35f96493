"""Weights files are written like the records: atomically, with the records' permissions, and byte for
byte the same from two clean runs of the same config, for all three methods."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT_ROOT, TINY

pytestmark = pytest.mark.slow


def sweep_in_a_fresh_process(exp: Path, results: Path, hash_seed: str) -> None:
    """Each in a process of its own, with its own string hashing (the order of a Python set)."""
    subprocess.run([sys.executable, "-m", "benchmark.sweep", f"experiment={exp}", f"paths.results={results}"],
                   cwd=PROJECT_ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONHASHSEED": hash_seed})


def weights(results: Path) -> dict[Path, Path]:
    return {p.relative_to(results): p for p in results.glob("work/*/*/weights/*/*")}


def test_weights_are_byte_reproducible_and_readable_like_the_records(tmp_path):
    exp = tmp_path / "weights.yaml"
    exp.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(
        {"overrides": [*TINY, "method.protocol.few_iters.mean=3"], "few_iters": "pinned",
         "per_method": {"custom_diffusion": ["method.prior.num_class_images=2"]},
         "grid": {"method": ["textual_inversion", "dreambooth_lora", "custom_diffusion"],
                  "strategy": ["few_iters_mean"], "concept": ["sample_duck_toy"], "seed": [59]}}))
    a, b = tmp_path / "a", tmp_path / "b"
    sweep_in_a_fresh_process(exp, a, "1")
    sweep_in_a_fresh_process(exp, b, "2")
    files = weights(a)
    assert {p.name for p in files.values()} == {"learned_embeds.safetensors", "pytorch_lora_weights.safetensors",
                                                "pytorch_custom_diffusion_weights.safetensors"}
    assert set(files) == set(weights(b))
    for name, path in files.items():
        assert path.read_bytes() == (b / name).read_bytes(), f"{name} differs between two clean runs"
    record_mode = stat.S_IMODE(next((a / "runs").rglob("*.parquet")).stat().st_mode)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files.values()} == {record_mode}, "as readable as the records"
