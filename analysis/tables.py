"""Tables 1 and 3 of the paper from an experiment's records, and side by side with the paper.

Each cell is the mean over concepts of the per-concept value (seeds are averaged per concept first)
with its 95 % bootstrap interval over concepts (analysis.uncertainty); the CSV and the comparison with
the paper also carry the std over concepts (ddof=1, as the paper prints mean ± std; it does not state
its ddof). `n` is the number of concepts behind the cell; a cell with fewer concepts than the
experiment's most complete cell is marked incomplete. Where concepts have several seeds, a second
table gives the between-seed spread: the mean over concepts of the std between seeds.

The claims table pairs every strategy with Baseline concept by concept (uncertainty.compare_with_baseline):
updates saved and quality kept as per-concept ratios with intervals, and Wilcoxon signed-rank p-values.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import METHOD_NAMES, STRATEGY_NAMES, order
from analysis.uncertainty import bootstrap_interval, compare_with_baseline, seed_spread
from benchmark.protocol.strategies import REFERENCE

DDOF = 1
TABLE1 = {"Train CLIP img": "train_clip_img", "Val CLIP img": "val_clip_img", "Val CLIP txt": "val_clip_txt",
          "Iterations": "iterations", "Time, min": "time_min"}
TABLE3 = {"DINO": "dino", "DIV": "div"}
DIGITS = {"Iterations": 1, "Time, min": 2}
PAPER_CSV = Path(__file__).with_name("paper_tables.csv")


def summarize(runs: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Long table: method, strategy, metric, mean, lo, hi (95 % bootstrap interval over concepts), std,
    n (concepts), seed_sd (mean over concepts of the std between seeds), seeds (most seeds of a concept)."""
    per_concept = runs.groupby(["method", "strategy", "concept"])[list(columns.values())].mean().reset_index()
    spread = seed_spread(runs, list(columns.values()))
    seeds = runs.groupby(["method", "strategy", "concept"]).seed.nunique().groupby(["method", "strategy"]).max()
    rows = []
    for (method, strategy), g in per_concept.groupby(["method", "strategy"], sort=False):
        for name, col in columns.items():
            v = g[col].dropna().to_numpy(dtype=float)
            lo, hi = bootstrap_interval(v)
            rows.append({"method": method, "strategy": strategy, "metric": name, "mean": v.mean() if len(v) else np.nan,
                         "lo": lo, "hi": hi, "std": v.std(ddof=DDOF) if len(v) > DDOF else np.nan, "n": len(v),
                         "seed_sd": spread.loc[(method, strategy), col], "seeds": int(seeds.loc[(method, strategy)])})
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


def cell(mean: float, std: float, metric: str) -> str:
    """'mean ± std' (the paper's format)."""
    if np.isnan(mean):
        return "-"
    d = DIGITS.get(metric, 3)
    return f"{mean:.{d}f}" + ("" if np.isnan(std) else f" ± {std:.{d}f}")


def interval_cell(mean: float, lo: float, hi: float, metric: str) -> str:
    """'mean [lo, hi]'; the mean alone where there is no interval (one concept)."""
    if np.isnan(mean):
        return "-"
    d = DIGITS.get(metric, 3)
    return f"{mean:.{d}f}" + ("" if np.isnan(lo) else f" [{lo:.{d}f}, {hi:.{d}f}]")


def wide(long: pd.DataFrame, value=lambda r: interval_cell(r.mean, r.lo, r.hi, r.metric)) -> pd.DataFrame:
    """Method | Strategy | one column per metric | n (concepts); cells `value(row)` (default 'mean [lo, hi]'),
    n marked '*' when incomplete."""
    rows = []
    for (method, strategy), g in long.groupby(["method", "strategy"], sort=False, observed=True):
        row = {"Method": METHOD_NAMES.get(method, method), "Strategy": STRATEGY_NAMES.get(strategy, strategy)}
        for r in g.itertuples():
            row[r.metric] = value(r)
        row["n"] = f"{g.n.max()}" + ("" if g.complete.all() else "*")
        rows.append(row)
    return pd.DataFrame(rows)


def seeded(long: pd.DataFrame) -> bool:
    """Whether any concept has more than one seed (then the tables show the between-seed spread)."""
    return bool((long.seeds > 1).any())


