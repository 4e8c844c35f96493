"""Figures (PNG and SVG): the paper's Figure 2 panel per run, stop-step distributions (Fig. 13),
and time vs quality per strategy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import METHOD_NAMES, STRATEGY_NAMES, order  # noqa: E402
from benchmark.protocol.strategies import STRATEGIES  # noqa: E402

COLORS = {name: s.color for name, s in STRATEGIES.items()}          # each strategy's own


def save(fig, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "svg"):
        fig.savefig(path.with_suffix(f".{ext}"), dpi=120, bbox_inches="tight")
        files.append(path.with_suffix(f".{ext}"))
    plt.close(fig)
    return files


def smooth(y: pd.Series, frac: float = 0.05) -> pd.Series:
    return y.rolling(max(1, int(len(y) * frac)), min_periods=1, center=True).mean()


STOP_COLORS = {name: s.stop_color for name, s in STRATEGIES.items()}


def run_panel(run: pd.Series, steps: pd.DataFrame, evals: pd.DataFrame, path: Path,
              others: dict[str, tuple[pd.Series, pd.DataFrame, pd.DataFrame]] | None = None) -> list[Path]:
    """Figure 2: train loss, gradient norm, L_det and train CLIP img over steps of one (full-length)
    run; its stop and reported steps marked. `others` (strategy -> its runs row, steps, evals) are the
    runs sharing this run's trajectory: each one's stop is a line, its reported train CLIP img a
    marker on this run's axis (a run that evaluates only at its stop has no curve of its own), and
    where this run did not log L_det, the L_det of one that watched it is drawn."""
    steps = steps.sort_values("step")
    others = others or {}
    if "l_det" not in steps or steps.l_det.isna().all():  # Baseline logs L_det only with ldet.log=always
        watched = [s for s, (_, st, _) in others.items() if "l_det" in st and st.l_det.notna().any()]
        if watched:
            steps = steps.drop(columns="l_det", errors="ignore").merge(
                others[watched[0]][1][["step", "l_det"]], on="step", how="outer")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    panels = [("train_loss", "train loss", steps), ("grad_norm", "grad norm (unscaled)", steps),
              ("l_det", "L_det", steps), ("train_clip_img", "train CLIP img", evals.sort_values("step"))]
    for ax, (col, title, df) in zip(axes, panels):
        d = df[["step", col]].dropna() if col in df else pd.DataFrame(columns=["step", col])
        if col in ("train_loss", "grad_norm") and len(d) > 20:
            ax.plot(d.step, d[col], color="0.75", lw=0.6)
            ax.plot(d.step, smooth(d[col]), color="k", lw=1.2)
        else:
            ax.plot(d.step, d[col], color="k", lw=1.2, marker="o" if col == "train_clip_img" else None, ms=3)
        ax.axvline(run.iterations, color="#c44e52", ls="--", lw=1, label=f"stop {run.iterations:.0f}")
        if run.reported_step != run.iterations:
            ax.axvline(run.reported_step, color="#4c72b0", ls=":", lw=1, label=f"reported {run.reported_step:.0f}")
        for strategy, (other, _, _) in others.items():
            ax.axvline(other.iterations, color=STOP_COLORS.get(strategy, "0.5"), ls="-.", lw=1,
                       label=f"{STRATEGY_NAMES.get(strategy, strategy)} stops {other.iterations:.0f}")
        ax.set_title(title)
        ax.set_xlabel("step")
    for strategy, (other, _, _) in others.items():
        axes[3].plot([other.reported_step], [other.train_clip_img], marker="D", ms=7, ls="none",
                     color=STOP_COLORS.get(strategy, "0.5"), label=f"{STRATEGY_NAMES.get(strategy, strategy)} reported")
    axes[0].legend(fontsize=8)
    if others:
        axes[3].legend(fontsize=7, handles=axes[3].get_legend_handles_labels()[0][-len(others):])
    fig.suptitle(f"{METHOD_NAMES.get(run.method, run.method)} / {STRATEGY_NAMES.get(run.strategy, run.strategy)}"
                 f" / {run.concept} (seed {run.seed}, run {run.run_id})", y=1.04)
    fig.tight_layout()
    return save(fig, path)


def stop_distribution(runs: pd.DataFrame, path: Path) -> list[Path]:
    """Fig. 13: per method, the stop steps of every strategy across concepts."""
    methods = order(runs.method, METHOD_NAMES)
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, method in zip(axes[0], methods):
        mine = runs[runs.method == method]
        strategies = order(mine.strategy, STRATEGY_NAMES)
        for i, s in enumerate(strategies):
            y = mine[mine.strategy == s].iterations.to_numpy()
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(y)), y, s=14, alpha=0.7, color=COLORS.get(s, "k"))
            ax.hlines(np.mean(y), i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.set_xticks(range(len(strategies)), [STRATEGY_NAMES.get(s, s) for s in strategies], rotation=20)
        ax.set_title(METHOD_NAMES.get(method, method))
        ax.set_ylabel("iterations (stop step)")
    fig.tight_layout()
    return save(fig, path)


def time_vs_quality(runs: pd.DataFrame, path: Path, metric: str = "train_clip_img") -> list[Path]:
    """Mean time against mean quality per method x strategy (error bars: std over concepts)."""
    methods = order(runs.method, METHOD_NAMES)
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        g = runs[runs.method == method].groupby(["strategy", "concept"])[["time_min", metric]].mean()
        stats = g.groupby("strategy").agg(["mean", "std"])
        for s in order(stats.index, STRATEGY_NAMES):
            r = stats.loc[s]
            ax.errorbar(r[("time_min", "mean")], r[(metric, "mean")], xerr=r[("time_min", "std")],
                        yerr=r[(metric, "std")], fmt="o", color=COLORS.get(s, "k"), label=STRATEGY_NAMES.get(s, s),
                        capsize=3)
        ax.set_xlabel("time, min")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(METHOD_NAMES.get(method, method))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
