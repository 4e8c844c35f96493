"""Stopping criteria as small state machines with serializable state.

Pure numpy, no torch: the training loop feeds them live values, and the offline replay in
`analysis/` feeds them logged traces, so both give the same stop step by construction.

Each criterion consumes one signal (`l_det` after every update, or `train_clip_img` after every
in-loop evaluation). `update(step, value)` returns True when training must stop *at* `step`,
i.e. keep the weights after `step` updates.
"""

from __future__ import annotations

import math

import numpy as np

from benchmark.core.errors import ConfigError


def _integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) or \
        isinstance(value, float) and value.is_integer()


def _number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


class Criterion:
    signal: str = ""  # name of the logged series the criterion consumes
    name: str = ""

    def __init__(self):
        self.value: float | None = None  # last criterion statistic, logged per step
        self.stopped_at: int | None = None

    def update(self, step: int, value: float) -> bool:
        raise NotImplementedError

    def _decide(self, step: int, stop: bool) -> bool:
        if stop and self.stopped_at is None:
            self.stopped_at = step
        return stop

    def state_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class Never(Criterion):
    """Baseline and Few-iters: the step budget alone ends training."""

    name = "never"
    signal = "l_det"

    def update(self, step: int, value: float) -> bool:
        return False


class DVAR(Criterion):
    """Deterministic VARiance: stop once var(last N) / var(all) < alpha (paper §3.3).

    Matches the official `VarEarlyStopper`: population variance (ddof=0) over the last `window`
    values and over the whole history (the untrained θ_0 value included), no decision until the
    history holds more than `window` values (at exactly `window` the ratio is 1 by definition), and
    a strict `<`. A zero global variance gives NaN, which never stops.

    `stride` > 1 is the strided variant: values arrive every `stride` steps and the window is still
    counted in *steps*: it holds the values of its last `window` steps, ceil(window / stride) of them,
    which must be two at least (a window longer than the stride).
    """

    signal = "l_det"

    def __init__(self, window: int, threshold: float, stride: int = 1):
        super().__init__()
        if not _integer(window) or window <= 1:
            raise ConfigError(f"DVAR window must be an integer > 1 (got {window!r}); set strategy.window.")
        if not _number(threshold) or not 0.0 < threshold < 1.0:
            raise ConfigError(
                f"DVAR threshold alpha must be a number in (0, 1) (got {threshold!r}); set strategy.threshold."
            )
        if not _integer(stride) or stride < 1:
            raise ConfigError(f"L_det stride must be an integer >= 1 (got {stride!r}); set ldet.every.")
        self.window = int(window)
        self.threshold = float(threshold)
        self.stride = int(stride)
        self.window_values = math.ceil(self.window / self.stride)
        if self.window_values < 2:
            raise ConfigError(f"DVAR window {self.window} with L_det every {self.stride} steps holds one value; it "
                              "needs two at least: set strategy.window above ldet.every.")
        self.history: list[float] = []

    def update(self, step: int, value: float) -> bool:
        self.history.append(float(value))
        if len(self.history) <= self.window_values:
            self.value = 1.0
            return False
        h = np.asarray(self.history, dtype=np.float64)
        total = h.var()
        self.value = float(h[-self.window_values :].var() / total) if total > 0 else float("nan")
        return self._decide(step, self.value < self.threshold)


class ClipS(Criterion):
    """CLIP-s: stop when train CLIP img has not improved by more than `eps` for `patience` checks.

    The official `ClipEarlyStopper` semantics exactly: the first check only seeds the best value;
    an improvement means `value > best + eps` (strict) and resets the counter; the run stops on the
    (patience+1)-th consecutive check without one. `best` is a thresholded running best.
    """

    signal = "train_clip_img"

    def __init__(self, patience: int, eps: float):
        super().__init__()
        if not _integer(patience) or patience < 0:
            raise ConfigError(f"CLIP-s patience must be an integer >= 0 (got {patience!r}); set strategy.patience.")
        if not _number(eps) or eps < 0:
            raise ConfigError(f"CLIP-s eps must be a number >= 0 (got {eps!r}); set strategy.eps.")
        self.patience = int(patience)
        self.eps = float(eps)
        self.best: float | None = None
        self.no_improvement = 0

    def update(self, step: int, value: float) -> bool:
        if self.best is None:
            self.best = float(value)
        elif value > self.best + self.eps:
            self.best = float(value)
            self.no_improvement = 0
        else:
            self.no_improvement += 1
        self.value = float(self.no_improvement)
        return self._decide(step, self.no_improvement > self.patience)


