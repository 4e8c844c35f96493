"""The three ablation experiments run on the tiny backbone through the sweep command and give the
Fig. 5 grid, Table 4 with p-values and trend-to-noise ratios."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.ablation import table4, trend_to_noise, variant, write
from analysis.load import completed_runs, evals_of, steps_of
from benchmark.sweep.cli import main as sweep
from tests.helpers import TINY

SAMPLE = ["--concepts", "sample_duck_toy"]


def test_trend_to_noise_separates_a_trend_from_noise():
    rng = np.random.default_rng(0)
    t = np.arange(1000)
    noise = rng.standard_normal(1000)
    assert trend_to_noise(noise) < 0.3
    assert trend_to_noise(np.exp(-t / 200) + 0.02 * noise) > 10


def test_stochasticity_grid(tmp_path):
    results = tmp_path / "r"
    assert sweep(["experiment=ablation_stochasticity", *TINY, "strategy.steps=10", "ldet.batch_size=1",
                  "sampling.images_per_val_prompt=1",
                  f"paths.results={results}", *SAMPLE]) == 0
    runs = completed_runs(results, "ablation_stochasticity")
    variants = set(runs.config_json.map(variant))
    assert ("none", 1) in variants and ("timesteps", 64) in variants and len(variants) == 21
    files = write(results, "ablation_stochasticity", tmp_path / "out")
    with Image.open(files["ldet_grid.png"]) as im:
        assert im.size[0] > 600
    tnr = pd.read_csv(files["trend_to_noise.csv"])
    assert len(tnr) == 21 and tnr.l_det.notna().all()


def test_eval_batch_sizes(tmp_path):
    results = tmp_path / "r"
    tiny = [o for o in TINY if not o.startswith("ldet.batch_size")]  # the variants set it
    assert sweep(["experiment=ablation_eval_batch", *tiny, "strategy.steps=10", f"paths.results={results}", *SAMPLE]) == 0
    runs = completed_runs(results, "ablation_eval_batch")
    assert sorted(runs.config_json.map(lambda c: variant(c)[1])) == [1, 2, 4, 8]
    assert "ldet_grid.png" in write(results, "ablation_eval_batch", tmp_path / "out")


def test_timestep_intervals_give_table4(tmp_path):
    results = tmp_path / "r"
    assert sweep(["experiment=ablation_timesteps", *TINY, "strategy.max_steps=12", "strategy.eval_every=2",
                  f"paths.results={results}", *SAMPLE]) == 0
    runs = completed_runs(results, "ablation_timesteps")
    steps = steps_of(results, "ablation_timesteps", runs.run_id)
    assert steps[["l_det_begin", "l_det_middle", "l_det_end", "l_det"]].notna().all().all()
    t4 = table4(runs, steps, evals_of(results, "ablation_timesteps", runs.run_id))
    assert len(t4) == 16 and set(t4.interval) == {"Begin (0-333)", "Middle (333-666)", "End (666-1000)", "Full (0-1000)"}
    assert t4.n_points.eq(6).all()
    finite = t4[np.isfinite(t4.r)]
    assert len(finite) >= 12 and ((finite.p >= 0) & (finite.p <= 1)).all()
    text = write(results, "ablation_timesteps", tmp_path / "out")["ablation.md"].read_text()
    assert "Table 4" in text and "p=" in text and "[paper" in text


@pytest.mark.parametrize("sources", [("none",), ("noise",), ("images", "timesteps")])
def test_variant_names(sources):
    import json

    fixed = {s: s not in sources for s in ("images", "captions", "latents", "noise", "timesteps")}
    cfg = json.dumps({"ldet": {"fixed": fixed, "batch_size": 8, "accumulation": 4}})
    assert variant(cfg) == ("+".join(s for s in sources if s != "none") or "none", 32)
