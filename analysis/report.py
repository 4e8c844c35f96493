"""One page (Markdown and HTML) tying an experiment's tables and figures together.

The HTML is the Markdown rendered by markdown-it-py (CommonMark + tables) with a small stylesheet, its
figures and sample grids embedded (data: URIs), so report.html is one file a researcher can keep.
Where the experiment is not the paper's configuration (another model, other budgets or stopping
hyperparameters, other concepts, other metric models) a banner at the top says how, and the paper's
numbers appear for orientation only, without an "ours - paper" column.
"""

from __future__ import annotations

import base64
import html
import json
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from markdown_it import MarkdownIt
from PIL import Image

from analysis import figures, tables
from analysis.ablation import trend_to_noise
from analysis.load import (
    METHOD_NAMES,
    STRATEGY_NAMES,
    evals_of,
    order,
    runs_and_left_out,
    steps_of,
)
from benchmark.concepts.manifest import load_manifest
from benchmark.protocol.strategies import (
    DERIVED_KEY,
    PROPOSED,
    REFERENCE,
    STRATEGIES,
    derivation_sources,
)
from benchmark.store.runs import grid_file, work_folder

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PAPER_MODEL = "sd15"
PAPER_CONCEPTS = 48
# method.protocol keys that fix a strategy's budget or stopping rule (few_iters: a sweep derives its own)
PROTOCOL_KEYS = {name: s.protocol_keys for name, s in STRATEGIES.items() if s.protocol_keys}
METRIC_KEYS = ("clip.arch", "clip.pretrained", "dino.arch", "dino.pretrained", "lpips.net",
               "lpips.pretrained_backbone")


def panel_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Figure-2 panels: for one concept per method, its longest run (the other strategies of its
    trajectory are drawn on its axes: a DVAR run evaluates once, at its stop, so it gets a marker there
    rather than a panel of one point)."""
    picks = []
    for method in order(runs.method, METHOD_NAMES):
        g = runs[runs.method == method]
        mine = g[g.concept == sorted(g.concept)[0]]
        picks.append(mine.loc[mine.iterations.idxmax()])
    return pd.DataFrame(picks).drop_duplicates("run_id")


def siblings(runs: pd.DataFrame, run) -> pd.DataFrame:
    """The runs that share `run`'s trajectory (same method, concept and seed), other strategies."""
    return runs[(runs.method == run.method) & (runs.concept == run.concept) & (runs.seed == run.seed)
                & (runs.strategy != run.strategy)]


def headline(runs: pd.DataFrame, steps: pd.DataFrame) -> list[str]:
    """The paper's claims as measured numbers: is L_det informative where L_train is not, how many
    iterations DVAR saves, and how much quality each strategy keeps relative to Baseline."""
    lines = ["## The claims, measured", ""]
    full = runs[runs.strategy == REFERENCE] if (runs.strategy == REFERENCE).any() else runs
    # A ratio needs the whole curve after the first update: a run whose L_det has gaps (ldet.log=watched
    # stops computing it once no criterion reads it) does not count.
    updates = steps[steps.step > 0]
    tnr = {col: [trend_to_noise(values) for r in full.run_id
                 if len(values := updates[updates.run_id == r][col].to_numpy()) and not np.isnan(values).any()]
           for col in ("train_loss", "l_det") if col in steps}
    if tnr.get("train_loss"):
        which = "Baseline runs" if len(full) < len(runs) else "runs"
        ldet = (f"L_det {np.nanmean(tnr['l_det']):.2f} over the {len(tnr['l_det'])} that logged it at every step"
                if tnr.get("l_det") else "L_det not logged at every step (set ldet.log=always to measure it)")
        lines.append(f"- Trend-to-noise ratio over {len(full)} {which}: L_train {np.nanmean(tnr['train_loss']):.2f}, "
                     f"{ldet} (std of the trend over std of the rest; see analysis/ablation.py).")
    table = tables.claims(runs)
    if len(table):
        lines += [*[f"- {STRATEGY_NAMES.get(r.strategy, r.strategy)} ({METHOD_NAMES.get(r.method, r.method)}): "
                    + tables.claim(r) for r in table.itertuples() if r.strategy != tables.REFERENCE],
                  "", "Each strategy against Baseline, concept by concept (also `claims.md`, `claims.csv`):", "",
                  *table_block(tables.claims_markdown(table))]
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
        want = paper["max_train_steps"]
        if strategy in derivation_sources():  # the paper's CLIP-s stops as late as its Few-iters (max), a CLIP-s stop step
            want = max(want, paper["protocol"][DERIVED_KEY]["max"])
        if steps is not None and not _same(steps, want):
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


