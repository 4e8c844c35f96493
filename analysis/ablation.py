"""Ablations: which evaluation-batch randomness L_det tolerates (Fig. 5 / Fig. 8), timestep
intervals (Table 4), and how informative each loss curve is (trend-to-noise ratio).

Trend-to-noise ratio (TNR) of a loss curve: the standard deviation of its trend (a centred rolling
mean over 5 % of the run, at least 5 steps) over the standard deviation of what is left around the
trend. A curve that visibly converges has TNR well above 1; pure noise around a flat line has TNR
near 1/sqrt(window). It is what "L_det shows convergence, L_train does not" means, as a number.

Table 4 combines per-concept correlations (`combined_correlation`). Within a concept, the loss and a
CLIP score at the ~30 evaluated steps of a run are two autocorrelated series (both trend with
training), so those steps are not independent observations and a pooled Pearson test over all
(concept, step) points gives p-values that are far too small (two independent random walks come out
"significant" most of the time). The concepts are the independent units: for each concept,
r_i = Pearson r of its run's series (the mean of atanh over its runs when it has several), z_i =
atanh(r_i) (Fisher); the table's r is tanh(mean z_i), and its 95 % CI and two-sided p-value come from
a one-sample t-test of the z_i against 0 with k - 1 degrees of freedom (k concepts). The spread of
the z_i across concepts estimates the standard error directly, so no effective sample size has to be
estimated from ~30 autocorrelated points (which is unreliable for trending series). With one concept
there is no p-value.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from analysis.figures import save
from analysis.load import completed_runs, evals_of, steps_of
from analysis.tables import paper

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


R_MAX = 1 - 1e-9  # |r| = 1 (a perfectly linear short series) would give an infinite z


def fisher_z(x, y) -> float:
    """atanh of the Pearson r of one pair of series over their common finite points; NaN when fewer
    than 3 remain or either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    r = np.corrcoef(x, y)[0, 1]
    return float(np.arctanh(np.clip(r, -R_MAX, R_MAX)))


def combined_correlation(z) -> dict:
    """Per-concept Fisher z values -> r = tanh(mean z), 95 % CI and two-sided p of a one-sample t-test
    of mean z = 0 (k - 1 degrees of freedom, k = concepts with a finite z)."""
    z = np.asarray(z, dtype=np.float64)
    z = z[np.isfinite(z)]
    k = len(z)
    out = {"r": float(np.tanh(z.mean())) if k else np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "t": np.nan, "p": np.nan, "n_concepts": k}
    if k < 2:
        return out
    se = z.std(ddof=1) / np.sqrt(k)
    if se == 0:  # every concept the same z: no spread to test against
        return out
    t = z.mean() / se
    half = stats.t.ppf(0.975, k - 1) * se
    return {**out, "ci_low": float(np.tanh(z.mean() - half)), "ci_high": float(np.tanh(z.mean() + half)),
            "t": float(t), "p": float(2 * stats.t.sf(abs(t), k - 1))}


def table4(runs: pd.DataFrame, steps: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Pearson r between each L_det variant and each CLIP score, combined over concepts by Fisher z
    with a one-sample t-test across concepts (module docstring)."""
    losses = [c for c in LOSSES if c in steps and steps[c].notna().any()]
    merged = evals[evals.run_id.isin(runs.run_id)][["run_id", "step", *SCORES]].merge(
        steps[["run_id", "step", *losses]], on=["run_id", "step"]).merge(runs[["run_id", "concept"]], on="run_id")
    rows = []
    for score, score_name in SCORES.items():
        for loss in losses:
            per_concept: dict[str, list[float]] = {}
            n_points = 0
            for (concept, _), g in merged.groupby(["concept", "run_id"]):
                z = fisher_z(g[score], g[loss])
                if np.isfinite(z):
                    per_concept.setdefault(concept, []).append(z)
                    n_points += int((np.isfinite(g[score]) & np.isfinite(g[loss])).sum())
            rows.append({"metric": score_name, "interval": LOSSES[loss],
                         **combined_correlation([np.mean(z) for z in per_concept.values()]), "n_points": n_points})
    return pd.DataFrame(rows)


def table4_markdown(t4: pd.DataFrame, paper: pd.DataFrame | None = None) -> str:
    intervals = list(dict.fromkeys(t4.interval))
    lines = ["| Metric | " + " | ".join(intervals) + " |", "|---|" + "---:|" * len(intervals)]
    for metric, g in t4.groupby("metric", sort=False):
        cells = []
        for interval in intervals:
            r = g[g.interval == interval].iloc[0]
            if not np.isfinite(r.r):
                cell = "-"
            elif np.isfinite(r.p):
                cell = f"{r.r:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] (p={r.p:.1e})"
            else:
                cell = f"{r.r:+.2f} (no p: {r.n_concepts} concept{'s' if r.n_concepts != 1 else ''})"
            if paper is not None:
                pr = paper[(paper.metric == metric) & (paper.interval == interval)]
                if len(pr):
                    cell += f" [paper {pr['paper_mean'].iloc[0]:+.2f}]"
            cells.append(cell)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    k, n = int(t4.n_concepts.max()), int(t4.n_points.max())
    return "\n".join(lines) + (
        f"\n\nr = tanh(mean over {k} concepts of atanh(r_i)) (Fisher z), r_i the Pearson r of one concept's run over "
        f"its evaluated steps (atanh averaged over its runs when it has several; {n} (run, step) points in all); "
        "[95 % CI] and two-sided p from a one-sample t-test of "
        "the atanh(r_i) against 0 across concepts (k - 1 df). Concepts are the independent units: the autocorrelated "
        "steps within a concept are not counted as independent observations. No p-value with one concept.\n")


def write(results: Path, experiment: str, out: Path) -> dict[str, Path]:
    """The ablation outputs that the experiment's records support."""
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
        md += ["## Table 4: Pearson r between L_det per timestep interval and CLIP scores, combined over concepts "
               "(Fisher z, one-sample t-test across concepts)", "",
               table4_markdown(t4, paper(4))]
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    files["ablation.md"] = out / "ablation.md"
    return files
