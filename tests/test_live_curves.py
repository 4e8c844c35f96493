"""Live curves (issue 23): a running sweep's records are flushed every `records.flush_every` updates,
its TensorBoard event files hold every step row and evaluation before it ends, `sweep status` shows
the running trajectory's step and which runs stopped; a run killed between snapshots resumes to the
records of an uninterrupted run, its curves rewritten once."""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark.store import records
from tests.helpers import PROJECT_ROOT, TINY, tiny_run_config, without_timing

pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})  # 0: keep every event
    acc.Reload()
    return acc


def curve(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (exit {proc.returncode}) too early:\n{log.read_text()[-3000:]}")
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the running job")


def steps_of(results: Path, strategy: str):
    df = records.read(results, "steps")
    return df[df.strategy == strategy].sort_values("step")


@pytest.mark.slow
def test_a_running_sweep_shows_its_curves_records_and_status(tmp_path, capsys):
    """Baseline (budget 1000, evaluated every 4 updates) and DVAR (stops within a few steps) share one
    trajectory; snapshots only at 1000, records every 2 updates. While Baseline trains: its flushed
    steps, the event files of both runs (scalars equal to the Parquet rows, the evaluation grids) and
    the status line with its step and DVAR's stop."""
    from benchmark.sweep.cli import main as sweep

    exp = tmp_path / "live.yaml"
    exp.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump({
        "overrides": [*TINY, "method.max_train_steps=1000", "method.protocol.baseline.eval_every=4",
                      "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9",
                      "checkpoint_every=1000", "records.flush_every=2", "logger=tensorboard"],
        "grid": {"method": ["textual_inversion"], "strategy": ["baseline", "dvar"], "concept": ["sample_duck_toy"],
                 "seed": [59]}}))
    results = tmp_path / "results"
    args = [f"experiment={exp}", f"paths.results={results}"]
    proc = start([sys.executable, "-m", "benchmark.sweep", *args], tmp_path / "sweep.log")
    try:
        dvar_done = lambda: len(records.read(results, "runs")) == 1  # noqa: E731
        wait_for(lambda: dvar_done() and steps_of(results, "baseline").step.max() >= 12, proc, tmp_path / "sweep.log")

        # Records: parts cut every 2 updates (no snapshot before 1000), contiguous from step 0.
        base = steps_of(results, "baseline")
        assert base.step.tolist() == list(range(len(base)))
        assert len(base) % 2 == 1, "flushed at even steps: 0..2k"
        run = records.read(results, "runs").iloc[0]
        assert run.strategy == "dvar" and run.stop_reason == "criterion" and run.iterations < 12

        # Status: the running trajectory at Baseline's flushed step, DVAR stopped.
        assert sweep(["status", *args]) == 0
        out = capsys.readouterr().out
        assert "running trajectories" in out
        step = int(re.search(r"seed 59 \(trajectory \w+\): step (\d+)", out)[1])
        assert step >= len(base) - 1 and step % 2 == 0
        assert re.search(rf"baseline\s+run \w+  running, step {step}\b", out)
        assert re.search(rf"dvar\s+run {run.run_id}  stopped at step {run.iterations} \(criterion\)", out)

        # Event files, read back while the sweep runs.
        folders = {p.name.split("-")[0]: p for p in (results / "tensorboard" / "live").glob("*/*")}
        assert set(folders) == {"baseline", "dvar"}
        dvar = events(folders["dvar"])  # finished: every row it wrote is there
        dvar_rows = steps_of(results, "dvar")
        assert curve(dvar, "steps/l_det") == pytest.approx(dict(zip(dvar_rows.step, dvar_rows.l_det)), rel=1e-6)
        assert curve(dvar, "steps/criterion").keys() == set(dvar_rows.step[dvar_rows.criterion.notna()])

        live = events(folders["baseline"])
        loss = curve(live, "steps/train_loss")
        assert list(loss) == sorted(loss) and len(loss) >= 12, "one point per update, in order"
        base = steps_of(results, "baseline").set_index("step")
        shared = sorted(set(loss) & set(base.index))
        assert len(shared) >= 12
        assert [loss[s] for s in shared] == pytest.approx(base.train_loss[shared].tolist(), rel=1e-6)
        assert {"steps/grad_norm", "steps/lr", "steps/wall_s"} <= set(live.Tags()["scalars"])
        assert "steps/l_det" not in live.Tags()["scalars"], "Baseline does not watch L_det (ldet.log=watched)"

        evals = records.read(results, "evals")
        evals = evals[evals.strategy == "baseline"].set_index("step")
        clip = curve(live, "evals/train_clip_img")
        assert set(clip) & set(evals.index) and all(s % 4 == 0 for s in clip)
        assert [clip[s] for s in evals.index if s in clip] == pytest.approx(
            [evals.train_clip_img[s] for s in evals.index if s in clip], rel=1e-6)
        grids = live.Images("evals/samples")
        # Read while the sweep writes: the newest evaluation's grid may trail its scores by one write.
        grid_steps = [g.step for g in grids]
        assert grid_steps == sorted(clip)[:len(grid_steps)] and len(grid_steps) >= max(1, len(clip) - 1)
        n = int(evals.n_train_images.iloc[0] + evals.n_val_images.iloc[0])
        assert (grids[0].width, grids[0].height) == (64 * min(8, n), 64 * -(-n // 8)), "the samples, 8 to a row"
        assert proc.poll() is None, "all of this was seen while the sweep ran"
    finally:
        proc.kill()
        proc.wait()


def snapshot_step(results: Path) -> int | None:
    import torch

    steps = []
    for f in results.glob("work/*/trajectories/*/snapshots/step*.meta.pt"):
        try:
            steps.append(torch.load(f, weights_only=False)["step"])
        except Exception:  # being written
            continue
    return max(steps, default=None)


@pytest.mark.slow
def test_a_run_killed_between_snapshots_resumes_to_the_records_of_an_uninterrupted_run(tmp_path):
    """Flushed every update, a snapshot every 4: killed with parts past its latest snapshot, the run
    (Baseline, which resumes its criterion and best checkpoint, L_det logged at every step) resumes
    from the snapshot, recomputes those steps, and ends with the records of a run that was never
    interrupted (nor flushed between snapshots: the run id is the same). Its event files then hold
    each step once: the killed attempt's steps past the snapshot are hidden."""
    from benchmark.engine.train import run

    extra = ["strategy.max_steps=40", "strategy.eval_every=20", "ldet.log=always", "checkpoint_every=4"]
    live = ["records.flush_every=1", "logger=tensorboard"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "benchmark.run", *TINY, "method=textual_inversion", "strategy=baseline",
           f"paths.results={killed}", *extra, *live]
    proc = start(cmd, tmp_path / "run.log")
    try:
        def past_a_snapshot():
            snap = snapshot_step(killed)
            parts = [records.part_range(p)[1] for p in (killed / "steps").rglob("*.parquet")]
            return snap is not None and max(parts, default=-1) > snap and (snap, max(parts))
        snap, flushed = wait_for(past_a_snapshot, proc, tmp_path / "run.log")
    finally:
        proc.kill()
        proc.wait()
    assert snap < flushed < 40 and not (killed / "runs").exists()
    subprocess.run(cmd, cwd=PROJECT_ROOT, env=ENV, check=True, capture_output=True)

    clean = tmp_path / "clean"
    row = run(tiny_run_config("textual_inversion", "baseline", clean, *extra), share_models=True)
    assert row["iterations"] == 40
    for table in ("steps", "evals"):
        a, b = (without_timing(records.read(r, table)) for r in (clean, killed))
        pd.testing.assert_frame_equal(a, b)
    assert records.read(killed, "runs").run_id.tolist() == [row["run_id"]]

    folder, = (killed / "tensorboard").glob("*/*/*")
    acc = events(folder)
    steps = records.read(killed, "steps").sort_values("step")
    assert curve(acc, "steps/l_det") == pytest.approx(dict(zip(steps.step, steps.l_det)), rel=1e-6)
    assert [e.step for e in acc.Scalars("steps/train_loss")] == list(range(1, 41)), "each step once"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_logger_wandb_without_the_package_names_the_extra():
    from benchmark.core.errors import ConfigError
    from benchmark.protocol.config import validate

    cfg = tiny_run_config("textual_inversion", "dvar", Path("unused"), "logger=wandb")
    with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package: pip install 'dvar-bench\[wandb\]'"):
        validate(cfg)


def test_live_keys_leave_the_run_id_alone():
    from benchmark.protocol.config import run_id, trajectory_id

    plain = tiny_run_config("textual_inversion", "dvar", Path("r"))
    live = tiny_run_config("textual_inversion", "dvar", Path("r"), "records.flush_every=1", "logger=tensorboard")
    assert run_id(plain) == run_id(live) and trajectory_id(plain) == trajectory_id(live)


def test_scalars_are_the_rows_numbers():
    from benchmark.engine.loggers import scalars

    row = {"run_id": "a", "step": 3, "train_loss": 0.5, "grad_norm": None, "update_skipped": True, "phase": "final"}
    assert scalars("steps", row) == {"steps/train_loss": 0.5, "steps/update_skipped": 1.0}
    assert np.isnan(scalars("evals", {"div": float("nan")})["evals/div"])