def pairing_note(runs: pd.DataFrame) -> list[str]:
    """How CLIP img and DINO paired generated and reference images (metrics.pairing): the official code
    pairs by index, the standard TI score takes all pairs, and the two differ."""
    if "clip_pairing" not in runs or runs.clip_pairing.isna().all():
        return []
    words = {"index": "by index, sample j with reference j mod n, as the official code",
             "all_pairs": "over all pairs of samples and references"}
    used = sorted(set(runs.clip_pairing.dropna()))
    return ["CLIP img and DINO pair generated and reference images "
            + " and ".join(words.get(p, p) for p in used) + " (`metrics.pairing`)."]


def banner(problems: list[str]) -> list[str]:
    """A Markdown blockquote at the top of the report."""
    if not problems:
        return []
    return ["> **Not the paper's configuration.** These numbers cannot be compared with the paper's Table 1:",
            ">", *[f"> - {p}" for p in problems], ">",
            "> The paper's values appear below for orientation only, without differences.", ""]


def table_block(md: str) -> list[str]:
    """A table file of analysis.tables as Markdown blocks: each note under a table becomes its own
    paragraph (right after the rows it would be read as one more row), tables and notes in order."""
    out: list[str] = []
    for line in md.rstrip("\n").splitlines():
        if line.startswith("|"):
            if out and out[-1] and not out[-1].startswith("|"):
                out.append("")
            out.append(line)
        elif line.strip():
            out += ["", f"*{line}*"]
    return [*out, ""]


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
    around = pd.concat([picks, *(siblings(runs, r) for r in picks.itertuples())])
    say(f"reading the steps and evaluations of {len(around)} runs for the training-dynamics panels")
    steps = steps_of(results, experiment, around.run_id)
    evals = evals_of(results, experiment, around.run_id)
    panels = []
    for i, run in enumerate(picks.itertuples(), 1):
        say(f"panel {i}/{len(picks)}: {run.method} / {run.strategy}")
        others = {r.strategy: (r, steps[steps.run_id == r.run_id], evals[evals.run_id == r.run_id])
                  for r in siblings(runs, run).drop_duplicates("strategy").itertuples()}
        panels.append(figures.run_panel(pd.Series(run._asdict()), steps[steps.run_id == run.run_id],
                                        evals[evals.run_id == run.run_id],
                                        out / "figures" / f"run_{run.method}_{run.strategy}_{run.run_id}", others))
    say("sample grids at each strategy's reported step")
    grids, grid_md = sample_grids(runs, results, experiment, out / "figures" / "samples")
    derived_file = results / "work" / experiment / "few_iters_steps.json"
    derived = json.loads(derived_file.read_text()) if derived_file.exists() else {}
    problems = departures(runs)
    meta = runs.iloc[0]
    md = [f"# Experiment `{experiment}`", "", *banner(problems),
          f"{len(runs)} completed runs, {n} concept{'s' if n != 1 else ''}; methods: "
          + ", ".join(METHOD_NAMES.get(m, m) for m in order(runs.method, METHOD_NAMES)) + "; strategies: "
          + ", ".join(STRATEGY_NAMES.get(s, s) for s in order(runs.strategy, STRATEGY_NAMES)) + ".",
          f"Model `{meta.model}` ({meta.model_identity}), device {meta.device}, code {meta.git_sha[:10]}"
          + (" (uncommitted changes)" if meta.git_dirty else "") + ".", *pairing_note(runs), ""]
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
    md += ["", *grid_md]
    say("writing report.md and report.html")
    report_md = out / "report.md"
    report_md.write_text("\n".join(md) + "\n")
    report_html = out / "report.html"
    report_html.write_text(markdown_to_html("\n".join(md), title=f"dvar-bench: {experiment}", images=out))
    files.update({"report.md": report_md, "report.html": report_html})
    for group in (figs["stops"], figs["time"], *panels, grids):
        files.update({p.name: p for p in group})
    return files


