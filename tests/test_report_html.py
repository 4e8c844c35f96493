"""The report: a banner wherever the configuration is not the paper's, HTML rendered from its Markdown
(tables with text left and numbers right, bullets, code, images), progress on stderr."""

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.report import departures, markdown_to_html
from benchmark.engine.evaluation import save_grid
from benchmark.protocol.experiments import expand, load_experiment
from benchmark.store import records
from benchmark.store.runs import RunPaths
from tests.helpers import PROJECT_ROOT, compose

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_report_html")]  # one worker: fixtures once

PAPER_OVERRIDES = ["model=sd15", "metrics=real"]


def experiment_runs(name: str):
    """The runs of a committed experiment as analysis sees them (one row per decided run), configs
    composed by the sweep's own expansion; no training."""
    import pandas as pd

    rows = [{"method": j.method, "strategy": j.strategy, "concept": j.concept, "model": j.cfg["model"]["name"],
             "config_json": json.dumps(j.cfg)} for j in expand(load_experiment(name), []) if j.cfg is not None]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name, expected", [
    ("smoke", ["Model `tiny`", "Step budgets", "1 concept (sample_duck_toy)", "Metric models"]),
    ("toy_table1", ["Model `toy`", "Step budgets", "4 concepts", "Metric models"]),
])
def test_small_experiments_are_flagged(name, expected):
    found = " ".join(departures(experiment_runs(name)))
    for text in expected:
        assert text in found, (text, found)


def test_the_paper_grid_is_not_flagged():
    runs = experiment_runs("table1")
    assert runs.concept.nunique() == 48 and set(runs.model) == {"sd15"}
    assert departures(runs) == []
    one_less = runs[runs.concept != runs.concept.iloc[0]]
    assert departures(one_less) == [f"47 of the paper's 48 concepts (without {runs.concept.iloc[0]})."]


def test_a_changed_budget_or_rule_is_flagged():
    runs = experiment_runs("table1")
    cfg = json.loads(runs.config_json.iloc[0])
    cfg["method"]["max_train_steps"] = 100
    cfg["strategy"]["max_steps"] = 100
    runs.loc[0, "config_json"] = json.dumps(cfg)
    dvar = runs.index[runs.strategy == "dvar"][0]
    cfg = json.loads(runs.config_json[dvar])
    cfg["strategy"]["window"] = 7
    runs.loc[dvar, "config_json"] = json.dumps(cfg)
    assert runs.method[0] == "textual_inversion"
    assert departures(runs) == ["Step budgets of 100 updates, not the paper's Textual Inversion 6100.",
                                "Stopping hyperparameters dvar.window 7, not the paper's per-method values "
                                "(`conf/method/`)."]


