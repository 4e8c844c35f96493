"""Tables from known records (golden), replay = live stop steps, the report from the smoke sweep."""

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis.load import completed_runs, evals_of, steps_of
from analysis.replay import grid_search, replay, traces
from analysis.tables import table1, table3, to_csv, to_latex, to_markdown, versus_paper
from benchmark.engine.train import run
from benchmark.store import records
from benchmark.sweep.cli import main as sweep
from tests.helpers import PROJECT_ROOT, tiny_run_config

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_analysis")]  # one worker: fixtures once


# --- golden tables ---------------------------------------------------------------------------------
def synthetic(results: Path, drop=()) -> None:
    """Known per-concept values: concept a has two seeds (averaged first)."""
    rows = []
    for strategy, iters, total in (("baseline", [100, 100, 100, 100], [60, 60, 120, 180]),
                                   ("dvar", [40, 40, 50, 60], [60, 60, 120, 180])):
        for (concept, seed), it, tot, clip, dino in zip([("a", 1), ("a", 2), ("b", 1), ("c", 1)], iters, total,
                                                        [0.65, 0.75, 0.8, 0.9], [0.5, 0.5, 0.6, 0.7]):
            if (strategy, concept) in drop:
                continue
            rows.append(({"experiment": "gold", "method": "textual_inversion", "strategy": strategy},
                         {"run_id": f"{strategy}-{concept}-{seed}", "concept": concept, "seed": seed,
                          "status": "completed", "iterations": it, "reported_step": it, "train_clip_img": clip,
                          "val_clip_img": clip - 0.1, "val_clip_txt": 0.2, "dino": dino, "div": 0.75,
                          "total_s": tot, "ldet_s": 30.0,
                          "time_s": tot - 30.0 if strategy == "baseline" else tot}))  # Baseline does not watch L_det
    for keys, row in rows:
        records.write_part(results, "runs", keys, f"{row['run_id']}.parquet", [row])


GOLD_MD_1 = """\
| Method | Strategy | Train CLIP img | Val CLIP img | Val CLIP txt | Iterations | Time, min | n |
|---|---|---:|---:|---:|---:|---:|---:|
| Textual Inversion | Baseline | 0.800 [0.700, 0.900] | 0.700 [0.600, 0.800] | 0.200 [0.200, 0.200] | 100.0 [100.0, 100.0] | 1.50 [0.50, 2.50] | 3 |
| Textual Inversion | DVAR | 0.800 [0.700, 0.900] | 0.700 [0.600, 0.800] | 0.200 [0.200, 0.200] | 50.0 [40.0, 60.0] | 2.00 [1.00, 3.00] | 3 |
mean [95 % bootstrap interval] over concepts, seeds averaged per concept first; n = concepts per cell

| Method | Strategy | Train CLIP img | Val CLIP img | Val CLIP txt | Iterations | Time, min | seeds |
|---|---|---:|---:|---:|---:|---:|---:|
| Textual Inversion | Baseline | 0.071 | 0.071 | 0.000 | 0.0 | 0.00 | 2 |
| Textual Inversion | DVAR | 0.071 | 0.071 | 0.000 | 0.0 | 0.00 | 2 |
between-seed spread: the std (ddof=1) between a concept's seeds, averaged over the concepts with two or more seeds
"""
# per concept (seeds averaged) three values: a resample of three draws is all one value with probability
# 1/27 > 0.025, so the exact 95 % interval is the range; only concept a has two seeds (0.65, 0.75)
GOLD_MD_3 = """\
| Method | Strategy | DINO | DIV | n |
|---|---|---:|---:|---:|
| Textual Inversion | Baseline | 0.600 [0.500, 0.700] | 0.750 [0.750, 0.750] | 3 |
| Textual Inversion | DVAR | 0.600 [0.500, 0.700] | 0.750 [0.750, 0.750] | 3 |
mean [95 % bootstrap interval] over concepts, seeds averaged per concept first; n = concepts per cell

| Method | Strategy | DINO | DIV | seeds |
|---|---|---:|---:|---:|
| Textual Inversion | Baseline | 0.000 | 0.000 | 2 |
| Textual Inversion | DVAR | 0.000 | 0.000 | 2 |
between-seed spread: the std (ddof=1) between a concept's seeds, averaged over the concepts with two or more seeds
"""
GOLD_TEX_3_ROWS = [r"Method & Strategy & DINO & DIV & n \\",
                   r"Textual Inversion & Baseline & 0.600 [0.500, 0.700] & 0.750 [0.750, 0.750] & 3 \\",
                   r"Textual Inversion & DVAR & 0.600 [0.500, 0.700] & 0.750 [0.750, 0.750] & 3 \\"]
