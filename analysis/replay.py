"""Stopping criteria replayed on logged traces, and a tuned grid search over their hyperparameters.

A full-length run (e.g. a Baseline run with L_det after every update and CLIP evaluations every 50
updates) holds the whole trajectory, so any criterion can be evaluated on it without training again.
The criteria are the very state machines the live runs use (benchmark.protocol.stopping), so a replay of
DVAR or CLIP-s on a trace stops where a live run with the same seed stops: replay feeds the criterion
exactly the sequence the live loop feeds it (`ldet_sequence`: every L_det step, NaN values included).
The Appendix E criteria (ema, hall, trend, and trend_relative, which is not in the paper) exist only here.

Quality at a stop step is read from the evaluated checkpoint nearest to it (ties: the earlier one);
CLIP-s reports its best checkpoint by train CLIP img among the checks it made, as live runs do.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.core.errors import ConfigError
from benchmark.protocol.strategies import PROPOSED, replay_strategies, replay_strategy

QUALITY = ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div")


def criteria() -> dict[str, dict[str, type]]:
    """Replay name -> the keys its grid sets, for every strategy of the one registry a replay can run
    (a criterion file, criterion=FILE.py:Class, comes on top)."""
    return {name: dict(cls.replay_keys) for name, cls in replay_strategies().items()}


CRITERIA = criteria()


@dataclass
class Trace:
    run_id: str
    method: str
    concept: str
    seed: int
    steps: pd.DataFrame   # step, l_det, ... (sorted)
    evals: pd.DataFrame   # step, train_clip_img, ... (sorted, in-loop and final)
    ldet_every: int = 1   # the run's ldet.every: L_det was evaluated at its multiples (0: never)

    @property
    def length(self) -> int:
        return int(self.steps.step.max())


def _ldet_every(config_json, logged: bool) -> int:
    """Every how many steps the run logged L_det, from its resolved config (0: never; `logged`: its
    steps hold some L_det); 1 when the config is not at hand."""
    if not isinstance(config_json, str):
        return 1
    ldet = json.loads(config_json).get("ldet", {})
    log = ldet.get("log", "always")
    if not ldet.get("enabled", True) or (log == "watched" and not logged):
        return 0  # ldet.log=watched on a run whose criterion does not read L_det
    return int(log) if log not in ("watched", "always") else int(ldet.get("every", 1))


def traces(runs: pd.DataFrame, steps: pd.DataFrame, evals: pd.DataFrame) -> list[Trace]:
    out = []
    for r in runs.itertuples():
        s = steps[steps.run_id == r.run_id].sort_values("step").reset_index(drop=True)
        e = evals[evals.run_id == r.run_id].sort_values("step").drop_duplicates("step").reset_index(drop=True)
        every = _ldet_every(getattr(r, "config_json", None), "l_det" in s and s.l_det.notna().any())
        out.append(Trace(r.run_id, r.method, r.concept, int(r.seed), s, e, every))
    return out


def _params(criterion: str, params: dict) -> dict:
    keys = replay_strategy(criterion).replay_keys
    unknown = set(params) - set(keys)
    if unknown:
        raise ConfigError(f"{criterion} takes {', '.join(keys)} (got {sorted(unknown)})")
    return {k: keys[k](v) for k, v in params.items()}


def check_grid(criterion: str, grid: dict[str, list], complete: bool = True) -> None:
    """A replay grid's values, named by their keys, before any trace is read: the live strategy's
    ranges, its checks across keys (a strided DVAR window longer than the stride), and (`complete`)
    every hyperparameter it needs given."""
    cls = replay_strategy(criterion)
    missing = [k for k in cls.required_replay_keys() if k not in grid]
    if complete and missing:
        raise ConfigError(f"replay criterion={criterion} needs {' '.join(f'{k}=V1,V2' for k in missing)} too.")
    for key, values in grid.items():
        for value in values:
            cls.check_value(key, key, value)
    cls.check_replay_grid(grid)


def _quality_at(trace: Trace, step: int) -> pd.Series:
    if trace.evals.empty:
        return pd.Series({q: np.nan for q in (*QUALITY, "eval_step")})
    distance = (trace.evals.step - step).abs()
    row = trace.evals.loc[distance.idxmin()]  # idxmin: the first (earlier) of equally near ones
    return pd.Series({**{q: row[q] for q in QUALITY}, "eval_step": int(row.step)})


def ldet_sequence(trace: Trace, every: int) -> list[tuple[int, float]]:
    """The (step, L_det) pairs a live run with `ldet.every = every` feeds its criterion along this
    trace: every multiple of `every` from step 0 to the end, each value as logged, NaN included (the
    live loop skips only steps without an L_det evaluation, and a NaN is an evaluation: DVAR takes no
    decision while its history holds one)."""
    if not trace.ldet_every or "l_det" not in trace.steps:
        raise ConfigError(f"run {trace.run_id}: the trace has no L_det (ldet.enabled=false, or ldet.log=watched on a "
                          "run whose criterion does not read it); record traces with ldet.log=always")
    if every % trace.ldet_every:
        raise ConfigError(f"run {trace.run_id}: the trace has L_det every {trace.ldet_every} steps, "
                          f"so it cannot replay L_det every {every}")
    want = range(0, trace.length + 1, every)
    by_step = trace.steps.drop_duplicates("step", keep="last").set_index("step").l_det
    missing = [k for k in want if k not in by_step.index]
    if missing:
        raise ConfigError(f"run {trace.run_id}: the trace lacks L_det every {every} steps (no row at steps "
                          f"{missing[:8]})")
    return [(k, float(by_step[k])) for k in want]


def replay(trace: Trace, criterion: str, params: dict) -> dict:
    """Stop step (and whether the criterion fired) and the quality reported at that step: the live
    strategy object itself, fed the trace as the loop feeds it (its L_det values after each update, its
    evaluations at its schedule)."""
    cls = replay_strategy(criterion)
    cfg, every = cls.replay_config(_params(criterion, params))
    strategy = cls(cfg, every)
    if not strategy.stops_early:  # a fixed budget (Few-iters): nothing to decide
        if strategy.max_steps > trace.length:
            raise ConfigError(f"run {trace.run_id}: trace has {trace.length} steps, {criterion} needs "
                              f"{strategy.max_steps}")
        return _result(trace, strategy.max_steps, True, strategy.max_steps)
    stop, best_step, best = None, None, -math.inf
    if strategy.evaluates_in_loop:
        checks = trace.evals[(trace.evals.step > 0) & trace.evals.step.map(strategy.eval_due)]
        expected = strategy.eval_steps(trace.length)
        if set(checks.step) != expected:
            raise ConfigError(f"run {trace.run_id}: {criterion} every {strategy.eval_every} needs evaluations at every "
                              f"multiple of {strategy.eval_every}; the trace has them at "
                              f"{sorted(set(trace.evals.step))[:8]}...")
        for r in checks.itertuples():
            scores = r._asdict()
            if scores["train_clip_img"] > best:
                best_step, best = int(r.step), scores["train_clip_img"]
            if strategy.after_evaluation(int(r.step), scores):
                stop = int(r.step)
                break
    else:
        for step, value in ldet_sequence(trace, every):
            if strategy.after_update(step, {"l_det": value}):
                stop = step
                break
    stopped, stop = stop is not None, stop if stop is not None else trace.length
    return _result(trace, stop, stopped, best_step if strategy.reports_best and best_step is not None else stop)


def _result(trace: Trace, stop: int, stopped: bool, reported: int) -> dict:
    quality = _quality_at(trace, reported)
    return {"stop_step": stop, "stopped": stopped, "reported_step": int(quality.eval_step), **quality[list(QUALITY)]}


def replay_all(ts: list[Trace], criterion: str, params: dict) -> pd.DataFrame:
    rows = []
    for t in ts:
        best = t.evals.train_clip_img.max() if not t.evals.empty else np.nan
        r = replay(t, criterion, params)
        rows.append({"run_id": t.run_id, "method": t.method, "concept": t.concept, "seed": t.seed,
                     "length": t.length, **r, "speedup": t.length / max(r["stop_step"], 1),
                     "retained": r["train_clip_img"] / best if best else np.nan})
    return pd.DataFrame(rows)


def split_concepts(concepts, tuning_fraction: float, seed: int) -> tuple[set, set]:
    names = sorted(set(concepts))
    rng = np.random.default_rng(seed)
    names = [names[i] for i in rng.permutation(len(names))]
    k = max(1, math.ceil(tuning_fraction * len(names))) if len(names) > 1 else 1
    return set(names[:k]), set(names[k:])


def grid_search(ts: list[Trace], criterion: str, grid: dict[str, list], tuning_fraction: float = 0.5,
                seed: int = 0, target: float = 0.9) -> pd.DataFrame:
    """Every combination of `grid` on the tuning concepts and the held-out ones.

    speed-up = trace length / stop step (mean over runs); retained = train CLIP img at the reported
    step / the trace's best (mean over runs). The chosen combination has the largest tuning speed-up
    among those retaining at least `target` on the tuning concepts (the paper's CLIP-s tuning rule),
    else the largest retention; its held-out numbers are the honest estimate.
    """
    tuning, held_out = split_concepts([t.concept for t in ts], tuning_fraction, seed)
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        r = replay_all(ts, criterion, params)
        row = dict(params)
        for name, subset in (("tuning", tuning), ("held_out", held_out)):
            part = r[r.concept.isin(subset)]
            row[f"{name}_speedup"] = part.speedup.mean() if len(part) else np.nan
            row[f"{name}_retained"] = part.retained.mean() if len(part) else np.nan
            row[f"{name}_mean_stop"] = part.stop_step.mean() if len(part) else np.nan
            row[f"{name}_n"] = len(part)
        rows.append(row)
    out = pd.DataFrame(rows)
    ok = out[out.tuning_retained >= target]
    chosen = ok.tuning_speedup.idxmax() if len(ok) else out.tuning_retained.idxmax()
    out["chosen"] = out.index == chosen
    return out


def strided_vs_every_step(ts: list[Trace], params_by_run: dict[str, dict], strides: list[int]) -> pd.DataFrame:
    """DVAR with L_det every k steps (the window still counted in steps) against every-step DVAR,
    replayed on the same traces: one row per trace and stride."""
    rows = []
    for t in ts:
        p = params_by_run[t.run_id]
        base = replay(t, PROPOSED, {**p, "every": 1})
        for k in strides:
            r = replay(t, PROPOSED, {**p, "every": k})
            rows.append({"method": t.method, "concept": t.concept, "seed": t.seed, "every": k,
                         "window": p["window"], "threshold": p["threshold"], "stop_every_step": base["stop_step"],
                         "stop_strided": r["stop_step"], "fired": base["stopped"] and r["stopped"],
                         "diff": r["stop_step"] - base["stop_step"],
                         "rel_diff": (r["stop_step"] - base["stop_step"]) / base["stop_step"]})
    return pd.DataFrame(rows)


def strided_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Distribution of the stop-step differences per method and stride."""
    g = rows.groupby(["method", "every"])
    return pd.DataFrame({
        "traces": g.size(), "both_fired": g.fired.sum(),
        "median_abs_diff_steps": g["diff"].apply(lambda d: d.abs().median()),
        "mean_rel_diff": g.rel_diff.mean(), "max_abs_rel_diff": g.rel_diff.apply(lambda d: d.abs().max()),
        "within_1pct": g.rel_diff.apply(lambda d: (d.abs() <= 0.01).mean()),
    }).reset_index()
