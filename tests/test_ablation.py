"""The three ablation experiments run on the tiny backbone through the sweep command and give the
Fig. 5 grid, Table 4 with p-values and trend-to-noise ratios."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from analysis.ablation import (
    LOSSES,
    SCORES,
    combined_correlation,
    fisher_z,
    table4,
    table4_markdown,
    trend_to_noise,
    variant,
    write,
)
from analysis.load import completed_runs, evals_of, steps_of
from benchmark.sweep.cli import main as sweep
from tests.helpers import TINY

SAMPLE = ["concept=sample_duck_toy"]


def test_trend_to_noise_separates_a_trend_from_noise():
    rng = np.random.default_rng(0)
    t = np.arange(1000)
    noise = rng.standard_normal(1000)
    assert trend_to_noise(noise) < 0.3
    assert trend_to_noise(np.exp(-t / 200) + 0.02 * noise) > 10


@pytest.mark.slow  # a sweep of the ablation grid
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


@pytest.mark.slow  # a sweep of the ablation grid
def test_eval_batch_sizes(tmp_path):
    results = tmp_path / "r"
    tiny = [o for o in TINY if not o.startswith("ldet.batch_size")]  # the variants set it
    assert sweep(["experiment=ablation_eval_batch", *tiny, "strategy.steps=10", f"paths.results={results}", *SAMPLE]) == 0
    runs = completed_runs(results, "ablation_eval_batch")
    assert sorted(runs.config_json.map(lambda c: variant(c)[1])) == [1, 2, 4, 8]
    assert "ldet_grid.png" in write(results, "ablation_eval_batch", tmp_path / "out")


@pytest.mark.slow  # a sweep of the ablation grid
def test_timestep_intervals_give_table4(tmp_path):
    results = tmp_path / "r"
    assert sweep(["experiment=ablation_timesteps", *TINY, "strategy.max_steps=12", "strategy.eval_every=2",
                  f"paths.results={results}", *SAMPLE]) == 0
    runs = completed_runs(results, "ablation_timesteps")
    steps = steps_of(results, "ablation_timesteps", runs.run_id)
    assert steps[["l_det_begin", "l_det_middle", "l_det_end", "l_det"]].notna().all().all()
    t4 = table4(runs, steps, evals_of(results, "ablation_timesteps", runs.run_id))
    assert len(t4) == 16 and set(t4.interval) == {"Begin (0-333)", "Middle (333-666)", "End (666-1000)", "Full (0-1000)"}
    finite = t4[np.isfinite(t4.r)]
    assert len(finite) >= 12 and finite.n_points.eq(6).all() and finite.n_concepts.eq(1).all()
    # one concept, one run: r is that run's Pearson r over its 6 evaluated steps, and there is no p-value
    merged = evals_of(results, "ablation_timesteps", runs.run_id).merge(steps, on=["run_id", "step"])
    for row in finite.itertuples():
        score = next(k for k, v in SCORES.items() if v == row.metric)
        loss = next(k for k, v in LOSSES.items() if v == row.interval)
        assert row.r == pytest.approx(np.corrcoef(merged[score], merged[loss])[0, 1], abs=1e-9)
    assert t4.p.isna().all()
    text = write(results, "ablation_timesteps", tmp_path / "out")["ablation.md"].read_text()
    assert "Table 4" in text and "(no p: 1 concept)" in text and "[paper" in text and "one-sample t-test" in text


@pytest.mark.parametrize("sources", [("none",), ("noise",), ("images", "timesteps")])
def test_variant_names(sources):
    import json

    fixed = {s: s not in sources for s in ("images", "captions", "latents", "noise", "timesteps")}
    cfg = json.dumps({"ldet": {"fixed": fixed, "batch_size": 8, "accumulation": 4}})
    assert variant(cfg) == ("+".join(s for s in sources if s != "none") or "none", 32)


# --- Table 4 statistics: per-concept Fisher z, one-sample t-test across concepts -----------------------
def correlated(rng, n, r):
    x = rng.standard_normal(n)
    return x, r * x + np.sqrt(1 - r * r) * rng.standard_normal(n)


def random_walks(rng, n):
    return rng.standard_normal(n).cumsum(), rng.standard_normal(n).cumsum()


def naive_pooled_p(pairs):
    """The former Table 4 test: z-score within each concept, then one Pearson test over all points."""
    x = np.concatenate([(a - a.mean()) / a.std() for a, _ in pairs])
    y = np.concatenate([(b - b.mean()) / b.std() for _, b in pairs])
    return stats.pearsonr(x, y)[1]


def test_combined_correlation_hand_computed():
    # z = [0.1, 0.3, 0.5]: mean 0.3, sd 0.2, se 0.2/sqrt(3), t = 1.5 sqrt(3); with 2 df the t
    # distribution has the closed form p = 1 - t / sqrt(t^2 + 2); t_0.975(2 df) = 4.302653
    c = combined_correlation([0.1, 0.3, 0.5])
    t = 1.5 * np.sqrt(3)
    assert c["t"] == pytest.approx(t) and c["p"] == pytest.approx(1 - t / np.sqrt(t * t + 2), rel=1e-9)
    assert c["r"] == pytest.approx(np.tanh(0.3))
    half = 4.302653 * 0.2 / np.sqrt(3)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((np.tanh(0.3 - half), np.tanh(0.3 + half)), abs=1e-6)
    assert c["n_concepts"] == 3
    one = combined_correlation([0.4, np.nan])  # one finite z: an r, no test
    assert one["r"] == pytest.approx(np.tanh(0.4)) and np.isnan(one["p"]) and one["n_concepts"] == 1


def test_fisher_z_of_a_known_pair():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 4.0])  # Pearson r = 0.8
    assert fisher_z(x, y) == pytest.approx(np.arctanh(0.8))
    assert fisher_z(x, np.append(y[:3], np.nan)) == pytest.approx(np.arctanh(0.5))  # finite points only
    assert np.isnan(fisher_z(x, np.ones(4))) and np.isnan(fisher_z(x[:2], y[:2]))


@pytest.mark.parametrize("seed", range(5))
def test_a_planted_correlation_comes_back(seed):
    rng = np.random.default_rng(seed)
    c = combined_correlation([fisher_z(*correlated(rng, 30, 0.6)) for _ in range(9)])
    assert c["r"] == pytest.approx(0.6, abs=0.1) and c["ci_low"] < 0.6 < c["ci_high"] and c["p"] < 1e-3


def test_a_null_correlation_is_rarely_significant():
    ps = []
    for s in range(200):
        rng = np.random.default_rng(s)
        ps.append(combined_correlation([fisher_z(*correlated(rng, 30, 0.0)) for _ in range(9)])["p"])
    ps = np.array(ps)
    assert np.isfinite(ps).all() and (ps < 0.05).mean() <= 0.10  # nominal 0.05
    assert 0.4 < np.median(ps) < 0.6   # p is uniform under the null


def test_random_walks_are_not_significant_as_often_as_the_pooled_test_says():
    """Independent random walks correlate spuriously within a concept; pooling their ~30 steps as
    independent points rejects the true null most of the time, the test across concepts does not."""
    ours, naive = [], []
    for s in range(200):
        rng = np.random.default_rng(s)
        pairs = [random_walks(rng, 30) for _ in range(9)]
        ours.append(combined_correlation([fisher_z(a, b) for a, b in pairs])["p"])
        naive.append(naive_pooled_p(pairs))
    assert np.isfinite(ours).all()
    ours, naive = (np.array(ours) < 0.05).mean(), (np.array(naive) < 0.05).mean()
    assert naive > 0.4, naive
    assert ours <= 0.10, ours


def synthetic_table4_records(seed=0, concepts=9, steps=30):
    """Records of one run per concept (two for concept c0): train image score = -0.6 L_det (r = -0.6),
    validation text score independent of every loss (r = 0)."""
    rng = np.random.default_rng(seed)
    runs, step_rows, eval_rows = [], [], []
    for i in range(concepts):
        for j in range(2 if i == 0 else 1):
            rid = f"run{i}-{j}"
            runs.append({"run_id": rid, "concept": f"c{i}"})
            loss, score = correlated(rng, steps, 0.6)
            scale = 10.0 ** i  # loss scales differ between concepts; the correlation does not care
            for k in range(steps):
                step_rows.append({"run_id": rid, "step": 50 * (k + 1), **{lo: scale * loss[k] for lo in LOSSES}})
                eval_rows.append({"run_id": rid, "step": 50 * (k + 1), "train_clip_img": -score[k],
                                  "val_clip_img": -score[k], "train_clip_txt": score[k],
                                  "val_clip_txt": rng.standard_normal()})
    return pd.DataFrame(runs), pd.DataFrame(step_rows), pd.DataFrame(eval_rows)


def test_table4_recovers_planted_correlations():
    runs, steps, evals = synthetic_table4_records()
    t4 = table4(runs, steps, evals)
    assert len(t4) == 16 and t4.n_concepts.eq(9).all() and t4.n_points.eq(300).all()
    img = t4[t4.metric == "Train image score"]
    assert np.allclose(img.r, -0.6, atol=0.1) and (img.p < 1e-3).all() and (img.ci_high < 0).all()
    assert np.allclose(t4[t4.metric == "Train text score"].r, 0.6, atol=0.1)
    null = t4[t4.metric == "Validation text score"]
    assert (null.ci_low < 0).all() and (null.ci_high > 0).all() and (null.p > 0.05).all()
    # the table's r is tanh(mean z over concepts), concept c0's z the mean over its two runs
    z = []
    for i in range(9):
        zs = [fisher_z(steps[steps.run_id == rid].l_det, evals[evals.run_id == rid].train_clip_img)
              for rid in runs[runs.concept == f"c{i}"].run_id]
        z.append(np.mean(zs))
    full = t4[(t4.metric == "Train image score") & (t4.interval == "Full (0-1000)")].iloc[0]
    assert full.r == pytest.approx(np.tanh(np.mean(z)), abs=1e-12)
    assert full.p == pytest.approx(stats.ttest_1samp(z, 0.0).pvalue, rel=1e-9)
    md = table4_markdown(t4)
    assert f"{full.r:+.2f} [{full.ci_low:+.2f}, {full.ci_high:+.2f}] (p={full.p:.1e})" in md
    assert "over 9 concepts" in md and "one-sample t-test" in md