SAMPLE_STRATEGIES = (REFERENCE, PROPOSED)  # shown side by side
SAMPLE_CONCEPTS = 6                        # per method: the report stays a file one can mail
THUMB_WIDTH = 768                          # px; a 512-px model's grid is 8 x 512 wide


def sample_grids(runs: pd.DataFrame, results: Path, experiment: str, folder: Path) -> tuple[list[Path], list[str]]:
    """The samples of Baseline and DVAR at their reported steps, side by side, per method and concept
    (first seed; the first SAMPLE_CONCEPTS concepts): the grid each run saved at its reported step
    (<results>/work/<experiment>/<run_id>/samples/, `sampling.save_images`), shrunk to THUMB_WIDTH
    under `folder`. Returns the thumbnails and the Markdown section ([] where no run saved a grid)."""
    shown = [s for s in SAMPLE_STRATEGIES if s in set(runs.strategy)]
    files, lines = [], []
    for method in order(runs.method, METHOD_NAMES):
        mine = runs[runs.method == method]
        rows = []
        for concept in sorted(set(mine.concept))[:SAMPLE_CONCEPTS]:
            here = mine[(mine.concept == concept) & (mine.seed == mine[mine.concept == concept].seed.min())]
            cells = []
            for strategy in shown:
                run = here[here.strategy == strategy]
                if run.empty:
                    cells.append("-")
                    continue
                run = run.iloc[0]
                grid = grid_file(work_folder(results, experiment, run.run_id) / "samples", int(run.reported_step))
                if not grid.is_file():
                    cells.append(f"no grid (step {int(run.reported_step)})")
                    continue
                thumb = folder / f"{method}_{concept}_{strategy}_{run.run_id}.png"
                thumb.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(grid) as im:
                    im = im.convert("RGB")
                    if im.width > THUMB_WIDTH:
                        im = im.resize((THUMB_WIDTH, round(im.height * THUMB_WIDTH / im.width)), Image.Resampling.LANCZOS)
                    elif im.width <= THUMB_WIDTH // 2:  # the toy's 32-px samples: enlarged, pixels kept sharp
                        k = THUMB_WIDTH // im.width
                        im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
                    im.save(thumb, optimize=True)
                files.append(thumb)
                label = f"{STRATEGY_NAMES.get(strategy, strategy)}, step {int(run.reported_step)}"
                cells.append(f"![{label}]({thumb.relative_to(folder.parent.parent).as_posix()}) {label}")
            rows.append(f"| `{concept}` (seed {int(here.seed.min())}) | " + " | ".join(cells) + " |")
        if any("![" in r for r in rows):
            lines += [f"### {METHOD_NAMES.get(method, method)}", "",
                      "| Concept | " + " | ".join(STRATEGY_NAMES.get(s, s) for s in shown) + " |",
                      "|---|" + "---|" * len(shown), *rows, ""]
    if not lines:
        return files, []
    n = runs.concept.nunique()
    return files, ["## Samples at the reported step", "",
                   "Each run's evaluation grid at the step it reports (train prompts, then validation prompts), "
                   "Baseline and DVAR side by side" + (f"; the first {SAMPLE_CONCEPTS} of {n} concepts" if n > SAMPLE_CONCEPTS
                                                       else "") + f"; every grid is under `work/{experiment}/<run>/samples/`.",
                   "", *lines]


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


def markdown_to_html(md: str, title: str, images: Path | None = None) -> str:
    """The report's Markdown as a standalone HTML page: markdown-it-py (CommonMark + tables), raw HTML
    in the Markdown escaped, and the stylesheet above (text columns left, number columns right). With
    `images` (the folder the Markdown's image paths are relative to) every image is embedded as a
    data: URI, so the page is one self-contained file."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    if images is not None:
        body = re.sub(r'<img src="([^"]+)"', lambda m: f'<img src="{data_uri(images / html.unescape(m.group(1)))}"', body)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}[path.suffix.lower()]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
