"""Stopping strategies: each one object with one name, owning everything that differs between them.

| strategy       | budget            | in-loop CLIP evaluations         | watches        | reports       | time counts            |
|----------------|-------------------|----------------------------------|----------------|---------------|------------------------|
| baseline       | max_steps         | every eval_every + the last step | -              | best by train CLIP img | updates, sampling |
| clip_s         | max_steps (cap)   | every eval_every                 | train CLIP img | best by train CLIP img | updates, sampling |
| few_iters      | steps             | none (one final evaluation)      | -              | last step     | updates                |
| few_iters_mean | steps: mean of this sweep's CLIP-s stop steps, per method (derived)  | ...           | updates                |
| few_iters_max  | steps: max of this sweep's CLIP-s stop steps, per method (derived)   | ...           | updates                |
| dvar           | max_steps (cap)   | none (one final evaluation)      | L_det          | last step     | updates, L_det         |

| ema, hall, trend, trend_relative | max_steps (cap) | none                          | L_det          | last step     | updates, L_det         |
| custom         | max_steps (cap)   | as its criterion's signal needs  | L_det or train CLIP img (its criterion's) | ... | ...       |

The name is the config file (conf/strategy/<name>.yaml), the registry key and the `strategy`
partition of the records. Everything that differs between strategies is an attribute or a method of
its class here: the schedule (`eval_due`, `eval_steps`), the expected stop and the price
(`expected_updates`, `evaluations`), the can-it-act checks (`check_can_act`), derivation (`derive`,
`derived_from`, `derived_config`), the replay (`replay_keys`, `replay_config`), and what the tables
call it (`display_name`, `color`). The training loop calls `after_update` after every update and
`after_evaluation` after every in-loop evaluation; the offline replay (analysis/replay.py) feeds the
same objects a logged trace. No other module spells a strategy's name (tests/test_strategy_names.py).
The criteria themselves are pure state machines (benchmark.protocol.stopping).
"""

from __future__ import annotations

import itertools
import math

from benchmark.core.errors import ConfigError, integer, number
from benchmark.core.registry import Registry, did_you_mean
from benchmark.protocol.criterion_file import criterion_keys, load_criterion
from benchmark.protocol.stopping import (
    DVAR,
    ClipS,
    Criterion,
    EMAPercentile,
    Hall,
    Never,
    Trend,
    TrendRelative,
)

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy", key="strategy")

# Every step count (budgets, schedules, windows): far above any budget of the paper (6100 updates),
# far below what a records column holds.
MAX_STEPS = 10_000_000


def check_key(name: str, key: str, value):
    """One strategy key's value, checked by its key (`name`: how the user sets it, e.g. strategy.window
    or method.protocol.dvar.window). Keys without a range (name, label) pass as they are."""
    if key in ("max_steps", "steps", "eval_every", "every", "mean", "max"):  # mean, max: method.protocol.few_iters
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


# The strategy every other is compared with (the tables' speed-up and quality kept, the traces a
# replay reads by default), and the paper's proposal (its Figure 2 panel, the strided replay).
REFERENCE = "baseline"
PROPOSED = "dvar"
# The experiment key (derive | pinned) and the method.protocol group of the derived budgets' paper values.
DERIVED_KEY = "few_iters"