class _WindowCriterion(Criterion):
    """Appendix E criteria: a statistic of the last `window` values of L_det (the paper's n); stop at the
    first step where its absolute value is below `threshold`.

    A decision is taken as soon as the window is full, i.e. at the step of the `window`-th value (the
    paper's L_det^n is "the last n values"). A NaN inside the window gives a NaN statistic, which
    never stops (the same rule as DVAR); once the NaN has left the window, decisions resume.
    """

    signal = "l_det"

    def __init__(self, window: int, threshold: float):
        super().__init__()
        if not _integer(window) or window <= 1:
            raise ConfigError(f"{self.name} window must be an integer > 1 (got {window!r}).")
        if not _number(threshold) or not threshold > 0:
            raise ConfigError(f"{self.name} threshold must be a number > 0 (got {threshold!r}).")
        self.window = int(window)
        self.threshold = float(threshold)
        self.history: list[float] = []  # the last `window` values

    def statistic(self, w: np.ndarray) -> float:
        raise NotImplementedError

    def update(self, step: int, value: float) -> bool:
        self.history = [*self.history[-(self.window - 1):], float(value)]
        if len(self.history) < self.window:
            return False
        with np.errstate(invalid="ignore", divide="ignore"):
            self.value = float(self.statistic(np.asarray(self.history, dtype=np.float64)))
        return self._decide(step, abs(self.value) < self.threshold)


def _slope(w: np.ndarray) -> float:
    """Closed-form least-squares slope of w against its index 0..n-1 (per value, i.e. per step)."""
    x = np.arange(len(w), dtype=np.float64)
    x -= x.mean()
    return float((x * (w - w.mean())).sum() / (x * x).sum())


class EMAPercentile(_WindowCriterion):
    """(EMA(t) - EMA(t - n)) / EMA(t - n), EMA(t) = EMA(t-1) + 0.1 (L_det(t) - EMA(t-1)) seeded with
    the first value (paper App. E). It compares two EMA values n steps apart, so the first decision is
    at the (n+1)-th value (t = n). A NaN value makes every later EMA NaN: it never stops again."""

    name = "ema"

    def __init__(self, window: int, threshold: float, smoothing: float = 0.1):
        super().__init__(window, threshold)
        if not _number(smoothing) or not 0.0 < smoothing <= 1.0:
            raise ConfigError(f"ema smoothing must be a number in (0, 1] (got {smoothing!r}).")
        self.smoothing = float(smoothing)
        self.ema: list[float] = []  # the last window + 1 EMA values

    def update(self, step: int, value: float) -> bool:
        prev = self.ema[-1] if self.ema else float(value)
        self.ema = [*self.ema[-self.window:], prev + self.smoothing * (float(value) - prev)]
        if len(self.ema) <= self.window:
            return False
        then = self.ema[0]
        self.value = (self.ema[-1] - then) / then if then != 0 else float("nan")
        return self._decide(step, abs(self.value) < self.threshold)


class Hall(_WindowCriterion):
    """(max - min) / mean of the last n values (paper App. E)."""

    name = "hall"

    def statistic(self, w: np.ndarray) -> float:
        mean = w.mean()
        return (w.max() - w.min()) / mean if mean != 0 else float("nan")


class Trend(_WindowCriterion):
    """The slope of a least-squares line through the last n values, in L_det units per step (paper App. E)."""

    name = "trend"

    def statistic(self, w: np.ndarray) -> float:
        return _slope(w)


class TrendRelative(_WindowCriterion):
    """Not in the paper: the Trend slope times n over the window's mean, i.e. the fitted line's change
    across the window relative to the window's level (scale-free, so one threshold serves every loss scale)."""

    name = "trend_relative"

    def statistic(self, w: np.ndarray) -> float:
        mean = w.mean()
        return _slope(w) * len(w) / mean if mean != 0 else float("nan")