def spread_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Method | Strategy | the between-seed spread per metric | seeds per concept."""
    w = wide(long, lambda r: "-" if np.isnan(r.seed_sd) else f"{r.seed_sd:.{DIGITS.get(r.metric, 3)}f}")
    seeds = long.groupby(["method", "strategy"], sort=False, observed=True).seeds.max()
    return w.drop(columns="n").assign(seeds=[str(v) for v in seeds])


def markdown_rows(w: pd.DataFrame) -> list[str]:
    return ["| " + " | ".join(w.columns) + " |",
            "|" + "|".join("---" if c in ("Method", "Strategy") else "---:" for c in w.columns) + "|",
            *["| " + " | ".join(str(v) for v in row) + " |" for row in w.itertuples(index=False)]]


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


CELL_NOTE = "mean [95 % bootstrap interval] over concepts, seeds averaged per concept first; n = concepts per cell"
SPREAD_NOTE = ("between-seed spread: the std (ddof=1) between a concept's seeds, averaged over the concepts with "
               "two or more seeds")


def to_markdown(long: pd.DataFrame, left: pd.DataFrame | None = None) -> str:
    lines = markdown_rows(wide(long))
    note = CELL_NOTE + ("; * = incomplete cell" if (~long.complete).any() else "")
    lines.append(note)
    missing = left_note(left)
    if missing:
        lines.append(missing)
    if seeded(long):
        lines += ["", *markdown_rows(spread_wide(long)), SPREAD_NOTE]
    return "\n".join(lines) + "\n"


def to_latex(long: pd.DataFrame, caption: str, left: pd.DataFrame | None = None) -> str:
    def tabular(w: pd.DataFrame) -> list[str]:
        body = [" & ".join(str(v) for v in row).replace("%", r"\%") + r" \\" for row in w.itertuples(index=False)]
        return [rf"\begin{{tabular}}{{ll{'r' * (len(w.columns) - 2)}}}", r"\toprule", " & ".join(w.columns) + r" \\",
                r"\midrule", *body, r"\bottomrule", r"\end{tabular}"]

    note = left_note(left).replace("_", r"\_")
    missing = f"; {note}" if note else ""
    spread = ["", r"\medskip", *tabular(spread_wide(long))] if seeded(long) else []
    below = f" Below: the {SPREAD_NOTE}." if seeded(long) else ""
    cell_note = CELL_NOTE.replace("%", r"\%")
    return "\n".join([r"\begin{table}[t]", r"\centering", *tabular(wide(long)), *spread,
                      rf"\caption{{{caption} {cell_note}{missing}.{below}}}",
                      r"\end{table}", ""])


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
    """Ours beside the published numbers, with the difference of the means and whether the paper's
    mean lies in our 95 % interval."""
    ours = long.assign(method=long.method.astype(str).map(lambda m: METHOD_NAMES.get(m, m)),
                       strategy=long.strategy.astype(str).map(lambda s: STRATEGY_NAMES.get(s, s)),
                       metric=long.metric.astype(str))
    both = ours.merge(paper(table)[["method", "strategy", "metric", "paper_mean", "paper_std"]],
                      on=["method", "strategy", "metric"], how="left")
    both["diff"] = both["mean"] - both["paper_mean"]
    inside = (both.lo <= both.paper_mean) & (both.paper_mean <= both.hi)
    both["paper_inside"] = inside.astype(object).where(both.lo.notna() & both.paper_mean.notna(), None)
    return both[["method", "strategy", "metric", "n", "mean", "lo", "hi", "std", "paper_mean", "paper_std", "diff",
                 "paper_inside"]]


def versus_markdown(both: pd.DataFrame) -> str:
    lines = ["| Method | Strategy | Metric | n | ours | 95 % interval | paper | ours − paper | paper inside |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in both.itertuples():
        d = DIGITS.get(r.metric, 3)
        interval = "-" if np.isnan(r.lo) else f"[{r.lo:.{d}f}, {r.hi:.{d}f}]"
        inside = "-" if pd.isna(r.paper_inside) else ("yes" if r.paper_inside else "no")
        lines.append(f"| {r.method} | {r.strategy} | {r.metric} | {r.n} | {cell(r.mean, r.std, r.metric)} | {interval} | "
                     f"{cell(r.paper_mean, r.paper_std, r.metric)} | "
                     f"{'-' if np.isnan(r.diff) else f'{r.diff:+.{d}f}'} | {inside} |")
    return "\n".join(lines) + "\nours and the paper: mean ± std over concepts; the interval is our 95 % bootstrap interval of the mean\n"


# --- the claims: each strategy against Baseline, concept by concept ----------------------------------
DELTAS = {"Δ Val CLIP img": "val_clip_img", "Δ Val CLIP txt": "val_clip_txt"}


def claims(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method x strategy: iterations (mean over concepts), the paired comparison with
    Baseline (uncertainty.Comparison: speed-up and train CLIP img kept with intervals, Wilcoxon p) and
    the mean paired differences of the validation scores (they can sit near zero, where a share
    means nothing). Baseline's own row has speed-up 1 and kept 1 without intervals or p."""
    per = runs.groupby(["method", "strategy", "concept"])[["iterations", *DELTAS.values()]].mean()
    compared = {(c.method, c.strategy): c for c in compare_with_baseline(runs, reference=REFERENCE)}
    rows = []
    for method in order(runs.method, METHOD_NAMES):
        mine = per.loc[method]
        if REFERENCE not in mine.index.get_level_values("strategy"):
            continue
        base = mine.loc[REFERENCE]
        for strategy in order(mine.index.get_level_values("strategy"), STRATEGY_NAMES):
            m = mine.loc[strategy]
            row = {"method": method, "strategy": strategy, "iterations": float(m.iterations.mean())}
            if strategy == REFERENCE:
                row.update(n=len(m), speedup=1.0, kept=1.0)
            else:
                c = compared[(method, strategy)]
                row.update(n=c.n, speedup=c.speedup, speedup_lo=c.speedup_ci[0], speedup_hi=c.speedup_ci[1],
                           kept=c.kept, kept_lo=c.kept_ci[0], kept_hi=c.kept_ci[1], p_updates=c.p_updates,
                           p_quality=c.p_quality)
            for col in DELTAS.values():
                row[f"delta_{col}"] = float((m[col] - base[col]).dropna().mean())
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=[
        "method", "strategy", "n", "iterations", "speedup", "speedup_lo", "speedup_hi", "kept", "kept_lo", "kept_hi",
        "p_updates", "p_quality", *(f"delta_{c}" for c in DELTAS.values())])


