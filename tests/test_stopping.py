"""DVAR and CLIP-s stop exactly where the official criteria stop (reference/dvar_reference.md §3)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.errors import ConfigError
from benchmark.stopping import DVAR, ClipS


@np.errstate(invalid="ignore")
def official_dvar(values, window, eps):
    """The official VarEarlyStopper, literally: np.var (ddof=0) of the last `window` values over the
    whole history, checked once the history holds `window` values, strict `<`."""
    history = []
    for k, v in enumerate(values):
        history.append(v)
        ratio = 1.0
        if len(history) >= window:
            ratio = np.var(np.array(history[-window:])) / np.var(np.array(history))
        if ratio < eps:
            return k
    return None


def official_clip_s(values, patience, eps):
    """The official ClipEarlyStopper: the first check seeds the best, strict `> best + eps`, stop once
    the count of checks without improvement exceeds `patience`."""
    best, without = None, 0
    for k, v in enumerate(values):
        if best is None:
            best = v
        elif v > best + eps:
            best, without = v, 0
        else:
            without += 1
        if without > patience:
            return k
    return None


def first_stop(criterion, values):
    for k, v in enumerate(values):
        if criterion.update(k, v):
            return k
    return None


def converging(seed: int, n: int, noise: float, rate: float) -> list[float]:
    """An L_det-like curve: exponential decay to a plateau plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return list(1.0 + np.exp(-rate * t) + noise * rng.standard_normal(n))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 400), window=st.integers(2, 120),
       eps=st.floats(0.001, 0.999), noise=st.floats(0.0, 0.5), rate=st.floats(0.0, 0.2))
def test_dvar_matches_official_on_converging_curves(seed, n, window, eps, noise, rate):
    values = converging(seed, n, noise, rate)
    assert first_stop(DVAR(window, eps), values) == official_dvar(values, window, eps)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(-10, 10, allow_nan=False) | st.sampled_from([0.0, 1.0]), max_size=200),
       window=st.integers(2, 30), eps=st.floats(0.001, 0.999))
def test_dvar_matches_official_on_arbitrary_sequences(values, window, eps):
    # Repeated values give zero variances (0/0 ratios), the edge case the strict rules must handle.
    assert first_stop(DVAR(window, eps), values) == official_dvar(values, window, eps)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(0, 1, allow_nan=False) | st.sampled_from([0.5, 0.52, 0.54]), max_size=120),
       patience=st.integers(0, 8), eps=st.sampled_from([0.0, 0.02, 0.04]) | st.floats(0, 0.2))
def test_clip_s_matches_official(values, patience, eps):
    assert first_stop(ClipS(patience, eps), values) == official_clip_s(values, patience, eps)


def test_dvar_no_decision_until_more_than_window_values():
    # A perfectly flat tail after a jump: the ratio would be 0 at once, but not before N+1 values.
    values = [5.0] + [1.0] * 50
    assert first_stop(DVAR(10, 0.5), values) == 10  # step 10 = the 11th value


def test_dvar_uses_population_variance():
    values = converging(0, 300, 0.05, 0.05)
    d = DVAR(50, 0.15)
    for k, v in enumerate(values):
        d.update(k, v)
    h = np.array(values)
    assert d.value == pytest.approx(h[-50:].var(ddof=0) / h.var(ddof=0), rel=1e-12)


def test_clip_s_stops_on_the_patience_plus_one_th_flat_check():
    assert first_stop(ClipS(patience=3, eps=0.0), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]) == 4


def test_strided_dvar_counts_the_window_in_steps():
    d = DVAR(window=310, threshold=0.15, stride=10)
    assert d.window_values == 31


def test_criterion_state_round_trips():
    values = converging(3, 200, 0.02, 0.05)
    a = DVAR(40, 0.2)
    for k, v in enumerate(values[:100]):
        a.update(k, v)
    b = DVAR(40, 0.2)
    b.load_state_dict(a.state_dict())
    assert [a.update(k, v) for k, v in enumerate(values[100:], 100)] == \
        [b.update(k, v) for k, v in enumerate(values[100:], 100)]


@pytest.mark.parametrize("window, alpha", [(1, 0.1), (0, 0.1), (2.5, 0.1), (10, 0.0), (10, 1.0), (10, -0.2), (10, 1.5)])
def test_dvar_rejects_bad_hyperparameters(window, alpha):
    with pytest.raises(ConfigError, match="strategy.(window|threshold)"):
        DVAR(window, alpha)
