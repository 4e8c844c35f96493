"""The records of one experiment, as analysis wants them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark import records

METHOD_NAMES = {"textual_inversion": "Textual Inversion", "dreambooth_lora": "DreamBooth-LoRA",
                "custom_diffusion": "Custom Diffusion"}
STRATEGY_NAMES = {"baseline": "Baseline", "clip_s": "CLIP-s", "few_iters_mean": "Few iters (mean)",
                  "few_iters_max": "Few iters (max)", "few_iters": "Few iters", "dvar": "DVAR"}
# Strategies whose protocol does not compute L_det: their Table 1 time leaves the (recorded)
# monitoring cost out, so every run can carry the full L_det trace for replay without inflating it.
NO_LDET = {"baseline", "clip_s", "few_iters", "few_iters_mean", "few_iters_max"}


def order(values, reference: dict) -> list:
    known = [v for v in reference if v in set(values)]
    return known + sorted(set(values) - set(known))


def completed_runs(results: Path, experiment: str) -> pd.DataFrame:
    runs = records.read(results, "runs", experiment)
    runs = runs[runs.status == "completed"].drop_duplicates("run_id", keep="last")
    if runs.empty:
        raise FileNotFoundError(f"no completed runs of experiment '{experiment}' under {results}/runs; "
                                f"run `python -m benchmark.sweep experiment={experiment}` first.")
    runs = runs.copy()
    unused_monitoring = runs.ldet_s.where(runs.strategy.isin(NO_LDET), 0.0).fillna(0.0)
    runs["time_min"] = (runs.total_s - unused_monitoring) / 60.0
    return runs


def steps_of(results: Path, experiment: str, run_ids=None) -> pd.DataFrame:
    steps = records.read(results, "steps", experiment)
    return steps if run_ids is None else steps[steps.run_id.isin(set(run_ids))]


def evals_of(results: Path, experiment: str, run_ids=None) -> pd.DataFrame:
    evals = records.read(results, "evals", experiment)
    return evals if run_ids is None else evals[evals.run_id.isin(set(run_ids))]
