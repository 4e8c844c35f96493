"""Same seed, same records; L_det monitoring never changes the trained weights."""

from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from benchmark.engine.train import run
from benchmark.store import records
from tests.helpers import tiny_run_config, without_timing

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = pytest.mark.slow


def tables(results: Path) -> dict[str, pd.DataFrame]:
    return {t: without_timing(records.read(results, t)) for t in ("steps", "evals")}


def test_same_seed_writes_identical_steps_and_evals(tmp_path):
    for name in ("a", "b"):
        run(tiny_run_config("dreambooth_lora", "dvar", tmp_path / name, "strategy.max_steps=8",
                "strategy.threshold=0.01"), share_models=True)
    a, b = tables(tmp_path / "a"), tables(tmp_path / "b")
    assert len(a["steps"]) == 9
    pd.testing.assert_frame_equal(a["steps"], b["steps"])
    pd.testing.assert_frame_equal(a["evals"], b["evals"])


def test_other_seed_changes_the_trajectory(tmp_path):
    a = run(tiny_run_config("textual_inversion", "few_iters", tmp_path / "a"), share_models=True)
    b = run(tiny_run_config("textual_inversion", "few_iters", tmp_path / "b", "seed=60"), share_models=True)
    assert tables(tmp_path / "a")["steps"].train_loss.iloc[1] != tables(tmp_path / "b")["steps"].train_loss.iloc[1]
    assert a["run_id"] != b["run_id"]


def weights(results: Path, row: dict) -> dict:
    folder = results / row["weights_dir"]
    return {f.name: load_file(str(f)) for f in folder.glob("*.safetensors")}


def test_ldet_monitoring_does_not_change_training(tmp_path):
    """Baseline with and without L_det (and with resampled evaluation sources, which draw from the
    evaluation generator at every step): the same weights to the last bit."""
    for method in ("textual_inversion", "custom_diffusion"):
        rows = [run(tiny_run_config(method, "few_iters", tmp_path / f"{method}{i}", *extra), share_models=True)
                for i, extra in enumerate([["ldet.enabled=false"], ["ldet.log=always"],
                                           ["ldet.log=always", "ldet.fixed.noise=false", "ldet.fixed.images=false"]])]
        ref = weights(tmp_path / f"{method}0", rows[0])
        assert ref
        for i, row in enumerate(rows[1:], 1):
            other = weights(tmp_path / f"{method}{i}", row)
            assert ref.keys() == other.keys()
            for f in ref:
                assert ref[f].keys() == other[f].keys()
                assert all((ref[f][k] == other[f][k]).all() for k in ref[f]), f"{method}: {f} differs"
        assert records.read(tmp_path / f"{method}0", "steps").l_det.isna().all()
        assert all(records.read(tmp_path / f"{method}{i}", "steps").l_det.notna().all() for i in (1, 2))