def smallest_p(n: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give with n pairs: 2 / 2^n."""
    return 2.0 / 2 ** n


def claim(r) -> str:
    """One strategy's row as a sentence: '4.00x fewer updates [2.00, 8.00], 87.0 % kept [80.0, 93.0],
    p = 0.125 (updates), 0.25 (quality); n = 4'."""
    speed = f"{r.speedup:.2f}x fewer updates" + ("" if pd.isna(r.speedup_lo) else f" [{r.speedup_lo:.2f}, {r.speedup_hi:.2f}]")
    kept = f"{100 * r.kept:.1f} % kept" + ("" if pd.isna(r.kept_lo) else f" [{100 * r.kept_lo:.1f}, {100 * r.kept_hi:.1f}]")
    return f"{speed}, {kept}, p = {r.p_updates:.3g} (updates), {r.p_quality:.3g} (quality); n = {r.n}"


def claims_markdown(table: pd.DataFrame) -> str:
    """The claims table, with the note on intervals and on the smallest p its n allows."""
    lines = ["| Method | Strategy | n | Iterations | Baseline / this | Train CLIP img kept | p (updates) | p (quality) | "
             + " | ".join(DELTAS) + " |", "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(DELTAS)]
    for r in table.itertuples():
        speed = f"{r.speedup:.2f}x" + ("" if pd.isna(r.speedup_lo) else f" [{r.speedup_lo:.2f}, {r.speedup_hi:.2f}]")
        kept = f"{100 * r.kept:.1f} %" + ("" if pd.isna(r.kept_lo) else f" [{100 * r.kept_lo:.1f}, {100 * r.kept_hi:.1f}]")
        ps = " | ".join("-" if pd.isna(p) else f"{p:.3g}" for p in (r.p_updates, r.p_quality))
        deltas = " | ".join(f"{round(getattr(r, f'delta_{c}'), 3) + 0.0:+.3f}" for c in DELTAS.values())  # no -0.000
        lines.append(f"| {METHOD_NAMES.get(r.method, r.method)} | {STRATEGY_NAMES.get(r.strategy, r.strategy)} | {r.n} | "
                     f"{r.iterations:.0f} | {speed} | {kept} | {ps} | {deltas} |")
    ns = sorted({int(n) for n in table[table.strategy != REFERENCE].n})
    floor = ", ".join(f"{smallest_p(n):.3g} with {n} concept{'s' if n != 1 else ''}" for n in ns)
    lines += ["Paired by concept (seeds averaged per concept first): Baseline / this = Baseline's updates over this "
              "strategy's, geometric mean; kept = this strategy's train CLIP img over Baseline's, mean; [95 % bootstrap "
              "interval over concepts]; p = two-sided Wilcoxon signed-rank test of the paired differences; "
              "Δ = mean paired difference from Baseline."
              + (f" The exact test cannot give p below 2/2^n: {floor}." if ns else "")]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out: Path, left: pd.DataFrame | None = None) -> dict[str, Path]:
    """table1/table3 in .md, .tex, .csv and the comparison with the paper, the claims (claims.md, .csv:
    each strategy against Baseline), and with `left` (the runs left out, analysis.load) left_out.csv;
    returns the files."""
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
    table = claims(runs)
    if not table.empty:
        files["claims.md"], files["claims.csv"] = out / "claims.md", out / "claims.csv"
        files["claims.md"].write_text(claims_markdown(table))
        table.to_csv(files["claims.csv"], index=False, float_format="%.6g")
    return files
