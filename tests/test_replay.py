"""Replay on hand-made traces: it feeds a criterion exactly the sequence the live strategy feeds it
(NaN values included), and the grid search's numbers are the hand-computed ones."""

import numpy as np
import pandas as pd
import pytest

from analysis.replay import QUALITY, Trace, grid_search, ldet_sequence, replay
from benchmark.core.errors import ConfigError
from benchmark.protocol.strategies import make_strategy


def trace(l_det, concept="a", clip=None, eval_every=2, ldet_every=1, run_id=None) -> Trace:
    steps = pd.DataFrame({"step": np.arange(len(l_det)), "l_det": np.asarray(l_det, dtype=float)})
    length = len(l_det) - 1
    e = np.arange(eval_every, length + 1, eval_every)
    clip = clip or (lambda k: min(k, 4) / 4)  # rises to 1.0 at step 4, flat after
    evals = pd.DataFrame({"step": e, **{q: [clip(k) for k in e] for q in QUALITY}})
    return Trace(run_id or f"run-{concept}", "textual_inversion", concept, 59, steps, evals, ldet_every)


def live_stop(values, window, threshold, every=1):
    """The live loop: the DVAR strategy gets each step's row, with l_det only at the L_det steps."""
    s = make_strategy({"name": "dvar", "window": window, "threshold": threshold, "max_steps": len(values) - 1},
                      every)
    for step, v in enumerate(values):
        if s.after_update(step, {"l_det": v} if step % every == 0 else {}):
            return step
    return None


NAN_EXAMPLE = [2.0, 1.5, 1.2, 1.0, 1.01, float("nan")] + [1.0] * 20  # issue 15


def test_replay_keeps_nan_as_the_live_run_does():
    assert live_stop(NAN_EXAMPLE, 10, 0.5) is None
    r = replay(trace(NAN_EXAMPLE), "dvar", {"window": 10, "threshold": 0.5})
    assert (r["stop_step"], r["stopped"]) == (25, False), "replay used to drop the NaN and stop at 11"
    seq = ldet_sequence(trace(NAN_EXAMPLE), 1)
    assert [k for k, _ in seq] == list(range(26)) and np.isnan(seq[5][1])


def test_replay_equals_live_without_nan():
    clean = NAN_EXAMPLE[:5] + NAN_EXAMPLE[6:]  # the same curve without the NaN: both stop at step 10
    assert live_stop(clean, 10, 0.5) == 10
    r = replay(trace(clean), "dvar", {"window": 10, "threshold": 0.5})
    assert (r["stop_step"], r["stopped"], r["reported_step"]) == (10, True, 10)


def test_strided_replay_equals_the_strided_live_run():
    # ldet.every=2: L_det at even steps only (null, read as NaN, at odd ones). N = 6 steps = 3 values.
    # step 6: [4, 2, 1, 1]: var([2, 1, 1]) / var(all) = (2/9) / 1.5 = 0.148, not < 0.1; step 8: last 3 all 1.
    logged = [4.0, np.nan, 2.0, np.nan] + [1.0, np.nan] * 8
    live = live_stop(logged, 6, 0.1, every=2)
    assert live == 8
    r = replay(trace(logged, ldet_every=2), "dvar", {"window": 6, "threshold": 0.1, "every": 2})
    assert (r["stop_step"], r["stopped"]) == (live, True)
    with pytest.raises(ConfigError, match="every 2 steps"):
        replay(trace(logged, ldet_every=2), "dvar", {"window": 6, "threshold": 0.1, "every": 3})
    with pytest.raises(ConfigError, match="no L_det"):
        replay(trace(logged, ldet_every=0), "dvar", {"window": 6, "threshold": 0.1})


def test_replay_refuses_a_trace_with_missing_steps():
    t = trace([3.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    t.steps = t.steps[t.steps.step != 3]
    with pytest.raises(ConfigError, match=r"steps \[3\]"):
        replay(t, "hall", {"window": 2, "threshold": 0.1})


def test_appendix_e_criteria_and_fixed_on_a_hand_made_trace():
    t = trace([3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert replay(t, "hall", {"window": 3, "threshold": 0.01})["stop_step"] == 4      # [1, 1, 1]
    assert replay(t, "trend", {"window": 3, "threshold": 0.6})["stop_step"] == 3      # slope -0.5
    assert replay(t, "trend_relative", {"window": 3, "threshold": 1.2})["stop_step"] == 3  # -1.125
    assert replay(t, "ema", {"window": 2, "threshold": 0.01})["stopped"] is False     # EMA still falling
    fixed = replay(t, "fixed", {"steps": 5})
    assert (fixed["stop_step"], fixed["reported_step"]) == (5, 4)  # evals at 2, 4, 6: 4 and 6 tie, the earlier
    with pytest.raises(ConfigError, match="unknown criterion"):
        replay(t, "slope", {"window": 3, "threshold": 0.1})


def test_grid_search_hand_computed():
    # L_det [5, 1, 1, ...] over 20 steps: DVAR(N) has its first decision at step N, where the last N
    # values are all 1 (ratio 0): it stops at N. Speed-up = 20 / N; quality at the nearest evaluation.
    ts = [trace([5.0] + [1.0] * 20, concept=c) for c in ("a", "b")]
    table = grid_search(ts, "dvar", {"window": [4, 5, 10], "threshold": [0.5]})
    assert list(table.tuning_mean_stop) == [4, 5, 10] and list(table.held_out_mean_stop) == [4, 5, 10]
    assert list(table.tuning_speedup) == [5.0, 4.0, 2.0]
    assert list(table.tuning_retained) == [1.0, 1.0, 1.0]  # steps 4, 4 (tie 4/6: the earlier), 10
    assert list(table.chosen) == [True, False, False]      # the fastest that retains >= 0.9
    # a late-rising score: only window 10 retains 90 %, so it is chosen despite being slower
    late = [trace([5.0] + [1.0] * 20, concept=c, clip=lambda k: min(k, 10) / 10) for c in ("a", "b")]
    table = grid_search(late, "dvar", {"window": [4, 5, 10], "threshold": [0.5]})
    assert list(table.tuning_retained) == pytest.approx([0.4, 0.4, 1.0])
    assert list(table.chosen) == [False, False, True]


def test_which_steps_a_trace_logged_comes_from_its_config():
    """ldet.log=always: every ldet.every steps; N: every N; watched on a run whose criterion does not
    read L_det: none, and replay says how to record a trace instead of replaying NaN."""
    import json

    from analysis.replay import _ldet_every

    config = lambda **ldet: json.dumps({"ldet": {"enabled": True, "every": 2, **ldet}})  # noqa: E731
    assert _ldet_every(config(log="always"), True) == 2
    assert _ldet_every(config(log=10), True) == 10
    assert _ldet_every(config(log="watched"), True) == 2, "a DVAR run reads its own"
    assert _ldet_every(config(log="watched"), False) == 0
    with pytest.raises(ConfigError, match="record traces with ldet.log=always"):
        ldet_sequence(trace([float("nan")] * 6, ldet_every=0), 1)
