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

import pandas as pd
import psutil
import pytest
import yaml

from benchmark.engine.snapshots import trajectory_dir
from benchmark.engine.train import run, run_trajectory
from benchmark.protocol.config import run_id
from benchmark.store import records
from benchmark.store.runs import Busy, held, owning
from benchmark.sweep.cli import main as sweep
from tests.helpers import PROJECT_ROOT, TINY, compose, tiny_run_config, without_timing

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
    with owning([cfg]):  # as if another launch were finishing this run right now
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


def test_each_run_has_its_own_lock(tmp_path):
    """Jobs of one trajectory hold different runs, so neither refuses the other; a job that meets a
    run held elsewhere names that run and its owner, and runs nothing."""
    results = tmp_path / "results"
    clip_s, dvar = (tiny_run_config("textual_inversion", s, results) for s in ("clip_s", "dvar"))
    with owning([dvar]):
        with pytest.raises(Busy, match=f"run {run_id(dvar)} .*pid {os.getpid()}"):
            run_trajectory([clip_s, dvar], share_models=True)
        assert not (results / "runs").exists()
        assert held(dvar)["pid"] == os.getpid() and held(clip_s) is None
        run_trajectory([clip_s], share_models=True)  # another run of the same trajectory, meanwhile
    assert records.read(results, "runs").run_id.tolist() == [run_id(clip_s)]


SPLIT = [*TINY, "method.max_train_steps=16", "checkpoint_every=2", "method.protocol.baseline.eval_every=8",
         "method.protocol.clip_s.eval_every=2", "method.protocol.clip_s.patience=3", "method.protocol.clip_s.eps=0.0",
         "method.protocol.dvar.window=10", "method.protocol.dvar.threshold=1e-6"]


SPLIT_STRATEGIES = ["baseline", "clip_s", "dvar"]


@pytest.fixture(scope="module")
def standalone_split(tmp_path_factory) -> Path:
    """The records of the split experiment's runs, each run on its own, with the torch threads of
    one of two sweep workers (a CPU's sums depend on how many threads share them, in the last bit)."""
    import torch

    clean = tmp_path_factory.mktemp("standalone")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        for strategy in SPLIT_STRATEGIES:
            run(compose([*SPLIT, "experiment=split", "method=textual_inversion", f"strategy={strategy}",
                         f"paths.results={clean}"]), share_models=True)
    finally:
        torch.set_num_threads(threads)
    return clean


@pytest.mark.parametrize("split,launcher", [({"runs_per_job": 2}, []), ({}, ["launcher.share_trajectories=false"])])
def test_jobs_of_one_trajectory_run_at_once_and_resume_from_their_own_snapshots(tmp_path, split, launcher,
                                                                                  standalone_split):
    """A trajectory split into jobs (an experiment's runs_per_job, or one job per run) that two
    workers run at once: no job refuses another, each keeps its own snapshots, and a sweep SIGKILLed
    while both train resumes every run to the records of its standalone run."""
    exp = {"overrides": SPLIT, "grid": {"method": ["textual_inversion"], "strategy": SPLIT_STRATEGIES,
                                        "concept": ["sample_duck_toy"], "seed": [59]}, **split}
    path = tmp_path / "split.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    clean, killed = standalone_split, tmp_path / "killed"
    cmd = [sys.executable, "-m", "benchmark.sweep", f"experiment={path}", f"paths.results={killed}",
           "launcher.workers=2", *launcher]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, jobs = time.time() + 240, set()
    while time.time() < deadline and proc.poll() is None and len(jobs) < 2:
        jobs = {f.name.split(".")[1] for f in killed.glob("work/*/trajectories/*/snapshots/step*.meta.pt")}
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(jobs) == 2, "both jobs of the trajectory trained at once, each with snapshots of its own"
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "3 done" in done.stdout and "being worked on" not in done.stderr, done.stdout + done.stderr
    for table in ("steps", "evals"):
        a, b = (without_timing(records.read(r, table)).sort_values(["run_id", "step"], kind="stable")
                .reset_index(drop=True) for r in (clean, killed))
        pd.testing.assert_frame_equal(a, b, obj=table)
    assert not list(killed.glob("work/*/trajectories/*/snapshots/*")), "snapshots removed once every run is done"


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