# --- the report end to end, from records written by the records module ------------------------------
def write_records(results: Path, experiment: str, overrides: list[str], concepts: list[str]) -> None:
    """Completed Baseline and DVAR runs of Textual Inversion with plausible traces: each run's
    config is the real composed config of `overrides`."""
    rng = np.random.default_rng(0)
    composed = {s: compose([*overrides, "method=textual_inversion", f"strategy={s}"]) for s in ("baseline", "dvar")}
    for i, (strategy, concept) in enumerate((s, c) for s in ("baseline", "dvar") for c in concepts):
        cfg = {**composed[strategy], "concept": concept}
        iterations = 40 if strategy == "baseline" else 20 + i % 7
        run_id = f"{strategy[:4]}{i:04d}"
        keys = {"experiment": experiment, "method": "textual_inversion", "strategy": strategy}
        steps = [{"run_id": run_id, "step": k, "train_loss": float(0.3 + rng.normal(0, 0.1)),
                  "grad_norm": float(1 + rng.normal(0, 0.2)), "lr": 1e-2,
                  "l_det": float(0.5 + 0.5 * np.exp(-k / 8) + rng.normal(0, 0.002)), "train_s": 0.1}
                 for k in range(iterations + 1)]
        evals = [{"run_id": run_id, "step": k, "phase": "in_loop", "train_clip_img": 0.6 + 0.2 * k / 40,
                  "val_clip_img": 0.5, "val_clip_txt": 0.25, "dino": 0.4, "div": 0.7}
                 for k in range(0, iterations + 1, 5)]
        quality = evals[-1]
        # the grid the engine saves at the reported step, a colour per run (sampling.save_images=final)
        cfg["experiment"], cfg["paths"] = experiment, {**cfg["paths"], "results": str(results)}
        tiles = [Image.new("RGB", (32, 32), (40 * (i % 6), 200 if strategy == "dvar" else 60, 30 * k)) for k in range(8)]
        save_grid(tiles, RunPaths(cfg, run_id).samples, quality["step"])
        records.write_part(results, "steps", keys, f"{run_id}.parquet", steps)
        records.write_part(results, "evals", keys, f"{run_id}.parquet", evals)
        records.write_part(results, "runs", keys, f"{run_id}.parquet", [{
            "run_id": run_id, "concept": concept, "seed": 59, "model": cfg["model"]["name"],
            "model_identity": "hand-made", "status": "completed", "iterations": iterations,
            "reported_step": quality["step"], "max_steps": 40, "stop_reason": "criterion",
            **{k: quality[k] for k in ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div")},
            "train_s": 60.0, "ldet_s": 20.0, "sampling_s": 10.0, "total_s": 90.0, "time_s": 70.0 + 20 * (strategy == "dvar"),
            "config_json": json.dumps(cfg), "git_sha": "0123456789abcdef", "git_dirty": False, "device": "cpu"}])


class Page(HTMLParser):
    """Cells with their alignment, list items, code spans, images, and the text outside tags."""

    def __init__(self):
        super().__init__()
        self.cells, self.items, self.codes, self.images, self.quotes, self.paragraphs = [], [], [], [], [], []
        self.open = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.open.append([tag, attrs, ""])
        if tag == "img":
            self.images.append(attrs)
            self.open.pop()

    def handle_endtag(self, tag):
        if not any(name == tag for name, _, _ in self.open):
            return
        while True:
            name, attrs, text = self.open.pop()
            if self.open:
                self.open[-1][2] += text
            if name == tag:
                break
        if tag == "td":
            self.cells.append((text.strip(), "right" in attrs.get("style", "")))
        elif tag in ("li", "code", "blockquote", "p"):
            {"li": self.items, "code": self.codes, "blockquote": self.quotes, "p": self.paragraphs}[tag].append(
                text.strip() if tag == "li" else text)

    def handle_data(self, data):
        if self.open:
            self.open[-1][2] += data


def report(tmp_path: Path, overrides: list[str], concepts: list[str]):
    results = tmp_path / "results"
    write_records(results, "hand", overrides, concepts)
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "experiment=hand", f"results={results}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = results / "analysis" / "hand"
    page = Page()
    page.feed((out / "report.html").read_text())
    return proc, (out / "report.md").read_text(), page, out


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    return report(tmp_path_factory.mktemp("tiny"), ["model=tiny", "metrics=tiny", "method.max_train_steps=40"],
                  ["sample_duck_toy", "sample_teapot"])


def test_progress_goes_to_stderr_and_the_result_to_stdout(tiny_report):
    proc, *_ = tiny_report
    lines = proc.stderr.splitlines()
    assert lines[0] == f"reading the runs of hand under {Path(proc.args[-1].split('=', 1)[1])}"
    assert "tables 1 and 3 from 4 completed runs (2 concepts)" in lines
    assert "panel 1/1: textual_inversion / baseline" in lines, "DVAR evaluates once: a marker on Baseline's panel"
    assert "sample grids at each strategy's reported step" in lines
    assert lines[-2] == "writing report.md and report.html" and lines[-1].startswith("done in ")
    out = proc.stdout.strip().splitlines()
    assert out[0].startswith("| Method | Strategy | Train CLIP img"), "the mini Table 1 first"
    assert out[-1].startswith("wrote ") and out[-1].endswith("report.html")


def test_a_tiny_configuration_gets_the_banner_and_no_difference_column(tiny_report):
    _, md, page, _ = tiny_report
    assert md.splitlines()[2].startswith("> **Not the paper's configuration.**")
    assert "ours − paper" not in md and "## The paper's numbers, for orientation" in md
    assert len(page.quotes) == 1 and "Not the paper's configuration." in page.quotes[0]
    assert "Model tiny, not the paper's Stable Diffusion v1.5 (model=sd15)." in page.items
    assert "Step budgets of 40 updates, not the paper's Textual Inversion 6100." in page.items
    assert "tiny" in page.codes and "model=sd15" in page.codes


def test_the_html_is_rendered_markdown(tiny_report):
    _, md, page, out = tiny_report
    # numbers right-aligned, text left: the alignment of the Markdown tables, nothing else
    cells = dict(page.cells)
    assert cells["Textual Inversion"] is False and cells["Baseline"] is False and cells["DVAR"] is False
    numeric = [text for text, right in page.cells if text[:1].isdigit() or text[:1] in "+-−"]
    assert numeric and all(right for text, right in page.cells if text in numeric and text != "-")
    assert any(item.startswith("Trend-to-noise ratio over 2 Baseline runs") for item in page.items)
    assert not any(p.lstrip().startswith("- ") or "`" in p for p in page.paragraphs), "bullets and code are rendered"
    assert not any(p.startswith("mean ± std") for p, _ in page.cells), "the note under a table is no table row"
    # report.md links the files; report.html embeds the same images
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert linked[:3] == ["figures/stop_steps.png", "figures/time_vs_quality.png",
                          next(s for s in linked if s.startswith("figures/run_textual_inversion_baseline_"))]
    assert len(linked) == 3 + 2 * 2, "figures, one dynamics panel, Baseline and DVAR grids of two concepts"
    assert all((out / s).is_file() for s in linked)
    sources = [img["src"] for img in page.images]
    assert len(sources) == len(linked) and all(s.startswith("data:image/png;base64,") for s in sources)
    for src, path in zip(sources, linked):
        assert base64.b64decode(src.split(",", 1)[1]) == (out / path).read_bytes()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium); "
                                             "the report's rendering is not checked")
