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

from benchmark.core.errors import ConfigError, integer, number
from benchmark.protocol.stopping import (
    DVAR,
    ClipS,
    EMAPercentile,
    Hall,
    Trend,
    TrendRelative,
)

QUALITY = ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div")
WINDOW_CRITERIA = {"ema": EMAPercentile, "hall": Hall, "trend": Trend, "trend_relative": TrendRelative}
CRITERIA = {
    "dvar": {"window": int, "threshold": float, "every": int},
    "clip_s": {"patience": int, "eps": float, "every": int},
    "ema": {"window": int, "threshold": float},
    "hall": {"window": int, "threshold": float},
    "trend": {"window": int, "threshold": float},
    "trend_relative": {"window": int, "threshold": float},
    "fixed": {"steps": int},
}


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
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion '{criterion}'; choose from {', '.join(CRITERIA)}")
    unknown = set(params) - set(CRITERIA[criterion])
    if unknown:
        raise ConfigError(f"{criterion} takes {', '.join(CRITERIA[criterion])} (got {sorted(unknown)})")
    return {k: CRITERIA[criterion][k](v) for k, v in params.items()}


def check_grid(criterion: str, grid: dict[str, list], complete: bool = True) -> None:
    """A replay grid's values, named by their keys, before any trace is read: the live criteria's
    ranges, a strided DVAR window longer than the stride, and (`complete`) every hyperparameter but
    `every` given."""
    from benchmark.protocol.strategies import MAX_STEPS

    missing = [k for k in CRITERIA[criterion] if k != "every" and k not in grid]
    if complete and missing:
        raise ConfigError(f"replay criterion={criterion} needs {' '.join(f'{k}=V1,V2' for k in missing)} too.")
    ranges = {
        "window": lambda v: integer("window", v, 2, MAX_STEPS, "the window counts steps"),
        "every": lambda v: integer("every", v, 1, MAX_STEPS),
        "patience": lambda v: integer("patience", v, 0, MAX_STEPS),
        "steps": lambda v: integer("steps", v, 1, MAX_STEPS),
        "eps": lambda v: number("eps", v, 0, 1),
        "threshold": (lambda v: number("threshold", v, 0, 1, open_lo=True, open_hi=True)) if criterion == "dvar"
        else (lambda v: number("threshold", v, 0, 1e6, open_lo=True)),
    }
    for key, values in grid.items():
        for value in values:
            ranges[key](value)
    if criterion == "dvar":
        for window, every in itertools.product(grid.get("window", []), grid.get("every", [1])):
            if math.ceil(window / every) < 2:
                raise ConfigError(f"window={window} holds one L_det value at every={every} (the window counts steps); "
                                  "DVAR needs two at least: give windows above every.")


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
    """Stop step (and whether the criterion fired) and the quality reported at that step."""
    p = _params(criterion, params)
    stopped, stop = False, trace.length
    if criterion == "fixed":
        if p["steps"] > trace.length:
            raise ConfigError(f"run {trace.run_id}: trace has {trace.length} steps, fixed needs {p['steps']}")
        stopped, stop = True, p["steps"]
    elif criterion == "clip_s":
        every = p.get("every", 50)
        checks = trace.evals[(trace.evals.step > 0) & (trace.evals.step % every == 0)]
        expected = set(range(every, trace.length + 1, every))
        if set(checks.step) != expected:
            raise ConfigError(f"run {trace.run_id}: CLIP-s every {every} needs evaluations at every multiple of "
                              f"{every}; the trace has them at {sorted(set(trace.evals.step))[:8]}...")
        c = ClipS(p["patience"], p["eps"])
        best_step, best = None, -math.inf
        for r in checks.itertuples():
            if r.train_clip_img > best:
                best_step, best = int(r.step), r.train_clip_img
            if c.update(int(r.step), r.train_clip_img):
                stopped, stop = True, int(r.step)
                break
        quality = _quality_at(trace, best_step if best_step is not None else stop)
        return {"stop_step": stop, "stopped": stopped, "reported_step": int(quality.eval_step), **quality[list(QUALITY)]}
    else:
        every = p.pop("every", 1)
        c = DVAR(stride=every, **p) if criterion == "dvar" else WINDOW_CRITERIA[criterion](p["window"], p["threshold"])
        for step, value in ldet_sequence(trace, every):
            if c.update(step, value):
                stopped, stop = True, step
                break
    quality = _quality_at(trace, stop)
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
        base = replay(t, "dvar", {**p, "every": 1})
        for k in strides:
            r = replay(t, "dvar", {**p, "every": k})
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