def is_worker(process):
    """A sweep worker; a child that already exited (the preflight's, a zombie until reaped) is not."""
    try:
        return "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:
        return False


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
        workers = [w for w in psutil.Process(sweep_proc.pid).children(recursive=True) if is_worker(w)]
        time.sleep(0.2)
    assert len(workers) == 2, "the sweep started two workers"
    time.sleep(3)  # the workers are training
    sweep_proc.send_signal(signal.SIGKILL)
    sweep_proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers outlived their sweep: {alive}"


def test_a_model_that_no_longer_loads_fails_each_run_with_its_traceback(tmp_path):
    """The model folder became unloadable after the preflight: setup fails after the inputs were
    checked, so every run of the trajectory gets a failed row and the traceback in its log.txt."""
    from benchmark.core.errors import ConfigError
    from benchmark.store.runs import RunPaths
    from tests.test_preflight import toy_copy

    weights = toy_copy(tmp_path)
    (weights / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    results = tmp_path / "results"
    cfgs = [tiny_run_config("textual_inversion", s, results, f"model.pretrained={weights / 'pipeline'}", *extra)
            for s, extra in (("clip_s", []), ("dvar", DVAR))]
    with pytest.raises(ConfigError, match="diffusion_pytorch_model.safetensors"):
        run_trajectory(cfgs, share_models=True)
    runs = records.read(results, "runs")
    assert sorted(runs.strategy) == ["clip_s", "dvar"] and (runs.status == "failed").all()
    assert runs.error.str.contains("unet/diffusion_pytorch_model.safetensors").all()
    for cfg in cfgs:
        log = RunPaths(cfg).log.read_text()
        assert "Traceback" in log and "diffusion_pytorch_model.safetensors" in log


def test_a_setup_failure_in_a_local_sweep_is_failed_and_not_retried_by_its_second_phase(tmp_path, capsys):
    """A trajectory whose setup fails (a placeholder the tokenizer already knows: found only once the
    model is loaded) leaves failed rows with their tracebacks; phase 2 of the same sweep does not run
    it again, and --rerun-failed runs it once more."""
    exp = {"overrides": [*TINY, "method.max_train_steps=10", "method.protocol.clip_s.eval_every=2",
                         "method.protocol.clip_s.patience=0", "method.protocol.dvar.window=3",
                         "method.placeholder_token=photo"],
           "grid": {"method": ["textual_inversion"], "strategy": ["clip_s", "few_iters_mean", "dvar"],
                    "concept": ["sample_duck_toy"], "seed": [59]}}
    path = tmp_path / "setup.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    results = tmp_path / "results"
    args = [f"experiment={path}", f"paths.results={results}"]
    assert sweep(args) == 1
    out = capsys.readouterr().out
    assert "phase 2" not in out, "the failed trajectory was not run again"
    assert "3 runs - 2 failed, 1 waiting" in out and "already a word of the tokenizer" in out
    runs = records.read(results, "runs")
    assert sorted(runs.strategy) == ["clip_s", "dvar"] and (runs.status == "failed").all()
    logs = [next(results.glob(f"work/*/{rid}/log.txt")) for rid in runs.run_id]
    assert all(log.read_text().count("Traceback") == 1 for log in logs)
    assert sweep(["status", *args]) == 0 and "2 failed" in capsys.readouterr().out
    assert sweep([*args, "--rerun-failed"]) == 1
    assert all(log.read_text().count("Traceback") == 2 for log in logs), "--rerun-failed ran it once, phase 2 not again"
