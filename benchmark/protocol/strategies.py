"""Stopping strategies: each one object with one name, owning everything that differs between them.

| strategy       | budget            | in-loop CLIP evaluations         | watches        | reports       | time counts            |
|----------------|-------------------|----------------------------------|----------------|---------------|------------------------|
| baseline       | max_steps         | every eval_every + the last step | -              | best by train CLIP img | updates, sampling |
| clip_s         | max_steps (cap)   | every eval_every                 | train CLIP img | best by train CLIP img | updates, sampling |
| few_iters      | steps             | none (one final evaluation)      | -              | last step     | updates                |
| few_iters_mean | steps: mean of this sweep's CLIP-s stop steps, per method (derived)  | ...           | updates                |
| few_iters_max  | steps: max of this sweep's CLIP-s stop steps, per method (derived)   | ...           | updates                |
| dvar           | max_steps (cap)   | none (one final evaluation)      | L_det          | last step     | updates, L_det         |

The name is the config file (conf/strategy/<name>.yaml), the registry key and the `strategy`
partition of the records. The training loop calls `after_update` after every update and
`after_evaluation` after every in-loop evaluation; nothing else dispatches on strategy names or on
the signal a criterion watches. The criteria themselves are pure state machines (benchmark.protocol.stopping),
shared with the offline replay.
"""

from __future__ import annotations

import math

from benchmark.core.errors import ConfigError, integer, number
from benchmark.core.registry import Registry
from benchmark.protocol.stopping import DVAR, ClipS, Criterion, Never

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy", key="strategy")

# Every step count (budgets, schedules, windows): far above any budget of the paper (6100 updates),
# far below what a records column holds.
MAX_STEPS = 10_000_000


def check_key(name: str, key: str, value):
    """One strategy key's value, checked by its key (`name`: how the user sets it, e.g. strategy.window
    or method.protocol.dvar.window). Keys without a range (name, label) pass as they are."""
    if key in ("max_steps", "steps", "eval_every", "mean", "max"):  # mean, max: method.protocol.few_iters
        return integer(name, value, 1, MAX_STEPS)
    if key == "patience":
        return integer(name, value, 0, MAX_STEPS)
    if key == "window":
        return integer(name, value, 2, MAX_STEPS, "the window counts steps and needs two values at least")
    if key == "eps":
        return number(name, value, 0, 1, note="the least train CLIP img gain that counts as an improvement")
    if key == "threshold":
        return number(name, value, 0, 1, open_lo=True, open_hi=True, note="the variance ratio alpha")
    return value


def check_protocol(protocol: dict) -> None:
    """method.protocol holds each strategy's paper values, which conf/strategy/ interpolates: the same
    ranges, named by their own keys."""
    for strategy, keys in protocol.items():
        for key, value in (keys or {}).items():
            check_key(f"method.protocol.{strategy}.{key}", key, value)


class Strategy:
    name = ""
    needs_ldet = False        # its criterion watches L_det (and L_det counts in its time)
    reports_best = False      # reports the best checkpoint by train CLIP img instead of the last step
    derive: str | None = None  # "mean" | "max": the budget is derived from this sweep's CLIP-s stop steps
    stop_reason_at_budget = "max_steps"
    budget_key = "max_steps"  # the config key of the step budget

    def __init__(self, cfg: dict, ldet_every: int = 1):
        self.cfg = cfg
        self.ldet_every = ldet_every
        for key, value in cfg.items():
            check_key(f"strategy.{key}", key, value)
        if self.budget_key not in cfg:
            raise ConfigError(f"strategy {self.name} needs strategy.{self.budget_key}.")
        self.max_steps = cfg[self.budget_key]
        self.criterion = self.make_criterion()  # validates the strategy's keys before any training

    def make_criterion(self) -> Criterion:
        return Never()

    @property
    def evaluates_in_loop(self) -> bool:
        return False

    def eval_due(self, step: int) -> bool:
        """Whether an in-loop evaluation (sampling + metrics) runs after update `step`."""
        return False

    def after_update(self, step: int, values: dict) -> bool:
        """The step's logged values (l_det, ...); True when the run stops at `step`."""
        return False

    def after_evaluation(self, step: int, scores: dict) -> bool:
        """An in-loop evaluation's scores; True when the run stops at `step`."""
        return False

    def protocol_time(self, train_s: float, ldet_s: float, sampling_s: float) -> float:
        """Seconds of this strategy's own protocol (Table 1 'Time'): its updates, its in-loop
        evaluations, and L_det only where its criterion needs it."""
        return train_s + sampling_s + (ldet_s if self.needs_ldet else 0.0)


@STRATEGIES.register("baseline")
class Baseline(Strategy):
    name = "baseline"
    reports_best = True

    def __init__(self, cfg, ldet_every=1):
        super().__init__(cfg, ldet_every)
        self.eval_every = check_key("strategy.eval_every", "eval_every", cfg.get("eval_every"))

    @property
    def evaluates_in_loop(self) -> bool:
        return True

    def eval_due(self, step):
        return step % self.eval_every == 0 or step == self.max_steps


@STRATEGIES.register("clip_s")
class ClipSStrategy(Strategy):
    name = "clip_s"
    reports_best = True

    def __init__(self, cfg, ldet_every=1):
        super().__init__(cfg, ldet_every)
        self.eval_every = check_key("strategy.eval_every", "eval_every", cfg.get("eval_every"))

    def make_criterion(self):
        return ClipS(self.cfg["patience"], self.cfg["eps"])

    @property
    def evaluates_in_loop(self) -> bool:
        return True

    def eval_due(self, step):
        return step % self.eval_every == 0

    def after_evaluation(self, step, scores):
        return self.criterion.update(step, scores["train_clip_img"])


@STRATEGIES.register("few_iters")
class FewIters(Strategy):
    name = "few_iters"
    stop_reason_at_budget = "fixed_steps"
    budget_key = "steps"


@STRATEGIES.register("few_iters_mean")
class FewItersMean(FewIters):
    name = "few_iters_mean"
    derive = "mean"


@STRATEGIES.register("few_iters_max")
class FewItersMax(FewIters):
    name = "few_iters_max"
    derive = "max"


@STRATEGIES.register("dvar")
class DVARStrategy(Strategy):
    name = "dvar"
    needs_ldet = True

    def make_criterion(self):
        window, every = self.cfg["window"], self.ldet_every
        if math.ceil(window / every) < 2:
            raise ConfigError(f"strategy.window={window} holds one L_det value at ldet.every={every} (the window counts "
                              f"steps: it holds the values of its last {window} steps, one every {every}); DVAR needs "
                              f"two at least: set strategy.window above {every} or lower ldet.every.")
        return DVAR(window, self.cfg["threshold"], stride=every)

    def after_update(self, step, values):
        if values.get("l_det") is None:  # a step without an L_det evaluation (ldet.every > 1)
            return False
        return self.criterion.update(step, values["l_det"])


def make_strategy(cfg: dict, ldet_every: int = 1) -> Strategy:
    return STRATEGIES.get(cfg["name"])(cfg, ldet_every)


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)
