"""Tables 1 and 3 of the paper from an experiment's records, and side by side with the paper.

Each cell is mean ± std over concepts of the per-concept value (seeds are averaged per concept
first). std uses ddof=1 (the sample standard deviation; the paper does not state its choice); a
cell from one concept has no std. `n` is the number of concepts behind the cell; a cell with fewer
concepts than the experiment's most complete cell is marked incomplete.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import METHOD_NAMES, STRATEGY_NAMES, order

DDOF = 1
TABLE1 = {"Train CLIP img": "train_clip_img", "Val CLIP img": "val_clip_img", "Val CLIP txt": "val_clip_txt",
          "Iterations": "iterations", "Time, min": "time_min"}
TABLE3 = {"DINO": "dino", "DIV": "div"}
DIGITS = {"Iterations": 1, "Time, min": 2}
PAPER_CSV = Path(__file__).with_name("paper_tables.csv")


def summarize(runs: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Long table: method, strategy, metric, mean, std, n (concepts)."""
    per_concept = runs.groupby(["method", "strategy", "concept"])[list(columns.values())].mean().reset_index()
    rows = []
    for (method, strategy), g in per_concept.groupby(["method", "strategy"], sort=False):
        for name, col in columns.items():
            v = g[col].dropna().to_numpy(dtype=float)
            rows.append({"method": method, "strategy": strategy, "metric": name, "mean": v.mean() if len(v) else np.nan,
                         "std": v.std(ddof=DDOF) if len(v) > DDOF else np.nan, "n": len(v)})
    out = pd.DataFrame(rows)
    out["method"] = pd.Categorical(out.method, order(out.method, METHOD_NAMES))
    out["strategy"] = pd.Categorical(out.strategy, order(out.strategy, STRATEGY_NAMES))
    out["metric"] = pd.Categorical(out.metric, list(columns))
    out = out.sort_values(["method", "strategy", "metric"]).reset_index(drop=True)
    full = out.n.max()
    out["complete"] = out.n == full
    if not out.complete.all():
        bad = out[~out.complete].drop_duplicates(["method", "strategy"])
        warnings.warn("incomplete cells (fewer concepts than the fullest cell, "
                      f"{full}): " + ", ".join(f"{m}/{s} ({n})" for m, s, n in zip(bad.method, bad.strategy, bad.n)),
                      stacklevel=2)
    return out


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    return summarize(runs, TABLE1)


def table3(runs: pd.DataFrame) -> pd.DataFrame:
    return summarize(runs, TABLE3)


def cell(mean: float, std: float, metric: str, latex: bool = False) -> str:
    if np.isnan(mean):
        return "-"
    d = DIGITS.get(metric, 3)
    s = f"{mean:.{d}f}"
    if not np.isnan(std):
        s += f" $\\pm$ {std:.{d}f}" if latex else f" ± {std:.{d}f}"
    return s


def wide(long: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    """Method | Strategy | one column per metric | n (concepts), cells 'mean ± std', '*' when incomplete."""
    rows = []
    for (method, strategy), g in long.groupby(["method", "strategy"], sort=False, observed=True):
        row = {"Method": METHOD_NAMES.get(method, method), "Strategy": STRATEGY_NAMES.get(strategy, strategy)}
        for r in g.itertuples():
            row[r.metric] = cell(r.mean, r.std, r.metric, latex)
        row["n"] = f"{g.n.max()}" + ("" if g.complete.all() else "*")
        rows.append(row)
    return pd.DataFrame(rows)


def left_note(left: pd.DataFrame | None) -> str:
    """The runs missing from the tables because they failed or are damaged, by cell ('' if none):
    'left out: 2 failed runs (DreamBooth-LoRA / Baseline, DreamBooth-LoRA / DVAR), 1 damaged run (...)'."""
    if left is None:
        return ""
    parts = []
    for reason in ("failed", "damaged"):
        mine = left[left.reason == reason]
        if len(mine):
            methods, strategies = order(mine.method, METHOD_NAMES), order(mine.strategy, STRATEGY_NAMES)
            cells = sorted(set(zip(mine.method, mine.strategy)), key=lambda c: (methods.index(c[0]), strategies.index(c[1])))
            parts.append(f"{len(mine)} {reason} run{'s' if len(mine) != 1 else ''} ("
                         + ", ".join(f"{METHOD_NAMES.get(m, m)} / {STRATEGY_NAMES.get(s, s)}" for m, s in cells) + ")")
    return "left out: " + ", ".join(parts) + "; left_out.csv names each run and why" if parts else ""


def to_markdown(long: pd.DataFrame, left: pd.DataFrame | None = None) -> str:
    w = wide(long)
    lines = ["| " + " | ".join(w.columns) + " |", "|" + "|".join("---" if c in ("Method", "Strategy") else "---:"
                                                               for c in w.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in w.itertuples(index=False)]
    note = f"\nmean ± std over concepts (std ddof={DDOF}); n = concepts per cell"
    if (~long.complete).any():
        note += "; * = incomplete cell"
    missing = left_note(left)
    return "\n".join(lines) + note + "\n" + (missing + "\n" if missing else "")


def to_latex(long: pd.DataFrame, caption: str, left: pd.DataFrame | None = None) -> str:
    w = wide(long, latex=True)
    cols = "ll" + "r" * (len(w.columns) - 2)
    body = [" & ".join(str(v) for v in row) + r" \\" for row in w.itertuples(index=False)]
    note = left_note(left).replace("_", r"\_")
    missing = f"; {note}" if note else ""
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
                      " & ".join(w.columns) + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                      rf"\caption{{{caption} Mean $\pm$ std over concepts (ddof={DDOF}){missing}.}}", r"\end{table}", ""])