class Strategy:
    name = ""
    display_name = ""          # the tables' and the paper's name of its row (analysis/paper_tables.csv)
    color = "k"                # its marks in the figures
    stop_color = "0.5"         # its stop line on another run's panel
    needs_ldet = False         # its criterion watches L_det (and L_det counts in its time)
    reports_best = False       # reports the best checkpoint by train CLIP img instead of the last step
    stops_early = False        # a criterion may end it before its budget (the estimate expects the paper's stop)
    derive: str | None = None  # "mean" | "max": the budget is derived from the stop steps of `derived_from` runs
    derived_from: str | None = None
    protocol_keys: tuple[str, ...] = ()  # method.protocol.<name> keys that fix its rule (the report compares them)
    replay_keys: dict[str, type] = {}    # what a replay grid sets (analysis replay); empty: not replayed
    replay_name = ""                     # its name in `analysis replay criterion=` (default: its name)
    stop_reason_at_budget = "max_steps"
    budget_key = "max_steps"   # the config key of the step budget

    def __init__(self, cfg: dict, ldet_every: int = 1):
        self.cfg = cfg
        self.ldet_every = ldet_every
        for key, value in cfg.items():
            self.check_value(f"strategy.{key}", key, value)
        if self.budget_key not in cfg:
            raise ConfigError(f"strategy {self.name} needs strategy.{self.budget_key}.")
        self.max_steps = cfg[self.budget_key]
        self.criterion = self.make_criterion()  # validates the strategy's keys before any training

    def make_criterion(self) -> Criterion:
        return Never()

    # --- the schedule ---------------------------------------------------------------------------
    @property
    def evaluates_in_loop(self) -> bool:
        return False

    def eval_due(self, step: int) -> bool:
        """Whether an in-loop evaluation (sampling + metrics) runs after update `step`."""
        return False

    def eval_steps(self, updates: float) -> set[int]:
        """The in-loop evaluations of a run of `updates` updates (the estimate)."""
        return set()

    # --- deciding -------------------------------------------------------------------------------
    def after_update(self, step: int, values: dict) -> bool:
        """The step's logged values (l_det, ...); True when the run stops at `step`."""
        value = values.get(self.criterion.signal)
        return value is not None and self.criterion.update(step, value)  # None: no L_det at this step

    def after_evaluation(self, step: int, scores: dict) -> bool:
        """An in-loop evaluation's scores; True when the run stops at `step`."""
        value = scores.get(self.criterion.signal)
        return value is not None and self.criterion.update(step, value)

    def check_can_act(self) -> None:
        """Settings under which it could never stop before its budget are refused (ConfigError)."""

    # --- the price ------------------------------------------------------------------------------
    def protocol_time(self, train_s: float, ldet_s: float, sampling_s: float) -> float:
        """Seconds of this strategy's own protocol (Table 1 'Time'): its updates, its in-loop
        evaluations, and L_det only where its criterion needs it."""
        return train_s + sampling_s + (ldet_s if self.needs_ldet else 0.0)

    def expected_updates(self, cap: int, paper_mean: float | None) -> float:
        """Updates the estimate expects: the budget, or for a criterion the paper's mean stop (capped);
        a criterion the paper has no number for is priced at its budget, an upper bound."""
        if self.stops_early and paper_mean:
            return min(float(cap), paper_mean)
        return float(cap)

    def evaluations(self, updates: float) -> float:
        """In-loop evaluations plus the final one (strategies that report their last step sample it)."""
        return float(len(self.eval_steps(updates))) if self.evaluates_in_loop else 1.0

    # --- the replay -----------------------------------------------------------------------------
    @classmethod
    def replay_config(cls, params: dict) -> tuple[dict, int]:
        """(its config, ldet.every) for a replay with `params` (`every`: the L_det stride), the budget
        left to the trace's length."""
        cfg = {k: v for k, v in params.items() if k != "every"}
        return {"name": cls.name, cls.budget_key: MAX_STEPS, **cfg}, int(params.get("every", 1))

    @classmethod
    def check_value(cls, name: str, key: str, value):
        """One of its keys' value (`name`: how the user sets it: strategy.window, or window= in a replay)."""
        return check_key(name, key, value)

    @classmethod
    def check_replay_grid(cls, grid: dict[str, list]) -> None:
        """Checks across a replay grid's keys, before any trace is read."""

    @classmethod
    def required_replay_keys(cls) -> list[str]:
        return [k for k in cls.replay_keys if k != "every"]


class _EveryN(Strategy):
    """A strategy that samples and scores every `eval_every` updates."""

    def __init__(self, cfg, ldet_every=1):
        super().__init__(cfg, ldet_every)
        self.eval_every = check_key("strategy.eval_every", "eval_every", cfg.get("eval_every"))

    @property
    def evaluates_in_loop(self) -> bool:
        return True

    def eval_due(self, step):
        return step % self.eval_every == 0

    def eval_steps(self, updates):
        return set(range(self.eval_every, int(updates) + 1, self.eval_every))


@STRATEGIES.register("baseline")
class Baseline(_EveryN):
    name = "baseline"
    display_name = "Baseline"
    color = "#4c72b0"
    reports_best = True
    protocol_keys = ("eval_every",)

    def eval_due(self, step):
        return step % self.eval_every == 0 or step == self.max_steps

    def eval_steps(self, updates):
        return super().eval_steps(updates) | {int(updates)}  # its schedule includes its last step


