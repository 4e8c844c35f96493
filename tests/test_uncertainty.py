"""Intervals and paired tests with answers known by hand: the exact bootstrap of a small sample,
the Wilcoxon signed-rank test's exact p-values, and the paired comparison with Baseline."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import uncertainty
from analysis.uncertainty import (
    bootstrap_interval,
    compare_with_baseline,
    geometric_mean,
    seed_spread,
    wilcoxon_p,
)


def test_the_exact_bootstrap_of_a_small_sample():
    # resample means of [0, 0, 0, 1] are k/4 with k ~ Binomial(4, 1/4): P(k <= 2) = 243/256 < 0.975 <= P(k <= 3)
    assert bootstrap_interval([0, 0, 0, 1]) == (0.0, 0.75)
    assert bootstrap_interval([2.5, 2.5, 2.5]) == (2.5, 2.5)
    assert all(math.isnan(x) for x in bootstrap_interval([1.0]))
    assert bootstrap_interval([1.0, float("nan"), 1.0]) == (1.0, 1.0), "NaN is dropped"


def test_the_sampled_bootstrap_agrees_with_the_exact_one(monkeypatch):
    values = [0.1, 0.4, 0.35, 0.8, 0.55, 0.2, 0.9]
    exact = bootstrap_interval(values)
    monkeypatch.setattr(uncertainty, "EXACT_MAX", 0)  # the path tables of more than 7 concepts take
    sampled = bootstrap_interval(values)
    assert sampled != exact and np.allclose(sampled, exact, atol=0.02)
    assert bootstrap_interval(values) == sampled, "a fixed seed: the same interval every time"


def test_wilcoxon_signed_rank_exact_p_values():
    assert wilcoxon_p([1, 2, 3, 4]) == 0.125, "four concepts can never give p < 0.125"
    assert wilcoxon_p(range(1, 13)) == pytest.approx(2 / 4096)
    assert wilcoxon_p([1, -2, 3, 4]) == 0.375
    assert wilcoxon_p([0, 0, 0]) == 1.0 and math.isnan(wilcoxon_p([]))


def runs_frame(rows):
    return pd.DataFrame(rows, columns=["method", "strategy", "concept", "seed", "iterations", "train_clip_img"])


def test_a_strategy_against_baseline_concept_by_concept():
    rows = []
    for i, concept in enumerate("abcd"):
        for seed in (1, 2):
            rows.append(("ti", "baseline", concept, seed, 400, 0.8 + 0.01 * i))
            rows.append(("ti", "dvar", concept, seed, 100 if concept != "d" else 400, 0.9 * (0.8 + 0.01 * i)))
    (c,) = compare_with_baseline(runs_frame(rows))
    assert (c.method, c.strategy, c.n) == ("ti", "dvar", 4)
    assert c.speedup == pytest.approx(geometric_mean([4, 4, 4, 1])) == pytest.approx(4 ** 0.75)
    # resamples hold k ones ~ Binomial(4, 1/4): P(k = 4) = 1/256 < 0.025 <= P(k >= 3) = 13/256
    assert c.speedup_ci == pytest.approx((4 ** 0.25, 4.0))
    assert c.kept == pytest.approx(0.9) and c.kept_ci == pytest.approx((0.9, 0.9))
    assert c.p_quality == 0.125 and c.p_updates == 0.25, "three of four concepts differ in updates"


def test_between_seed_spread():
    rows = [("ti", "dvar", "a", 1, 100, 0.5), ("ti", "dvar", "a", 2, 140, 0.7),
            ("ti", "dvar", "b", 1, 100, 0.5), ("ti", "dvar", "b", 2, 100, 0.5)]
    spread = seed_spread(runs_frame(rows), ["iterations", "train_clip_img"]).loc[("ti", "dvar")]
    assert spread.iterations == pytest.approx(np.std([100, 140], ddof=1) / 2)
    assert spread.train_clip_img == pytest.approx(np.std([0.5, 0.7], ddof=1) / 2)
