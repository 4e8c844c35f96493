"""Stopping strategies: the step budget, the in-loop evaluation schedule and the criterion.

| strategy  | budget           | in-loop CLIP evaluations         | criterion        | reports      |
|-----------|------------------|----------------------------------|------------------|--------------|
| baseline  | max_steps        | every eval_every + the last step | none             | best by train CLIP img |
| clip_s    | max_steps (cap)  | every eval_every                 | ClipS            | best by train CLIP img |
| few_iters | steps            | none (one final evaluation)      | none             | final        |
| dvar      | max_steps (cap)  | none (one final evaluation)      | DVAR on L_det    | final        |
"""

from __future__ import annotations

from benchmark.errors import ConfigError
from benchmark.registry import Registry
from benchmark.stopping import DVAR, ClipS, Criterion, Never

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy", key="strategy")


def _positive_int(cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"strategy.{key} must be a positive integer (got {value!r}).")
    return value


class Strategy:
    name = ""
    needs_ldet = False      # the criterion reads L_det
    reports_best = False    # report the best checkpoint by train CLIP img instead of the last one
    stop_reason_at_budget = "max_steps"
    budget_key = "max_steps"  # the config key of the step budget

    def __init__(self, cfg: dict, ldet_every: int):
        self.cfg = cfg
        self.label = cfg.get("label") or self.name
        self.max_steps = _positive_int(cfg, self.budget_key)
        self.eval_every = 0

    def make_criterion(self) -> Criterion:
        return Never()

    def eval_due(self, step: int) -> bool:
        """Whether an in-loop evaluation (sampling + metrics) runs after update `step`."""
        return False


@STRATEGIES.register("baseline")
class Baseline(Strategy):
    name = "baseline"
    reports_best = True

    def __init__(self, cfg, ldet_every):
        super().__init__(cfg, ldet_every)
        self.eval_every = _positive_int(cfg, "eval_every")

    def eval_due(self, step):
        return step % self.eval_every == 0 or step == self.max_steps


@STRATEGIES.register("clip_s")
class ClipSStrategy(Strategy):
    name = "clip_s"
    reports_best = True

    def __init__(self, cfg, ldet_every):
        super().__init__(cfg, ldet_every)
        self.eval_every = _positive_int(cfg, "eval_every")
        self.make_criterion()  # validate patience / eps now, before any training

    def make_criterion(self):
        return ClipS(self.cfg["patience"], self.cfg["eps"])

    def eval_due(self, step):
        return step % self.eval_every == 0


@STRATEGIES.register("few_iters")
class FewIters(Strategy):
    name = "few_iters"
    stop_reason_at_budget = "fixed_steps"
    budget_key = "steps"


@STRATEGIES.register("dvar")
class DVARStrategy(Strategy):
    name = "dvar"
    needs_ldet = True

    def __init__(self, cfg, ldet_every):
        super().__init__(cfg, ldet_every)
        self.ldet_every = ldet_every
        self.make_criterion()

    def make_criterion(self):
        return DVAR(self.cfg["window"], self.cfg["threshold"], stride=self.ldet_every)


def make_strategy(cfg: dict, ldet_every: int) -> Strategy:
    return STRATEGIES.get(cfg["name"])(cfg, ldet_every)
