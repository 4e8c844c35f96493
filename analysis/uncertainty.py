"""Intervals and paired tests over concepts: how much a table cell or a claim can be trusted.

The unit of replication is the concept (seeds are averaged per concept first, as the tables do):
a cell's interval is a 95 % percentile bootstrap over concepts, and a strategy is compared with
Baseline concept by concept (the same concepts, seeds and trajectories), by

- speed-up: Baseline's updates / the strategy's, per concept; summarised by the geometric mean (a
  ratio of 2x and one of 0.5x average to 1x), with a bootstrap interval over concepts;
- quality kept: the strategy's train CLIP img / Baseline's, per concept; arithmetic mean, interval;
- a Wilcoxon signed-rank test of the per-concept differences (exact for small n): the p-value of
  "no difference". With n concepts it can never fall below 2 / 2^n (0.125 for four concepts).

With at most EXACT_MAX concepts the bootstrap enumerates every resample (n^n of them, weighted by
how often each multiset occurs), so small tables get exact, reproducible intervals; beyond that it
draws RESAMPLES resamples from a fixed seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from benchmark.protocol.strategies import REFERENCE

LEVEL = 0.95
RESAMPLES = 20000
EXACT_MAX = 7  # 7^7 = 823,543 resamples, enumerated as 1,716 weighted multisets


def _resample_statistics(values: np.ndarray, statistic, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(statistic of each resample, weight of each): exact enumeration for small n, else random."""
    n = len(values)
    if n <= EXACT_MAX:
        stats, weights = [], []
        for combo in itertools.combinations_with_replacement(range(n), n):
            counts = np.bincount(combo, minlength=n)
            # multinomial coefficient: the number of ordered resamples giving this multiset
            weights.append(math.factorial(n) / np.prod([math.factorial(int(c)) for c in counts]))
            stats.append(statistic(values[list(combo)]))
        return np.asarray(stats, dtype=float), np.asarray(weights, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(RESAMPLES, n))
    return np.asarray([statistic(values[i]) for i in idx], dtype=float), np.ones(RESAMPLES)


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The smallest x whose cumulative weight reaches q of the total (the inverse of the empirical CDF)."""
    order = np.argsort(x, kind="stable")
    cdf = np.cumsum(w[order]) / w.sum()
    return float(x[order][np.searchsorted(cdf, q - 1e-12)])


def bootstrap_interval(values, statistic=np.mean, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of `statistic` over `values` (NaN dropped); (nan, nan)
    for fewer than two values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return float("nan"), float("nan")
    stats, weights = _resample_statistics(v, statistic, seed)
    alpha = (1 - level) / 2
    return _weighted_quantile(stats, weights, alpha), _weighted_quantile(stats, weights, 1 - alpha)


def geometric_mean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def wilcoxon_p(differences) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that the differences are centred on 0
    (exact distribution for small samples, as scipy chooses); 1.0 when every difference is 0, NaN
    for no pairs."""
    from scipy.stats import (
        wilcoxon,  # scipy.stats loads in seconds; only the paired test needs it
    )

    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan")
    if not d.any():
        return 1.0
    return float(wilcoxon(d).pvalue)


@dataclass
class Comparison:
    """One strategy against Baseline for one method, over the concepts both have."""

    method: str
    strategy: str
    n: int                   # concepts paired
    speedup: float           # geometric mean of Baseline updates / the strategy's
    speedup_ci: tuple[float, float]
    kept: float              # mean of the strategy's quality / Baseline's (1.0 = all kept)
    kept_ci: tuple[float, float]
    p_quality: float         # Wilcoxon: quality differences centred on 0
    p_updates: float         # Wilcoxon: update-count differences centred on 0


def per_concept(runs, columns: list[str]):
    """Seed-averaged values per (method, strategy, concept)."""
    return runs.groupby(["method", "strategy", "concept"], observed=True)[columns].mean().reset_index()


def compare_with_baseline(runs, quality: str = "train_clip_img", reference: str = REFERENCE) -> list[Comparison]:
    """Every strategy of every method against `reference`, paired by concept."""
    table = per_concept(runs, ["iterations", quality])
    out = []
    for method, mine in table.groupby("method", sort=False, observed=True):
        base = mine[mine.strategy == reference][["concept", "iterations", quality]]
        for strategy, other in mine.groupby("strategy", sort=False, observed=True):
            if strategy == reference:
                continue
            pair = other.merge(base, on="concept", suffixes=("", "_base")).dropna()
            pair = pair[(pair.iterations > 0) & (pair[f"{quality}_base"] != 0)]
            speed = (pair.iterations_base / pair.iterations).to_numpy(dtype=float)
            kept = (pair[quality] / pair[f"{quality}_base"]).to_numpy(dtype=float)
            out.append(Comparison(
                str(method), str(strategy), len(pair),
                geometric_mean(speed) if len(speed) else float("nan"), bootstrap_interval(speed, geometric_mean),
                float(np.mean(kept)) if len(kept) else float("nan"), bootstrap_interval(kept),
                wilcoxon_p(pair[quality] - pair[f"{quality}_base"]),
                wilcoxon_p(pair.iterations - pair.iterations_base)))
    return out


def seed_spread(runs, columns: list[str]):
    """Per (method, strategy): the mean over concepts of the between-seed standard deviation
    (ddof=1) of each column; NaN where no concept has two seeds."""
    by_seed = runs.groupby(["method", "strategy", "concept"], observed=True)[columns].std(ddof=1)
    return by_seed.groupby(["method", "strategy"], observed=True).mean()
