"""Ablations: which evaluation-batch randomness L_det tolerates (Fig. 5 / Fig. 8), timestep
intervals (Table 4), and how informative each loss curve is (trend-to-noise ratio).

Trend-to-noise ratio (TNR) of a loss curve: the standard deviation of its trend (a centred rolling
mean over 5 % of the run, at least 5 steps) over the standard deviation of what is left around the
trend. A curve that visibly converges has TNR well above 1; pure noise around a flat line has TNR
near 1/sqrt(window). It is what "L_det shows convergence, L_train does not" means, as a number.

Table 4 pools steps and concepts: for each concept, the loss and each CLIP score at the evaluated
steps are standardised (z-scores within the concept, since loss scales differ between concepts,
paper App. G), then one Pearson r (scipy) is computed over all (concept, step) points, with its
two-sided p-value. The per-concept mean r is reported beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.figures import save

SOURCES = ("images", "captions", "latents", "noise", "timesteps")
LOSSES = {"l_det_begin": "Begin (0-333)", "l_det_middle": "Middle (333-666)", "l_det_end": "End (666-1000)",
          "l_det": "Full (0-1000)"}
SCORES = {"train_clip_txt": "Train text score", "val_clip_txt": "Validation text score",
          "train_clip_img": "Train image score", "val_clip_img": "Validation image score"}


def variant(config_json: str) -> tuple[str, int]:
    """(resampled sources joined by '+', or 'none'; effective evaluation batch) of a run."""
    ldet = json.loads(config_json)["ldet"]
    resampled = [s for s in SOURCES if not ldet["fixed"][s]]
    return ("+".join(resampled) or "none"), int(ldet["batch_size"]) * int(ldet["accumulation"])


def with_variants(runs: pd.DataFrame) -> pd.DataFrame:
    v = runs.config_json.map(variant)
    return runs.assign(resampled=v.map(lambda x: x[0]), eval_batch=v.map(lambda x: x[1]))


def trend_to_noise(values: np.ndarray) -> float:
    y = pd.Series(np.asarray(values, dtype=float)).dropna()
    if len(y) < 10:
        return float("nan")
    window = max(5, len(y) // 20)
    trend = y.rolling(window, center=True, min_periods=1).mean()
    noise = (y - trend).std()
    return float(trend.std() / noise) if noise > 0 else float("inf")


def tnr_table(runs: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """TNR of L_train and of every L_det variant, per run."""
    rows = []
    for r in runs.itertuples():
        s = steps[steps.run_id == r.run_id].sort_values("step")
        row = {"run_id": r.run_id, "method": r.method, "strategy": r.strategy, "concept": r.concept}
        for col in ("train_loss", *LOSSES):
            if col in s and s[col].notna().sum() >= 10:
                row[col] = trend_to_noise(s[col].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def loss_grid(runs: pd.DataFrame, steps: pd.DataFrame, path: Path) -> list[Path]:
    """Fig. 5 / Fig. 8: one panel per (resampled source, effective batch), L_det over steps per concept,
    each curve scaled to [0, 1] so concepts share an axis."""
    import matplotlib.pyplot as plt

    runs = with_variants(runs)
    rows = [v for v in ["none", *SOURCES] if v in set(runs.resampled)] + \
        sorted(set(runs.resampled) - {"none", *SOURCES})
    cols = sorted(set(runs.eval_batch))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3 * len(cols), 2.2 * len(rows)), squeeze=False,
                             sharex=True)
    for i, source in enumerate(rows):
        for j, batch in enumerate(cols):
            ax = axes[i][j]
            mine = runs[(runs.resampled == source) & (runs.eval_batch == batch)]
            for r in mine.itertuples():
                s = steps[steps.run_id == r.run_id].sort_values("step")[["step", "l_det"]].dropna()
                y = s.l_det.to_numpy()
                span = y.max() - y.min() if len(y) else 0
                ax.plot(s.step, (y - y.min()) / span if span > 0 else y * 0, lw=0.8, label=r.concept)
            if mine.empty:
                ax.axis("off")
            if i == 0:
                ax.set_title(f"batch {batch}")
            if j == 0:
                ax.set_ylabel(f"{source}\nresampled" if source != "none" else "all fixed")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle("L_det (min-max scaled per run) by resampled source and effective evaluation batch", y=1.0)
    fig.tight_layout()
    return save(fig, path)


def table4(runs: pd.DataFrame, steps: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Pearson r (pooled over concepts and evaluated steps, z-scored per concept) and p-value between
    each L_det variant and each CLIP score."""
    losses = [c for c in LOSSES if c in steps and steps[c].notna().any()]
    merged = evals[evals.run_id.isin(runs.run_id)][["run_id", "step", *SCORES]].merge(
        steps[["run_id", "step", *losses]], on=["run_id", "step"]).merge(runs[["run_id", "concept"]], on="run_id")

    cols = [*SCORES, *losses]
    std = merged.groupby("concept")[cols].transform(lambda c: (c - c.mean()) / c.std(ddof=0))
    rows = []
    for score, score_name in SCORES.items():
        for loss in losses:
            ok = std[[score, loss]].dropna()
            ok = ok[np.isfinite(ok).all(axis=1)]
            r, p = stats.pearsonr(ok[score], ok[loss]) if len(ok) > 2 else (np.nan, np.nan)
            per = [stats.pearsonr(g[score], g[loss])[0] for _, g in merged.groupby("concept")
                   if len(g) > 2 and g[score].std() > 0 and g[loss].std() > 0]
            rows.append({"metric": score_name, "interval": LOSSES[loss], "r": r, "p": p, "n_points": len(ok),
                         "n_concepts": merged.concept.nunique(), "mean_r_per_concept": np.mean(per) if per else np.nan})
    return pd.DataFrame(rows)