GOLD_CSV_3 = """\
method,strategy,metric,mean,lo,hi,std,n,seed_sd,seeds,complete
textual_inversion,baseline,DINO,0.6,0.5,0.7,0.1,3,0,2,True
textual_inversion,baseline,DIV,0.75,0.75,0.75,0,3,0,2,True
textual_inversion,dvar,DINO,0.6,0.5,0.7,0.1,3,0,2,True
textual_inversion,dvar,DIV,0.75,0.75,0.75,0,3,0,2,True
"""


def test_golden_tables(tmp_path):
    synthetic(tmp_path)
    runs = completed_runs(tmp_path, "gold")
    assert to_markdown(table1(runs)) == GOLD_MD_1
    assert to_markdown(table3(runs)) == GOLD_MD_3
    tex = to_latex(table3(runs), "DINO and DIV.")
    for row in GOLD_TEX_3_ROWS:
        assert row in tex.splitlines()
    assert tex.startswith(r"\begin{table}") and r"95 \% bootstrap interval" in tex and r"ddof=1" in tex
    assert to_csv(table3(runs)) == GOLD_CSV_3


def test_incomplete_cells_are_marked_and_warned(tmp_path):
    synthetic(tmp_path, drop={("dvar", "c")})
    with pytest.warns(UserWarning, match="incomplete cells.*dvar \\(2\\)"):
        md = to_markdown(table1(completed_runs(tmp_path, "gold")))
    assert "| Textual Inversion | DVAR |" in md and md.splitlines()[3].endswith("| 2* |")


def test_side_by_side_with_the_paper(tmp_path):
    synthetic(tmp_path)
    both = versus_paper(table1(completed_runs(tmp_path, "gold")), 1)
    row = both[(both.strategy == "DVAR") & (both.metric == "Iterations")].iloc[0]
    assert row.paper_mean == 566.0 and row.paper_std == 141.5 and row["diff"] == pytest.approx(50 - 566)
    assert (row.lo, row.hi, row.paper_inside) == (40.0, 60.0, False)
    clip = both[(both.strategy == "DVAR") & (both.metric == "Train CLIP img")].iloc[0]
    assert clip.paper_inside is True, "0.795 lies in [0.700, 0.900]"


# --- replay ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    results = tmp_path_factory.mktemp("replay")
    common = ["experiment=replay", "ldet.log=always"]
    rows = {
        "baseline": run(tiny_run_config("textual_inversion", "baseline", results, *common, "strategy.max_steps=24",
                                        "strategy.eval_every=2"), share_models=True),
        "dvar": run(tiny_run_config("textual_inversion", "dvar", results, *common, "strategy.max_steps=24",
                                    "strategy.window=6", "strategy.threshold=0.5"), share_models=True),
        "clip_s": run(tiny_run_config("textual_inversion", "clip_s", results, *common, "strategy.max_steps=24",
                                      "strategy.eval_every=2", "strategy.patience=1", "strategy.eps=0.0"),
                      share_models=True),
    }
    return results, rows


def baseline_trace(results):
    runs = completed_runs(results, "replay")
    runs = runs[runs.strategy == "baseline"]
    return traces(runs, steps_of(results, "replay", runs.run_id), evals_of(results, "replay", runs.run_id))[0]