@STRATEGIES.register("clip_s")
class ClipSStrategy(_EveryN):
    name = "clip_s"
    display_name = "CLIP-s"
    color, stop_color = "#dd8452", "#55a868"
    reports_best = True
    stops_early = True
    protocol_keys = ("eval_every", "patience", "eps")
    replay_keys = {"patience": int, "eps": float, "every": int}

    def make_criterion(self):
        return ClipS(self.cfg["patience"], self.cfg["eps"])

    def check_can_act(self):
        s = self.cfg
        earliest = s["eval_every"] * (s["patience"] + 2)
        if earliest > self.max_steps:
            raise ConfigError(
                f"CLIP-s evaluates every {s['eval_every']} steps with patience {s['patience']}, so it could stop at "
                f"step {earliest} at the earliest, beyond strategy.max_steps={self.max_steps}. Lower "
                "strategy.eval_every or strategy.patience, or raise strategy.max_steps.")

    @classmethod
    def replay_config(cls, params):
        cfg = {k: v for k, v in params.items() if k != "every"}
        return {"name": cls.name, "max_steps": MAX_STEPS, "eval_every": int(params.get("every", 50)), **cfg}, 1


class FewIters(Strategy):
    """Few-iters with an explicit step count; the derived ones below take it from other runs' stops."""

    name = "few_iters"
    display_name = "Few iters"
    stop_reason_at_budget = "fixed_steps"
    budget_key = "steps"
    replay_keys = {"steps": int}
    replay_name = "fixed"

    @classmethod
    def derived_config(cls, source_cfg: dict) -> tuple[dict, int]:
        """(its config, its budget) before the `derived_from` runs have finished: the source run's config
        with the paper's pinned value of the method, at most the source's cap (the estimate's stand-in)."""
        steps = min(int(source_cfg["method"]["protocol"][DERIVED_KEY][cls.derive]),
                    int(source_cfg["strategy"]["max_steps"]))
        return {**source_cfg, "strategy": {"name": cls.name, "steps": steps}}, steps


class FewItersMean(FewIters):
    name = "few_iters_mean"
    display_name = "Few iters (mean)"
    color, stop_color = "#55a868", "#8172b3"
    derive = "mean"
    derived_from = "clip_s"
    replay_keys = {}


class FewItersMax(FewIters):
    name = "few_iters_max"
    display_name = "Few iters (max)"
    color, stop_color = "#8c8c8c", "#937860"
    derive = "max"
    derived_from = "clip_s"
    replay_keys = {}


for _cls in (FewItersMean, FewItersMax, FewIters):  # the tables' order
    STRATEGIES.register(_cls.name)(_cls)


@STRATEGIES.register("dvar")
class DVARStrategy(Strategy):
    name = "dvar"
    display_name = "DVAR"
    color, stop_color = "#c44e52", "#dd8452"
    needs_ldet = True
    stops_early = True
    protocol_keys = ("window", "threshold")
    replay_keys = {"window": int, "threshold": float, "every": int}

    def make_criterion(self):
        window, every = self.cfg["window"], self.ldet_every
        if math.ceil(window / every) < 2:
            raise ConfigError(f"strategy.window={window} holds one L_det value at ldet.every={every} (the window counts "
                              f"steps: it holds the values of its last {window} steps, one every {every}); DVAR needs "
                              f"two at least: set strategy.window above {every} or lower ldet.every.")
        return DVAR(window, self.cfg["threshold"], stride=every)

    def check_can_act(self):
        s, every = self.cfg, self.ldet_every
        first = every * math.ceil(s["window"] / every)  # the step of its first decision: one value past the window
        if first > self.max_steps:
            raise ConfigError(
                (f"strategy.window={s['window']} exceeds strategy.max_steps={self.max_steps}" if every == 1 else
                 f"with strategy.window={s['window']} and ldet.every={every} DVAR decides first at step {first}, "
                 f"beyond strategy.max_steps={self.max_steps}")
                + ": DVAR could never stop before its budget. Lower strategy.window or raise strategy.max_steps.")

    @classmethod
    def check_replay_grid(cls, grid):
        for window, every in itertools.product(grid.get("window", []), grid.get("every", [1])):
            if math.ceil(window / every) < 2:
                raise ConfigError(f"window={window} holds one L_det value at every={every} (the window counts steps); "
                                  "DVAR needs two at least: give windows above every.")


class _LdetWindow(Strategy):
    """Appendix E criteria: a statistic of the last `window` L_det values below `threshold` (any scale)."""

    needs_ldet = True
    stops_early = True
    criterion_class: type[Criterion] = Criterion
    replay_keys = {"window": int, "threshold": float}

    def make_criterion(self):
        return self.criterion_class(self.cfg["window"], self.cfg["threshold"])

    @classmethod
    def check_value(cls, name, key, value):
        if key == "threshold":  # a statistic of any scale, not a variance ratio
            return number(name, value, 0, 1e6, open_lo=True)
        return super().check_value(name, key, value)


