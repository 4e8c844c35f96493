"""DVAR and CLIP-s stop exactly where the official criteria stop (reference/dvar_reference.md §3);
every criterion stops where a hand-computed example says, and the Appendix E criteria equal their
formulas computed independently with pandas."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.core.errors import ConfigError
from benchmark.protocol.stopping import (
    DVAR,
    ClipS,
    EMAPercentile,
    Hall,
    Never,
    Trend,
    TrendRelative,
)


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


# --- known answers, computed by hand -------------------------------------------------------------
def test_dvar_hand_computed_ratio():
    # step 3: last 3 = [2, 1, 1.5], var 1/6; all 4: mean 2.125, var 5.1875 / 4 = 1.296875
    d = DVAR(3, 0.5)
    assert first_stop(d, [4.0, 2.0, 1.0, 1.5]) == 3
    assert d.value == pytest.approx((1 / 6) / 1.296875, rel=1e-12)
    assert first_stop(DVAR(3, 0.1), [4.0, 2.0, 1.0, 1.5]) is None  # 0.1285 is not < 0.1


def test_dvar_never_decides_once_a_nan_is_in_the_history():
    # The live rule (issue 15): NaN makes the global variance NaN, and NaN < alpha is False for ever.
    values = [2.0, 1.5, 1.2, 1.0, 1.01, float("nan")] + [1.0] * 30
    d = DVAR(10, 0.5)
    assert first_stop(d, values) is None and math.isnan(d.value)
    assert first_stop(DVAR(10, 0.5), values[:5] + values[6:]) == 10, "without the NaN it would stop"


def test_clip_s_hand_computed():
    # seed 0.0; 0.5 > 0.25 improves; 0.75 is not > 0.5 + 0.25 (strict): 1st miss; 0.75 again: 2nd > patience 1
    assert first_stop(ClipS(patience=1, eps=0.25), [0.0, 0.5, 0.75, 0.75, 1.0]) == 3
    assert first_stop(ClipS(patience=1, eps=0.25), [0.0, 0.5, 0.75, 1.0, 1.0, 1.0]) == 5


def test_never_never_stops():
    n = Never()
    assert first_stop(n, [1.0] * 100) is None and n.stopped_at is None


def test_hall_decides_as_soon_as_its_window_is_full():
    # L_det^n = the last n values: a window of 3 is full at the 3rd value, step 2 (issue 15: was step 3)
    assert first_stop(Hall(3, 0.01), [1.0, 1.0, 1.0, 1.0]) == 2
    assert first_stop(Hall(3, 0.01), [1.0, 1.0]) is None


def test_hall_hand_computed():
    # step 2: [2, 1, 1.05] -> 1 / 1.35; step 3: [1, 1.05, 1] -> 0.05 / (3.05 / 3) = 0.049180...
    h = Hall(3, 0.1)
    assert first_stop(h, [2.0, 1.0, 1.05, 1.0, 1.0]) == 3
    assert h.value == pytest.approx(0.15 / 3.05, rel=1e-12)
    assert first_stop(Hall(3, 0.04), [2.0, 1.0, 1.05, 1.0, 1.0]) is None  # step 4: [1.05, 1, 1] is 0.049 too


def test_window_criteria_wait_until_a_nan_has_left_the_window():
    values = [1.0, float("nan"), 1.0, 1.0, 1.0]
    assert first_stop(Hall(3, 0.01), values) == 4
    assert first_stop(Trend(3, 0.01), values) == 4


def test_trend_is_the_plain_regression_slope():
    # [3, 2, 1]: slope -1; [2, 1, 1]: ((-1)(2/3) + 0 + (1)(-1/3)) / 2 = -0.5; [1, 1, 1]: 0
    t = Trend(3, 0.6)
    assert first_stop(t, [3.0, 2.0, 1.0, 1.0, 1.0]) == 3
    assert t.value == pytest.approx(-0.5, abs=1e-12)
    assert first_stop(Trend(3, 0.4), [3.0, 2.0, 1.0, 1.0, 1.0]) == 4
    # in L_det units per step, not normalised: ten times the loss, ten times the slope
    t10 = Trend(3, 0.6)
    assert first_stop(t10, [30.0, 20.0, 10.0, 10.0, 10.0]) == 4
    assert Trend(3, 0.5).update(0, 1.0) is False
    assert first_stop(Trend(3, 0.5), [1.0, 1.0, 1.0, 1.0]) == 2, "decides once the window of 3 is full"


def test_trend_relative_is_the_slope_times_n_over_the_mean():
    t = TrendRelative(3, 2.0)
    assert first_stop(t, [3.0, 2.0, 1.0, 1.0]) == 2
    assert t.value == pytest.approx(-1.0 * 3 / 2.0, abs=1e-12)  # [3, 2, 1]: slope -1, mean 2
    for scale in (1.0, 10.0):
        u = TrendRelative(3, 1.2)
        assert first_stop(u, [scale * v for v in (3.0, 2.0, 1.0, 1.0)]) == 3
        assert u.value == pytest.approx(-0.5 * 3 / (4 / 3), abs=1e-12)  # [2, 1, 1]: scale-free


def test_ema_percentile_hand_computed():
    # EMA(t) = 1 + 0.9^t on [2, 1, 1, ...]; with n = 2, M(t) = -0.19 q / (1 + q), q = 0.9^(t-2):
    # t = 11: q = 0.9^9 -> 0.0530; t = 12: q = 0.9^10 -> 0.0491 < 0.05
    e = EMAPercentile(2, 0.05)
    assert first_stop(e, [2.0] + [1.0] * 30) == 12
    q = 0.9 ** 10
    assert e.value == pytest.approx(-0.19 * q / (1 + q), rel=1e-9)
    # EMA(t - n) needs t >= n: the first decision is at the (n+1)-th value
    assert first_stop(EMAPercentile(2, 0.01), [1.0, 1.0, 1.0]) == 2
    assert first_stop(EMAPercentile(2, 0.01), [1.0, 1.0]) is None


def _first_below(stat: pd.Series, threshold: float):
    below = stat.abs() < threshold
    return int(below.idxmax()) if below.any() else None


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 150), window=st.integers(2, 30),
       threshold=st.floats(0.001, 0.5), noise=st.floats(0.0, 0.2), rate=st.floats(0.0, 0.2))
def test_window_criteria_match_their_formulas(seed, n, window, threshold, noise, rate):
    s = pd.Series(converging(seed, n, noise, rate))
    roll = s.rolling(window)
    hall = (roll.max() - roll.min()) / roll.mean()
    slope = roll.apply(lambda w: np.polyfit(np.arange(window), w, 1)[0], raw=True)
    ema = s.ewm(alpha=0.1, adjust=False).mean()
    assert first_stop(Hall(window, threshold), list(s)) == _first_below(hall, threshold)
    assert first_stop(Trend(window, threshold), list(s)) == _first_below(slope, threshold)
    assert first_stop(TrendRelative(window, threshold), list(s)) == \
        _first_below(slope * window / roll.mean(), threshold)
    assert first_stop(EMAPercentile(window, threshold), list(s)) == \
        _first_below(ema / ema.shift(window) - 1, threshold)


@pytest.mark.parametrize("cls", [Hall, Trend, TrendRelative, EMAPercentile])
@pytest.mark.parametrize("window, threshold", [(1, 0.1), (2.5, 0.1), (3, 0.0), (3, -0.1), (3, "x")])
def test_window_criteria_reject_bad_hyperparameters(cls, window, threshold):
    with pytest.raises(ConfigError):
        cls(window, threshold)
