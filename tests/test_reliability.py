"""Never lose a finished run: one owner per run, records checked for damage, failures recorded,
workers that die with their sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest
import yaml

from benchmark import records
from benchmark.runs import owning
from benchmark.sweep.cli import main as sweep
from benchmark.train import run, run_trajectory, trajectory_dir
from tests.helpers import PROJECT_ROOT, TINY, tiny_run_config, without_timing

pytestmark = pytest.mark.slow
DVAR = ["strategy.max_steps=12", "strategy.window=3", "strategy.threshold=0.9"]


def launch(results: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmark.run", *TINY, "method=textual_inversion", "strategy=dvar", *DVAR,
           f"paths.results={results}", *extra]
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def stamps(results: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")}


def test_a_launch_while_another_owns_the_run_touches_nothing(tmp_path):
    results = tmp_path / "results"
    cfg = tiny_run_config("textual_inversion", "dvar", results, *DVAR)
    run(cfg, share_models=True)
    before = stamps(results)
    with owning(cfg):  # as if another launch were finishing this run right now
        proc = launch(results)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert f"busy: run {records.read(results, 'runs').run_id.iloc[0]}" in err and f"pid {os.getpid()}" in err
    assert stamps(results) == before, "the second launch read or wrote nothing"
    proc = launch(results)  # and once the owner is gone, a completed run is skipped, not reopened
    proc.communicate(timeout=120)
    assert proc.returncode == 0 and stamps(results) == before


def test_two_simultaneous_launches_give_one_set_of_records(tmp_path):
    clean, results = tmp_path / "clean", tmp_path / "results"
    run(tiny_run_config("textual_inversion", "dvar", clean, *DVAR), share_models=True)
    a, b = launch(results), launch(results)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    codes = sorted(p.returncode for p in (a, b))
    assert codes == [0, 3], outs
    assert "is being worked on by" in next(err for (_, err), p in zip(outs, (a, b)) if p.returncode == 3)
    for table in ("steps", "evals"):
        assert without_timing(records.read(clean, table)).equals(without_timing(records.read(results, table)))


def experiment(tmp_path: Path, strategies=("clip_s", "dvar")) -> Path:
    exp = {"overrides": [*TINY, "method.max_train_steps=10", "method.protocol.clip_s.eval_every=2",
                         "method.protocol.clip_s.patience=0", "method.protocol.clip_s.eps=0.5",
                         "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9"],
           "grid": {"method": ["textual_inversion"], "strategy": list(strategies), "concept": ["sample_duck_toy"],
                    "seed": [59, 60]}}
    path = tmp_path / "rel.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    return path


def test_a_damaged_part_is_reported_listed_and_repaired(tmp_path, capsys):
    results = tmp_path / "results"
    args = [f"experiment={experiment(tmp_path)}", f"paths.results={results}"]
    assert sweep(args) == 0
    part = sorted((results / "steps").rglob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])  # a truncated copy
    runs_file = sorted((results / "runs").rglob("*.parquet"))[-1]
    runs_file.write_bytes(runs_file.read_bytes()[:50])
    capsys.readouterr()
    assert sweep(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "2 done, 2 damaged" in out and str(part) in out and "unreadable" in out and "--rerun-failed" in out

    from analysis.load import completed_runs, steps_of

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = completed_runs(results, "rel")
        steps_of(results, "rel")
    assert len(runs) == 3, "the damaged runs file leaves out its run only"
    assert any(str(part) in str(w.message) for w in caught), "analysis names the damaged file instead of failing"

    assert sweep([*args, "--rerun-failed"]) == 0
    capsys.readouterr()
    sweep(["status", *args])
    assert "4 done" in capsys.readouterr().out
    assert list((results / "replaced").rglob(part.name)), "the damaged file was moved aside, not deleted"


def test_a_corrupt_snapshot_leaves_a_failed_row_and_a_log_line(tmp_path):
    results = tmp_path / "results"
    deciding = [tiny_run_config("textual_inversion", "dvar", results, "checkpoint_every=2", *DVAR)]
    run_trajectory(deciding, share_models=True, keep_snapshots=True)
    snapshots = trajectory_dir(deciding[0]) / "snapshots"
    for f in snapshots.glob("step*.pt"):
        if not f.name.endswith(".meta.pt"):
            f.write_bytes(b"garbage")
    branch = tiny_run_config("textual_inversion", "few_iters", results, "checkpoint_every=2", "strategy.steps=3")
    with pytest.raises(Exception, match="unreadable snapshot"):
        run(branch, share_models=True)
    runs = records.read(results, "runs")
    row = runs[runs.strategy == "few_iters"].iloc[0]
    assert row.status == "failed" and "unreadable snapshot" in row.error and "Delete" in row.error
    log = next((results / "work" / "default").glob(f"{row.run_id}/log.txt")).read_text()
    assert "unreadable snapshot" in log


def test_killing_a_two_worker_sweep_leaves_no_process(tmp_path):
    exp = experiment(tmp_path, strategies=("dvar",))
    text = exp.read_text().replace("seed: [59, 60]", "seed: [59, 60, 61, 62, 63, 64]").replace(
        "method.max_train_steps=10", "method.max_train_steps=400")
    exp.write_text(text.replace("method.protocol.dvar.threshold=0.9", "method.protocol.dvar.threshold=0.01"))
    cmd = [sys.executable, "-m", "benchmark.sweep", f"experiment={exp}", f"paths.results={tmp_path / 'r'}",
           "launcher.workers=2"]
    sweep_proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2:
        workers = psutil.Process(sweep_proc.pid).children(recursive=True)
        workers = [w for w in workers if "spawn_main" in " ".join(w.cmdline())]
        time.sleep(0.2)
    assert len(workers) == 2, "the sweep started two workers"
    time.sleep(3)  # the workers are training
    sweep_proc.send_signal(signal.SIGKILL)
    sweep_proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers outlived their sweep: {alive}"
