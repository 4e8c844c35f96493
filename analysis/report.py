"""One page (Markdown and HTML) tying an experiment's tables and figures together.

The HTML is the Markdown rendered by markdown-it-py (CommonMark + tables) with a small stylesheet.
Where the experiment is not the paper's configuration (another model, other budgets or stopping
hyperparameters, other concepts, other metric models) a banner at the top says how, and the paper's
numbers appear for orientation only, without an "ours - paper" column.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from analysis import figures, tables
from analysis.load import (
    METHOD_NAMES,
    STRATEGY_NAMES,
    evals_of,
    order,
    runs_and_left_out,
    steps_of,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PAPER_MODEL = "sd15"
PAPER_CONCEPTS = 48
# method.protocol keys that fix a strategy's budget or stopping rule (few_iters: a sweep derives its own)
PROTOCOL_KEYS = {"baseline": ("eval_every",), "clip_s": ("eval_every", "patience", "eps"),
                 "dvar": ("window", "threshold")}
METRIC_KEYS = ("clip.arch", "clip.pretrained", "dino.arch", "dino.pretrained", "lpips.net",
               "lpips.pretrained_backbone")


def panel_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Figure-2 panels for one concept per method: its longest run and its DVAR run."""
    picks = []
    for method in order(runs.method, METHOD_NAMES):
        g = runs[runs.method == method]
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
            deltas = " | ".join(f"{round(r[m] - base[m], 3) + 0.0:+.3f}" for m in others)  # no -0.000
            table.append(f"| {METHOD_NAMES.get(method, method)} | {STRATEGY_NAMES.get(strategy, strategy)} | "
                         f"{r.iterations:.0f} | {base.iterations / r.iterations:.2f}x | {kept} | {deltas} |")
    if len(table) > 2:
        lines += ["", "Iterations and quality kept, relative to Baseline (means over concepts):", "", *table]
    return lines + [""]


def _dig(cfg: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(float(a), float(b)))
    return a == b


def departures(runs: pd.DataFrame) -> list[str]:
    """How the experiment's runs differ from the paper's configuration (empty: they do not): the base
    model, the step budgets and stopping hyperparameters (conf/method/*, the paper's per method), the
    concepts (the 48 of concepts/manifest.csv) and the metric models (conf/metrics/real.yaml)."""
    from benchmark.concepts.manifest import load_manifest

    out = []
    models = sorted(set(runs.model.astype(str)))
    if models != [PAPER_MODEL]:
        out.append(f"Model {', '.join(f'`{m}`' for m in models)}, not the paper's Stable Diffusion v1.5 "
                   f"(`model={PAPER_MODEL}`).")
    cfgs = [(r.method, r.strategy, json.loads(r.config_json)) for r in runs.itertuples()]
    budgets, rules = {}, {}
    for method, strategy, cfg in cfgs:
        path = CONF_DIR / "method" / f"{method}.yaml"
        if not path.exists():
            continue
        paper = yaml.safe_load(path.read_text())
        name = METHOD_NAMES.get(method, method)
        steps = _dig(cfg, "strategy.max_steps") or _dig(cfg, "method.max_train_steps")
        if steps is not None and not _same(steps, paper["max_train_steps"]):
            budgets.setdefault(name, (set(), paper["max_train_steps"]))[0].add(int(steps))
        for rule, keys in PROTOCOL_KEYS.items():
            for key in keys:
                want = paper["protocol"][rule][key]
                got = _dig(cfg, f"strategy.{key}") if strategy == rule else _dig(cfg, f"method.protocol.{rule}.{key}")
                if got is not None and not _same(got, want):
                    rules.setdefault(f"{rule}.{key}", set()).add(got)
    if budgets:
        ours = sorted({v for got, _ in budgets.values() for v in got})
        paper = ", ".join(f"{name} {want}" for name, (_, want) in sorted(budgets.items(), key=_method_order))
        out.append(f"Step budgets of {'/'.join(map(str, ours))} updates, not the paper's {paper}.")
    if rules:
        shown = ", ".join(f"{key} {'/'.join(map(str, sorted(values)))}" for key, values in sorted(rules.items()))
        out.append(f"Stopping hyperparameters {shown}, not the paper's per-method values (`conf/method/`).")
    paper_concepts = {c.name for c in load_manifest().values() if c.source != "bundled"}
    concepts = set(runs.concept.astype(str))
    if concepts < paper_concepts:
        missing = sorted(paper_concepts - concepts)
        out.append(f"{len(concepts)} of the paper's {PAPER_CONCEPTS} concepts (without {', '.join(missing[:5])}"
                   + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") + ").")
    elif concepts != paper_concepts:
        theirs = len(concepts & paper_concepts)
        listed = ", ".join(sorted(concepts)[:5]) + (f" and {len(concepts) - 5} more" if len(concepts) > 5 else "")
        out.append(f"{len(concepts)} concept{'s' if len(concepts) != 1 else ''} ({listed}), "
                   + (f"{theirs} of them among" if theirs else "none of") + f" the paper's {PAPER_CONCEPTS}.")
    real = yaml.safe_load((CONF_DIR / "metrics" / "real.yaml").read_text())
    odd = [cfg for _, _, cfg in cfgs if any(not _same(_dig(cfg, f"metrics.{k}"), _dig(real, k)) for k in METRIC_KEYS)]
    if odd:
        clip = _dig(odd[0], "metrics.clip") or {}
        pretrained = clip.get("pretrained")
        which = (f"CLIP `{clip.get('arch')}` with random weights" if not pretrained
                 else f"CLIP `{clip.get('arch')}` from `{pretrained}`")
        out.append(f"Metric models: {which}, not the paper's OpenAI CLIP ViT-B/32, DINO ViT-S/16 and "
                   "LPIPS-alex (`metrics=real`).")
    return out


