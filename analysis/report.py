"""One page (Markdown and HTML) tying an experiment's tables and figures together."""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, tables
from analysis.load import METHOD_NAMES, STRATEGY_NAMES, completed_runs, evals_of, order, steps_of


def panel_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Figure-2 panels for one concept per method: its longest run and its DVAR run."""
    picks = []
    for method, g in runs.groupby("method"):
        concept = sorted(g.concept)[0]
        mine = g[g.concept == concept]
        picks.append(mine.loc[mine.iterations.idxmax()])
        if (mine.strategy == "dvar").any():
            picks.append(mine[mine.strategy == "dvar"].iloc[0])
    return pd.DataFrame(picks).drop_duplicates("run_id")


def headline(runs: pd.DataFrame, steps: pd.DataFrame) -> list[str]:
    """The paper's claims as measured numbers: is L_det informative where L_train is not, how many
    iterations DVAR saves, and how much quality each strategy keeps relative to Baseline."""
    from analysis.ablation import trend_to_noise

    lines = ["## The claims, measured", ""]
    full = runs[runs.strategy == "baseline"] if (runs.strategy == "baseline").any() else runs
    tnr = {col: [trend_to_noise(steps[steps.run_id == r][col].to_numpy()) for r in full.run_id]
           for col in ("train_loss", "l_det") if col in steps}
    if tnr.get("l_det"):
        which = "Baseline runs" if len(full) < len(runs) else "runs"
        lines.append(f"- Trend-to-noise ratio over {len(full)} {which}: "
                     f"L_train {np.nanmean(tnr['train_loss']):.2f}, L_det {np.nanmean(tnr['l_det']):.2f} "
                     "(std of the trend over std of the rest; see analysis/ablation.py).")
    # Kept = a share of Baseline's value for train CLIP img (the quality the criteria are tuned on,
    # as in replay); the validation scores can sit near zero, where a share means nothing, so
    # they get differences.
    others = ["val_clip_img", "val_clip_txt"]
    table = ["| Method | Strategy | Iterations | Baseline / this | Train CLIP img kept | "
             "Δ Val CLIP img | Δ Val CLIP txt |", "|---|---|---:|---:|---:|---:|---:|"]
    for method in order(runs.method, METHOD_NAMES):
        g = runs[runs.method == method]
        mean = g.groupby("strategy")[["iterations", "train_clip_img", *others]].mean()
        if "baseline" not in mean.index:
            continue
        base = mean.loc["baseline"]
        for strategy in order(mean.index, STRATEGY_NAMES):
            r = mean.loc[strategy]
            kept = f"{100 * r.train_clip_img / base.train_clip_img:.1f} %" if base.train_clip_img > 0 else "-"
            deltas = " | ".join(f"{r[m] - base[m]:+.3f}" for m in others)
            table.append(f"| {METHOD_NAMES.get(method, method)} | {STRATEGY_NAMES.get(strategy, strategy)} | "
                         f"{r.iterations:.0f} | {base.iterations / r.iterations:.2f}x | {kept} | {deltas} |")
    if len(table) > 2:
        lines += ["", "Iterations and quality kept, relative to Baseline (means over concepts):", "", *table]
    return lines + [""]


def build(results: Path, experiment: str, out: Path) -> dict[str, Path]:
    """Tables, figures, report.md and report.html for `experiment` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    runs = completed_runs(results, experiment)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = tables.write_tables(runs, out)
    notes = [str(w.message) for w in caught]
    figs = {"stops": figures.stop_distribution(runs, out / "figures" / "stop_steps"),
            "time": figures.time_vs_quality(runs, out / "figures" / "time_vs_quality")}
    picks = panel_runs(runs)
    steps = steps_of(results, experiment, picks.run_id)
    evals = evals_of(results, experiment, picks.run_id)
    panels = []
    for run in picks.itertuples():
        panels.append(figures.run_panel(pd.Series(run._asdict()), steps[steps.run_id == run.run_id],
                                        evals[evals.run_id == run.run_id],
                                        out / "figures" / f"run_{run.method}_{run.strategy}_{run.run_id}"))
    derived_file = results / "work" / experiment / "few_iters_steps.json"
    derived = json.loads(derived_file.read_text()) if derived_file.exists() else {}
    meta = runs.iloc[0]
    md = [f"# Experiment `{experiment}`", "",
          f"{len(runs)} completed runs, {runs.concept.nunique()} concepts, methods: "
          + ", ".join(METHOD_NAMES.get(m, m) for m in sorted(runs.method.unique())) + ", strategies: "
          + ", ".join(STRATEGY_NAMES.get(s, s) for s in sorted(runs.strategy.unique())) + ".",
          f"Model `{meta.model}` ({meta.model_identity}), device {meta.device}, code {meta.git_sha[:10]}"
          + (" (uncommitted changes)" if meta.git_dirty else "") + ".", ""]
    if notes:
        md += ["**Warnings:** " + "; ".join(notes), ""]
    md += headline(runs, steps_of(results, experiment, runs.run_id))
    md += ["## Table 1: quality, iterations, time", "",
           "Time counts the training loop of each strategy's own protocol: L_det monitoring, recorded in every",
           "run, is left out for the strategies that do not use it.", "",
           (out / "table1.md").read_text(), "## Table 3: DINO and DIV", "", (out / "table3.md").read_text(),
           "## Beside the paper", "", (out / "table1_vs_paper.md").read_text(), "",
           (out / "table3_vs_paper.md").read_text()]
    if derived:
        md += ["## Few-iters step counts (derived from this sweep's CLIP-s stop steps)", "",
               "| method | mean | max | CLIP-s runs |", "|---|---:|---:|---:|"]
        md += [f"| {METHOD_NAMES.get(m, m)} | {d['mean']} | {d['max']} | {d['n_clip_s_runs']} |" for m, d in derived.items()]
        md.append("")
    md += ["## Stop steps per strategy (paper Fig. 13)", "", "![stop steps](figures/stop_steps.png)", "",
           "## Time vs quality", "", "![time vs quality](figures/time_vs_quality.png)", "",
           "## Training dynamics (paper Fig. 2)", ""]
    md += [f"![{p[0].stem}](figures/{p[0].name})" for p in panels]
    report_md = out / "report.md"
    report_md.write_text("\n".join(md) + "\n")
    report_html = out / "report.html"
    report_html.write_text(markdown_to_html("\n".join(md), title=f"dvar-bench: {experiment}"))
    files.update({"report.md": report_md, "report.html": report_html})
    for group in (figs["stops"], figs["time"], *panels):
        files.update({p.name: p for p in group})
    return files


def markdown_to_html(md: str, title: str) -> str:
    """Just enough Markdown for this report: headings, pipe tables, images, paragraphs."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-: ")]
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>"
                                  for r in rest) + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}" style="max-width:100%"></p>')
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