def to_csv(long: pd.DataFrame) -> str:
    out = long.copy()
    out["method"] = out.method.astype(str)
    out["strategy"] = out.strategy.astype(str)
    out["metric"] = out.metric.astype(str)
    return out.to_csv(index=False, float_format="%.6g")


def paper(table: int) -> pd.DataFrame:
    p = pd.read_csv(PAPER_CSV)
    return p[p.table == table].rename(columns={"mean": "paper_mean", "std": "paper_std"})


def versus_paper(long: pd.DataFrame, table: int) -> pd.DataFrame:
    """Ours beside the published numbers, with the difference of the means."""
    ours = long.assign(method=long.method.astype(str).map(lambda m: METHOD_NAMES.get(m, m)),
                       strategy=long.strategy.astype(str).map(lambda s: STRATEGY_NAMES.get(s, s)),
                       metric=long.metric.astype(str))
    both = ours.merge(paper(table)[["method", "strategy", "metric", "paper_mean", "paper_std"]],
                      on=["method", "strategy", "metric"], how="left")
    both["diff"] = both["mean"] - both["paper_mean"]
    return both[["method", "strategy", "metric", "n", "mean", "std", "paper_mean", "paper_std", "diff"]]


def versus_markdown(both: pd.DataFrame) -> str:
    lines = ["| Method | Strategy | Metric | n | ours | paper | ours − paper |", "|---|---|---|---:|---:|---:|---:|"]
    for r in both.itertuples():
        lines.append(f"| {r.method} | {r.strategy} | {r.metric} | {r.n} | {cell(r.mean, r.std, r.metric)} | "
                     f"{cell(r.paper_mean, r.paper_std, r.metric)} | "
                     f"{'-' if np.isnan(r.diff) else f'{r.diff:+.{DIGITS.get(r.metric, 3)}f}'} |")
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out: Path, left: pd.DataFrame | None = None) -> dict[str, Path]:
    """table1/table3 in .md, .tex, .csv and the comparison with the paper, and with `left` (the runs
    left out, analysis.load) left_out.csv; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if left is not None:
        files["left_out.csv"] = out / "left_out.csv"
        left.to_csv(files["left_out.csv"], index=False)
    for number, long, caption in ((1, table1(runs), "Quality, iterations and time per method and strategy."),
                                  (3, table3(runs), "Identity preservation (DINO) and diversity (DIV).")):
        for ext, text in (("md", to_markdown(long, left)), ("tex", to_latex(long, caption, left)), ("csv", to_csv(long))):
            files[f"table{number}.{ext}"] = out / f"table{number}.{ext}"
            files[f"table{number}.{ext}"].write_text(text)
        both = versus_paper(long, number)
        files[f"table{number}_vs_paper.md"] = out / f"table{number}_vs_paper.md"
        files[f"table{number}_vs_paper.md"].write_text(versus_markdown(both))
        files[f"table{number}_vs_paper.csv"] = out / f"table{number}_vs_paper.csv"
        both.to_csv(files[f"table{number}_vs_paper.csv"], index=False, float_format="%.6g")
    return files
