"""The records of one experiment, as analysis wants them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from benchmark.protocol.strategies import display_names
from benchmark.store import records

METHOD_NAMES = {"textual_inversion": "Textual Inversion", "dreambooth_lora": "DreamBooth-LoRA",
                "custom_diffusion": "Custom Diffusion"}
STRATEGY_NAMES = display_names()  # the tables' names and order, each strategy's own (its `display_name`)


def order(values, reference: dict) -> list:
    known = [v for v in reference if v in set(values)]
    return known + sorted(set(values) - set(known))


LEFT_OUT = ["run_id", "method", "strategy", "concept", "seed", "reason", "detail"]


def in_plan(run_ids: pd.Series, plan: set[str] | None) -> pd.Series:
    """Which run ids the experiment's current plan holds (all of them where there is no plan)."""
    return run_ids.isin(plan) if plan is not None else pd.Series(True, index=run_ids.index)


def completed_runs(results: Path, experiment: str) -> pd.DataFrame:
    """The completed runs of the experiment's current plan (the sweep writes it); a warning names
    every run left out and why (see `runs_and_left_out`)."""
    return runs_and_left_out(results, experiment)[0]


def runs_and_left_out(results: Path, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the completed runs of the experiment's current plan, the runs left out of the tables), the
    latter one row each (LEFT_OUT columns) with the reason: failed (its runs row says so), damaged
    (its runs file cannot be read) or outside the plan (completed, but its config changed since, or
    Few-iters were derived anew). A warning names every left-out run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged runs files are named below, run by run
        runs = records.read(results, "runs", experiment).drop_duplicates("run_id", keep="last")
    plan = records.read_plan(results, experiment)
    done = runs[runs.status == "completed"]
    failed = runs[(runs.status == "failed") & in_plan(runs.run_id, plan)]
    damaged = damaged_runs(results, experiment)
    stale = done[~in_plan(done.run_id, plan)]
    frames = [failed.assign(reason="failed", detail=failed.error), damaged[in_plan(damaged.run_id, plan)],
              stale.assign(reason="outside the plan", detail="its config changed since, or Few-iters were derived anew")]
    frames = [f.reindex(columns=LEFT_OUT) for f in frames if len(f)]
    left = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LEFT_OUT)
    left["seed"] = left.seed.astype("Int64")  # unknown (a damaged file) stays empty, not NaN
    warn_left_out(left)
    runs = done[in_plan(done.run_id, plan)]
    if runs.empty:
        raise FileNotFoundError(f"no completed runs of experiment '{experiment}' under {results}/runs; "
                                f"run `python -m benchmark.sweep experiment={experiment}` first.")
    runs = runs.copy()
    runs["time_min"] = runs.time_s / 60.0  # each strategy's own protocol (records.RUNS: time_s)
    return runs, left


def damaged_runs(results: Path, experiment: str) -> pd.DataFrame:
    """Runs whose runs file cannot be read (LEFT_OUT columns): its path names the method, strategy and
    run id; concept and seed are unknown."""
    folder = Path(results) / "runs" / f"experiment={experiment}"
    files = sorted(f for f in folder.rglob("*.parquet") if not f.name.startswith((".", "_"))) if folder.is_dir() else []
    rows = []
    for f in files:
        problem = records.part_problem(f)
        if problem:
            keys = dict(part.split("=", 1) for part in f.relative_to(folder).parts[:-1])
            rows.append({"run_id": f.stem, "method": keys.get("method"), "strategy": keys.get("strategy"),
                         "reason": "damaged", "detail": problem})
    return pd.DataFrame(rows, columns=LEFT_OUT)


def describe_run(r) -> str:
    where = f" {r.concept} seed {int(r.seed)}" if isinstance(r.concept, str) else ""
    return f"{r.method}/{r.strategy}{where} ({r.run_id})"


def warn_left_out(left: pd.DataFrame) -> None:
    """One warning per reason, naming each run and why."""
    why = {"failed": "failed and are left out (`python -m benchmark.sweep status` shows their logs; rerun them "
                     "with --rerun-failed)",
           "damaged": "are damaged and are left out: their runs file cannot be read (rerun them with --rerun-failed)",
           "outside the plan": "are completed but not in the experiment's current plan and are left out (their "
                               "config changed since, or Few-iters were derived anew)"}
    for reason, text in why.items():
        mine = left[left.reason == reason]
        if len(mine):
            lines = [describe_run(r) + ("" if reason == "outside the plan" else f": {r.detail}") for r in mine.itertuples()]
            warnings.warn(f"{len(mine)} runs {text}:\n  " + "\n  ".join(lines))


def steps_of(results: Path, experiment: str, run_ids=None) -> pd.DataFrame:
    steps = records.read(results, "steps", experiment)
    return steps if run_ids is None else steps[steps.run_id.isin(set(run_ids))]


def evals_of(results: Path, experiment: str, run_ids=None) -> pd.DataFrame:
    evals = records.read(results, "evals", experiment)
    return evals if run_ids is None else evals[evals.run_id.isin(set(run_ids))]