def test_the_report_opens_alone_in_headless_chromium(tiny_report, tmp_path):
    """report.html copied alone (no figures folder beside it) renders every image: the DOM holds them
    as data: URIs and the screenshot shows the plots and the exact colours of the sample grids."""
    *_, out = tiny_report
    page = tmp_path / "report.html"
    shutil.copy(out / "report.html", page)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    rendered = Page()
    rendered.feed(dom.stdout)
    assert len(rendered.images) == 7 and all(img["src"].startswith("data:image/png;base64,") for img in rendered.images)
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*flags, "--window-size=1280,6000", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr
    with Image.open(shot) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert len(colours) > 500, "plots and grids, not a blank page"
    # tiles of write_records: Baseline's grid of the first concept, DVAR's of the second
    assert {(0, 60, 0), (0, 60, 210), (120, 200, 0), (120, 200, 210)} <= colours


def test_the_paper_configuration_has_no_banner_and_keeps_the_differences(tmp_path):
    from benchmark.concepts.manifest import load_manifest

    concepts = sorted(c.name for c in load_manifest().values() if c.source != "bundled")
    proc, md, page, _ = report(tmp_path, PAPER_OVERRIDES, concepts)
    assert "Not the paper's configuration" not in md and page.quotes == []
    assert "## Beside the paper" in md and "| Method | Strategy | Metric | n | ours | 95 % interval | paper | ours − paper | paper inside |" in md
    assert "tables 1 and 3 from 96 completed runs (48 concepts)" in proc.stderr


def test_markdown_html_is_escaped():
    page = markdown_to_html("# a <b>\n\n<script>x</script> `<i>`\n", title="t <x>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "<code>&lt;i&gt;</code>" in page
    assert "<title>t &lt;x&gt;</title>" in page


def test_replay_and_strided_take_their_options_as_keys(tiny_report, tmp_path):
    proc, *_ = tiny_report
    results = proc.args[-1].split("=", 1)[1]
    replay = subprocess.run([sys.executable, "-m", "analysis", "replay", "experiment=hand", f"results={results}",
                             "criterion=dvar", "window=4,6", "threshold=0.1,0.5", f"out={tmp_path}"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert replay.returncode == 0, replay.stderr
    assert "replaying dvar on 2 traces: 4 combinations" in replay.stderr.splitlines()
    table = (tmp_path / "replay_dvar.csv").read_text().splitlines()
    assert table[0].startswith("window,threshold,") and len(table) == 5
    strided = subprocess.run([sys.executable, "-m", "analysis", "strided", "experiment=hand", f"results={results}",
                              "every=1,2", "window=4", "threshold=0.5", f"out={tmp_path}"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert strided.returncode == 0, strided.stderr
    rows = (tmp_path / "strided_dvar.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2, "two traces at two strides"