def table4_markdown(t4: pd.DataFrame, paper: pd.DataFrame | None = None) -> str:
    intervals = list(dict.fromkeys(t4.interval))
    lines = ["| Metric | " + " | ".join(intervals) + " |", "|---|" + "---:|" * len(intervals)]
    for metric, g in t4.groupby("metric", sort=False):
        cells = []
        for interval in intervals:
            r = g[g.interval == interval].iloc[0]
            cell = f"{r.r:+.2f} (p={r.p:.1e})" if np.isfinite(r.r) else "-"
            if paper is not None:
                pr = paper[(paper.metric == metric) & (paper.interval == interval)]
                if len(pr):
                    cell += f" [paper {pr['paper_mean'].iloc[0]:+.2f}]"
            cells.append(cell)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    n = t4.iloc[0]
    return "\n".join(lines) + (f"\n\nPearson r over {n.n_points} (concept, step) points from {n.n_concepts} concepts, "
                               "z-scored within each concept; two-sided p-values (scipy.stats.pearsonr).\n")


def write(results: Path, experiment: str, out: Path) -> dict[str, Path]:
    """The ablation outputs that the experiment's records support."""
    from analysis.load import completed_runs, evals_of, steps_of
    from analysis.tables import paper

    out.mkdir(parents=True, exist_ok=True)
    runs = completed_runs(results, experiment)
    steps = steps_of(results, experiment, runs.run_id)
    evals = evals_of(results, experiment, runs.run_id)
    files: dict[str, Path] = {}
    md = [f"# Ablations: `{experiment}`", ""]
    v = with_variants(runs)
    if v[["resampled", "eval_batch"]].drop_duplicates().shape[0] > 1:
        for p in loss_grid(runs, steps, out / "figures" / "ldet_grid"):
            files[p.name] = p
        md += ["## L_det by resampled source and evaluation batch (paper Fig. 5 / Fig. 8)", "",
               "![grid](figures/ldet_grid.png)", ""]
    tnr = tnr_table(runs, steps).merge(v[["run_id", "resampled", "eval_batch"]], on="run_id")
    cols = [c for c in ("train_loss", *LOSSES) if c in tnr]
    summary = tnr.groupby(["resampled", "eval_batch"])[cols].mean().reset_index()
    summary.to_csv(out / "trend_to_noise.csv", index=False, float_format="%.4g")
    files["trend_to_noise.csv"] = out / "trend_to_noise.csv"
    md += ["## Trend-to-noise ratio of each loss curve (mean over runs)", "",
           "| resampled | eval batch | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    md += [f"| {r.resampled} | {r.eval_batch} | " + " | ".join(f"{getattr(r, c):.2f}" for c in cols) + " |"
           for r in summary.itertuples()]
    md.append("")
    if "l_det_begin" in steps and steps.l_det_begin.notna().any():
        t4 = table4(runs, steps, evals)
        t4.to_csv(out / "table4.csv", index=False, float_format="%.4g")
        files["table4.csv"] = out / "table4.csv"
        md += ["## Table 4: Pearson r between L_det per timestep interval and CLIP scores", "",
               table4_markdown(t4, paper(4))]
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    files["ablation.md"] = out / "ablation.md"
    return files
