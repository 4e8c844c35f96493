"""The records of one experiment, as analysis wants them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from benchmark import records

METHOD_NAMES = {"textual_inversion": "Textual Inversion", "dreambooth_lora": "DreamBooth-LoRA",
                "custom_diffusion": "Custom Diffusion"}
STRATEGY_NAMES = {"baseline": "Baseline", "clip_s": "CLIP-s", "few_iters_mean": "Few iters (mean)",
                  "few_iters_max": "Few iters (max)", "few_iters": "Few iters", "dvar": "DVAR"}


def order(values, reference: dict) -> list:
    known = [v for v in reference if v in set(values)]
    return known + sorted(set(values) - set(known))


def completed_runs(results: Path, experiment: str) -> pd.DataFrame:
    """The completed runs of the experiment's current plan (the sweep writes it); completed runs
    outside it (an edited config, a re-derived Few-iters) are left out with a warning naming them."""
    runs = records.read(results, "runs", experiment)
    runs = runs[runs.status == "completed"].drop_duplicates("run_id", keep="last")
    plan = records.read_plan(results, experiment)
    if plan is not None:
        stale = runs[~runs.run_id.isin(plan)]
        if len(stale):
            names = ", ".join(f"{r.method}/{r.strategy}/{r.concept} ({r.run_id})" for r in stale.itertuples())
            warnings.warn(f"{len(stale)} completed runs are not in the experiment's current plan and are left out "
                          f"(their config changed since, or Few-iters were derived anew): {names}")
        runs = runs[runs.run_id.isin(plan)]
    if runs.empty:
        raise FileNotFoundError(f"no completed runs of experiment '{experiment}' under {results}/runs; "
                                f"run `python -m benchmark.sweep experiment={experiment}` first.")
    runs = runs.copy()
    runs["time_min"] = runs.time_s / 60.0  # each strategy's own protocol (records.RUNS: time_s)
    return runs


def steps_of(results: Path, experiment: str, run_ids=None) -> pd.DataFrame:
    steps = records.read(results, "steps", experiment)
    return steps if run_ids is None else steps[steps.run_id.isin(set(run_ids))]


def evals_of(results: Path, experiment: str, run_ids=None) -> pd.DataFrame:
    evals = records.read(results, "evals", experiment)
    return evals if run_ids is None else evals[evals.run_id.isin(set(run_ids))]