def _method_order(item) -> int:
    names = list(METHOD_NAMES.values())
    return names.index(item[0]) if item[0] in names else len(names)


def banner(problems: list[str]) -> list[str]:
    """A Markdown blockquote at the top of the report."""
    if not problems:
        return []
    return ["> **Not the paper's configuration.** These numbers cannot be compared with the paper's Table 1:",
            ">", *[f"> - {p}" for p in problems], ">",
            "> The paper's values appear below for orientation only, without differences.", ""]


def table_block(md: str) -> list[str]:
    """A table file of analysis.tables as a Markdown block: the note under the table becomes its own
    paragraph (right after the rows it would be read as one more row)."""
    lines = md.rstrip("\n").splitlines()
    rows = [ln for ln in lines if ln.startswith("|")]
    notes = [ln for ln in lines if ln.strip() and not ln.startswith("|")]
    return [*rows, "", *[f"*{n}*" for n in notes], ""]


def paper_table(long: pd.DataFrame, table: int) -> list[str]:
    """The paper's published cells for the method x strategy rows of `long`, laid out like our table
    (mean ± std), and no difference: for orientation where the configurations differ."""
    both = tables.versus_paper(long, table)
    metrics = list(dict.fromkeys(both.metric))
    lines = ["| Method | Strategy | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    for (method, strategy), g in both.groupby(["method", "strategy"], sort=False):
        cells = {r.metric: tables.cell(r.paper_mean, r.paper_std, r.metric) for r in g.itertuples()}
        lines.append(f"| {method} | {strategy} | " + " | ".join(cells.get(m, "-") for m in metrics) + " |")
    return lines + ["", "*the paper's Table " + str(table) + " (`analysis/paper_tables.csv`); - where it has no cell*", ""]


def left_out_section(left: pd.DataFrame) -> list[str]:
    """The runs missing from the tables, each with why: failed (its error), damaged (the file), or
    outside the plan."""
    if left.empty:
        return []
    lines = ["## Runs left out", "",
             f"{len(left)} runs are not in the tables below (also in `left_out.csv`; `python -m benchmark.sweep status` "
             "shows the logs of failed runs, `--rerun-failed` runs failed and damaged ones again):", ""]
    for r in left.itertuples():
        where = f", `{r.concept}` seed {int(r.seed)}" if isinstance(r.concept, str) else ""
        lines.append(f"- **{r.reason}**: {METHOD_NAMES.get(r.method, r.method)} / "
                     f"{STRATEGY_NAMES.get(r.strategy, r.strategy)}{where}, run `{r.run_id}`: {' '.join(str(r.detail).split())}")
    return lines + [""]


def build(results: Path, experiment: str, out: Path, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Tables, figures, report.md and report.html for `experiment` under `out`; `progress` gets a line
    per stage (the command prints them to stderr)."""
    say = progress or (lambda _: None)
    out.mkdir(parents=True, exist_ok=True)
    say(f"reading the runs of {experiment} under {results}")
    runs, left = runs_and_left_out(results, experiment)
    n = runs.concept.nunique()
    say(f"tables 1 and 3 from {len(runs)} completed runs ({n} concept{'s' if n != 1 else ''})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = tables.write_tables(runs, out, left)
    notes = [str(w.message) for w in caught]
    say("figures: stop steps per strategy, time vs quality")
    figs = {"stops": figures.stop_distribution(runs, out / "figures" / "stop_steps"),
            "time": figures.time_vs_quality(runs, out / "figures" / "time_vs_quality")}
    picks = panel_runs(runs)
    say(f"reading the steps and evaluations of {len(picks)} runs for the training-dynamics panels")
    steps = steps_of(results, experiment, picks.run_id)
    evals = evals_of(results, experiment, picks.run_id)
    panels = []
    for i, run in enumerate(picks.itertuples(), 1):
        say(f"panel {i}/{len(picks)}: {run.method} / {run.strategy}")
        siblings = runs[(runs.method == run.method) & (runs.concept == run.concept) & (runs.seed == run.seed)
                        & (runs.strategy != run.strategy) & (runs.strategy != "baseline")]
        others = {s: int(g.iterations.iloc[0]) for s, g in siblings.groupby("strategy")} if run.strategy == "baseline" else {}
        panels.append(figures.run_panel(pd.Series(run._asdict()), steps[steps.run_id == run.run_id],
                                        evals[evals.run_id == run.run_id],
                                        out / "figures" / f"run_{run.method}_{run.strategy}_{run.run_id}", others))
    derived_file = results / "work" / experiment / "few_iters_steps.json"
    derived = json.loads(derived_file.read_text()) if derived_file.exists() else {}
    problems = departures(runs)
    meta = runs.iloc[0]
    md = [f"# Experiment `{experiment}`", "", *banner(problems),
          f"{len(runs)} completed runs, {n} concept{'s' if n != 1 else ''}; methods: "
          + ", ".join(METHOD_NAMES.get(m, m) for m in order(runs.method, METHOD_NAMES)) + "; strategies: "
          + ", ".join(STRATEGY_NAMES.get(s, s) for s in order(runs.strategy, STRATEGY_NAMES)) + ".",
          f"Model `{meta.model}` ({meta.model_identity}), device {meta.device}, code {meta.git_sha[:10]}"
          + (" (uncommitted changes)" if meta.git_dirty else "") + ".", ""]
    if notes:
        md += ["**Warnings:**", "", *[f"- {n}" for n in notes], ""]
    md += left_out_section(left)
    say(f"the claims: trend-to-noise and quality kept over {len(runs)} runs")
    md += headline(runs, steps_of(results, experiment, runs.run_id))
    md += ["## Table 1: quality, iterations, time", "",
           "Time counts the training loop of each strategy's own protocol: L_det monitoring, recorded in every "
           "run, is left out for the strategies that do not use it.", "",
           *table_block((out / "table1.md").read_text()),
           "## Table 3: DINO and DIV", "", *table_block((out / "table3.md").read_text())]
    if problems:
        md += ["## The paper's numbers, for orientation", "",
               "Not comparable with the numbers above (see the note at the top), so no differences are shown.", "",
               *paper_table(tables.table1(runs), 1), *paper_table(tables.table3(runs), 3)]
    else:
        md += ["## Beside the paper", "", *table_block((out / "table1_vs_paper.md").read_text()),
               *table_block((out / "table3_vs_paper.md").read_text())]
    if derived:
        md += ["## Few-iters step counts (derived from this sweep's CLIP-s stop steps)", "",
               "| Method | mean | max | CLIP-s runs |", "|---|---:|---:|---:|"]
        md += [f"| {METHOD_NAMES.get(m, m)} | {derived[m]['mean']} | {derived[m]['max']} | {derived[m]['n_clip_s_runs']} |"
               for m in order(derived, METHOD_NAMES)]
        md.append("")
    md += ["## Stop steps per strategy (paper Fig. 13)", "", "![stop steps](figures/stop_steps.png)", "",
           "## Time vs quality", "", "![time vs quality](figures/time_vs_quality.png)", "",
           "## Training dynamics (paper Fig. 2)", ""]
    md += [f"![{p[0].stem}](figures/{p[0].name})" for p in panels]
    say("writing report.md and report.html")
    report_md = out / "report.md"
    report_md.write_text("\n".join(md) + "\n")
    report_html = out / "report.html"
    report_html.write_text(markdown_to_html("\n".join(md), title=f"dvar-bench: {experiment}"))
    files.update({"report.md": report_md, "report.html": report_html})
    for group in (figs["stops"], figs["time"], *panels):
        files.update({p.name: p for p in group})
    return files


STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; padding-bottom: .25em; border-bottom: 1px solid #d8dee4; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f4f6;
       padding: .1em .3em; border-radius: 4px; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td[style*="right"], th[style*="right"] { white-space: nowrap; }
blockquote { margin: 1em 0; padding: .6em 1.1em; background: #fff8e1; border: 1px solid #f0c36d;
             border-left: 6px solid #e6a700; border-radius: 4px; }
blockquote p { margin: .3em 0; }
blockquote ul { margin: .3em 0; padding-left: 1.4em; }
img { display: block; max-width: 100%; height: auto; margin: .6em 0 1.2em; }
em { color: #57606a; }
"""


def markdown_to_html(md: str, title: str) -> str:
    """The report's Markdown as a standalone HTML page: markdown-it-py (CommonMark + tables), raw HTML
    in the Markdown escaped, and the stylesheet above (text columns left, number columns right)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")