for _name, _display, _criterion in (("ema", "EMA", EMAPercentile), ("hall", "Hall", Hall), ("trend", "Trend", Trend),
                                    ("trend_relative", "Trend (relative)", TrendRelative)):
    STRATEGIES.register(_name)(type(f"{_criterion.__name__}Strategy", (_LdetWindow,),
                                    {"name": _name, "display_name": _display, "criterion_class": _criterion}))


@STRATEGIES.register("custom")
class CustomStrategy(Strategy):
    """A researcher's criterion in a file of their own: strategy=custom strategy.criterion=FILE.py:Class
    (or module:Class); its keyword arguments under strategy.params. It watches what its criterion's
    `signal` names: L_det after every update, or train CLIP img every strategy.eval_every updates (then it
    reports its best checkpoint, as CLIP-s does)."""

    name = "custom"
    display_name = "Custom"
    color, stop_color = "#937860", "#64b5cd"
    stops_early = True

    def __init__(self, cfg, ldet_every=1):
        self.criterion_class = load_criterion(cfg.get("criterion"))
        watches_clip = self.criterion_class.signal == "train_clip_img"
        self.needs_ldet, self.reports_best = not watches_clip, watches_clip
        super().__init__(cfg, ldet_every)
        self.eval_every = check_key("strategy.eval_every", "eval_every", cfg.get("eval_every")) if watches_clip else 0

    def make_criterion(self):
        params = self.cfg.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"strategy.params must map the criterion's keyword arguments to values (got {params!r}).")
        try:
            return self.criterion_class(**params)
        except TypeError as err:  # a key the criterion does not take, or one it needs
            keys = ", ".join(criterion_keys(self.criterion_class)) or "none"
            raise ConfigError(f"strategy.params: {self.cfg['criterion']} takes {keys} ({err}); set them as "
                              "+strategy.params.KEY=VALUE.") from err

    @property
    def evaluates_in_loop(self):
        return self.reports_best

    def eval_due(self, step):
        return self.evaluates_in_loop and step % self.eval_every == 0

    def eval_steps(self, updates):
        return set(range(self.eval_every, int(updates) + 1, self.eval_every)) if self.evaluates_in_loop else set()


def custom_replay(spec: str) -> type[CustomStrategy]:
    """The custom strategy bound to one criterion class, for a replay of `criterion=FILE.py:Class`."""
    criterion = load_criterion(spec, key="criterion")
    keys = criterion_keys(criterion)

    class Bound(CustomStrategy):
        replay_keys = {**{k: kind for k, (kind, _) in keys.items()}, "every": int}
        replay_name = getattr(criterion, "name", "") or criterion.__name__.lower()

        @classmethod
        def replay_config(cls, params):
            every = int(params.get("every", 1))
            cfg = {"name": cls.name, "max_steps": MAX_STEPS, "criterion": spec,
                   "params": {k: v for k, v in params.items() if k != "every"}}
            if criterion.signal == "train_clip_img":
                return {**cfg, "eval_every": every}, 1
            return cfg, every

        @classmethod
        def check_value(cls, name, key, value):
            return value if key in keys else check_key(name, key, value)  # its own keys: its constructor checks

        @classmethod
        def required_replay_keys(cls):
            return [k for k, (_, required) in keys.items() if required]

    return Bound


def make_strategy(cfg: dict, ldet_every: int = 1) -> Strategy:
    return STRATEGIES.get(cfg["name"])(cfg, ldet_every)


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def replay_strategy(criterion: str) -> type[Strategy]:
    """The strategy `analysis replay criterion=` names: a registered one by its replay name, or a
    criterion file (FILE.py:Class, module:Class)."""
    if ":" in criterion:
        return custom_replay(criterion)
    strategies = replay_strategies()
    if criterion not in strategies:
        raise ConfigError(f"unknown criterion '{criterion}'; choose from {', '.join(strategies)}, or give "
                          f"FILE.py:Class.{did_you_mean(criterion, strategies)}")
    return strategies[criterion]


def replay_strategies() -> dict[str, type[Strategy]]:
    """Replay name -> strategy, for every registered strategy a replay can run."""
    return {cls.replay_name or name: cls for name, cls in STRATEGIES.items() if cls.replay_keys}


def derivation_sources() -> set[str]:
    """The strategies whose stop steps a derived strategy's budget comes from."""
    return {cls.derived_from for cls in STRATEGIES.values() if cls.derived_from}


def display_names() -> dict[str, str]:
    """Strategy -> its name in the tables, in the tables' order (registration order)."""
    return {name: cls.display_name for name, cls in STRATEGIES.items()}