def test_replayed_dvar_and_clip_s_stop_where_the_live_runs_stopped(live):
    results, rows = live
    assert rows["dvar"]["stop_reason"] == "criterion" and rows["clip_s"]["stop_reason"] == "criterion"
    trace = baseline_trace(results)
    dvar = replay(trace, "dvar", {"window": 6, "threshold": 0.5})
    assert (dvar["stop_step"], dvar["stopped"]) == (rows["dvar"]["iterations"], True)
    clip = replay(trace, "clip_s", {"patience": 1, "eps": 0.0, "every": 2})
    assert (clip["stop_step"], clip["reported_step"]) == (rows["clip_s"]["iterations"], rows["clip_s"]["reported_step"])
    assert clip["train_clip_img"] == pytest.approx(rows["clip_s"]["train_clip_img"])


def test_other_criteria_and_grid_search(live):
    import numpy as np

    results, _ = live
    trace = baseline_trace(results)
    s = trace.steps.set_index("step").l_det
    roll = s.rolling(4)
    ema = s.ewm(alpha=0.1, adjust=False).mean()
    slope = roll.apply(lambda w: np.polyfit(np.arange(4), w, 1)[0], raw=True)
    formulas = {"ema": ema / ema.shift(4) - 1, "hall": (roll.max() - roll.min()) / roll.mean(), "trend": slope,
                "trend_relative": slope * 4 / roll.mean()}
    for criterion, statistic in formulas.items():
        v = np.sort(statistic.abs().dropna().unique())
        for i in (len(v) // 5, len(v) // 2):  # thresholds halfway between two of its values: no ties
            threshold = (v[i] + v[i + 1]) / 2
            r = replay(trace, criterion, {"window": 4, "threshold": threshold})
            below = statistic.abs() < threshold
            assert (r["stop_step"], r["stopped"]) == (int(below.idxmax()), True), (criterion, threshold)
            nearest = trace.evals.step[(trace.evals.step - r["stop_step"]).abs().idxmin()]
            assert r["reported_step"] == nearest
    fixed = replay(trace, "fixed", {"steps": 11})
    assert (fixed["stop_step"], fixed["reported_step"]) == (11, 10)  # evals every 2: 10 and 12 tie, the earlier
    table = grid_search([trace], "dvar", {"window": [4, 6], "threshold": [0.2, 0.5]})
    assert len(table) == 4 and table.chosen.sum() == 1
    for row in table.itertuples():
        r = replay(trace, "dvar", {"window": row.window, "threshold": row.threshold})
        assert row.tuning_mean_stop == r["stop_step"] and row.tuning_speedup == trace.length / r["stop_step"]


def test_replay_command_tunes_one_method_at_a_time(live, capsys):
    from analysis.cli import main as analysis

    results, _ = live
    args = ["replay", "experiment=replay", f"results={results}", "criterion=dvar", "window=4,6", "threshold=0.5"]
    assert analysis([*args, "method=textual_inversion"]) == 0
    table = pd.read_csv(results / "analysis" / "replay" / "replay_dvar_textual_inversion.csv")
    assert list(table.window) == [4, 6] and table.tuning_n.tolist() == [1, 1]
    capsys.readouterr()
    assert analysis([*args, "method=custom_diffusion"]) == 2
    assert "method=custom_diffusion: no traces of that method" in capsys.readouterr().err


# --- the one command on the smoke experiment ---------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The README's main job, run as the README runs it."""
    results = tmp_path_factory.mktemp("smoke")
    assert sweep(["experiment=smoke", f"paths.results={results}"]) == 0
    return results


def test_report_from_the_smoke_experiment(smoke):
    out = smoke / "analysis" / "smoke"
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "experiment=smoke", f"results={smoke}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("table1.md", "table1.tex", "table1.csv", "table3.md", "table1_vs_paper.md", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    pngs, svgs = list((out / "figures").glob("*.png")), list((out / "figures").glob("*.svg"))
    assert len(pngs) >= 3 and sorted(p.stem for p in pngs) == sorted(s.stem for s in svgs)  # each figure both ways
    samples = list((out / "figures" / "samples").glob("*.png"))
    assert {p.stem.split("_")[-2] for p in samples} == {"baseline", "dvar"}  # side by side, per method
    for png in pngs + samples:
        with Image.open(png) as im:
            im.verify()
    for svg in svgs:
        assert ET.parse(svg).getroot().tag.endswith("svg")
    report = (out / "report.md").read_text()
    assert "15 completed runs" in report and "Few-iters step counts" in report
    assert report.count("| Textual Inversion |") >= 5
    assert "## The claims, measured" in report and "Trend-to-noise ratio over 3 Baseline runs" in report
    assert re.search(r"\| Textual Inversion \| Baseline \| 1 \| \d+ \| 1\.00x \| 100\.0 % \| - \| - \| \+0\.000 \| \+0\.000 \|",
                     report)


def test_analysis_imports_no_torch():
    code = ("import sys, analysis.cli, analysis.report, analysis.replay, analysis.tables, analysis.figures;"
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT).returncode == 0


def test_strided_dvar_against_every_step(live):
    from analysis.replay import strided_summary, strided_vs_every_step

    results, _ = live
    trace = baseline_trace(results)
    rows = strided_vs_every_step([trace], {trace.run_id: {"window": 6, "threshold": 0.5}}, [1, 2, 3])
    assert list(rows.every) == [1, 2, 3]
    assert rows.loc[rows.every == 1, "diff"].iloc[0] == 0, "stride 1 is every-step DVAR"
    assert (rows.stop_strided % rows.every == 0).all(), "strided DVAR decides only at evaluated steps"
    summary = strided_summary(rows)
    assert summary.loc[summary.every == 1, "within_1pct"].iloc[0] == 1.0


# --- runs left out -------------------------------------------------------------------------------
def test_failed_and_damaged_runs_are_named_where_they_are_left_out(tmp_path):
    """A run that failed (DreamBooth-LoRA on a layer that does not exist) and one whose runs file is
    damaged: the warning, report.md, the tables and left_out.csv say which runs are missing and why."""
    import warnings

    import yaml

    results, out = tmp_path / "results", tmp_path / "out"
    exp = {"overrides": ["model=tiny", "metrics=tiny", "progress=false", "log_every=1000", "train_batch_size=1",
                         "ldet.batch_size=4", "sampling.steps=2", "sampling.n_train_prompts=2",
                         "sampling.save_images=none", "method.max_train_steps=6", "method.protocol.baseline.eval_every=3",
                         "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9"],
           "grid": {"method": ["textual_inversion", "dreambooth_lora"], "strategy": ["baseline", "dvar"],
                    "concept": ["sample_duck_toy"], "seed": [59]},
           "per_method": {"dreambooth_lora": ["method.lora.target_modules=[no_such_layer]"]}}
    path = tmp_path / "leftout.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    assert sweep([f"experiment={path}", f"paths.results={results}"]) == 1
    runs = records.read(results, "runs")
    failed = runs[runs.status == "failed"]
    assert sorted(failed.strategy) == ["baseline", "dvar"]
    damaged = next(f for f in (results / "runs").rglob("*.parquet") if "textual_inversion" in str(f)
                   and "strategy=baseline" in str(f))
    damaged.write_bytes(damaged.read_bytes()[:40])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = completed_runs(results, "leftout")
    assert list(kept.strategy) == ["dvar"]
    said = "\n".join(str(w.message) for w in caught)
    assert "2 runs failed and are left out" in said and "no_such_layer" in said
    assert "1 runs are damaged and are left out" in said and str(damaged) in said

    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "experiment=leftout", f"results={results}",
                           f"out={out}"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.md").read_text()
    assert "## Runs left out" in report
    for rid in failed.run_id:
        assert re.search(rf"failed.*`{rid}`.*no_such_layer", report), rid
    assert re.search(rf"damaged.*`{damaged.stem}`.*unreadable", report)
    for table in ("table1.md", "table3.md"):
        note = (out / table).read_text()
        assert "left out: 2 failed runs (DreamBooth-LoRA / Baseline, DreamBooth-LoRA / DVAR), 1 damaged run " \
               "(Textual Inversion / Baseline)" in note, note
    assert "left out: 2 failed runs" in (out / "table1.tex").read_text()
    listed = pd.read_csv(out / "left_out.csv")
    assert sorted(zip(listed.reason, listed.run_id)) == sorted(
        [("damaged", damaged.stem), *(("failed", rid) for rid in failed.run_id)])
