"""A run killed with SIGKILL mid-training and launched again ends with the records of an
uninterrupted run: same stop step, same L_det values, same metrics."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.engine.train import run
from benchmark.store import records
from tests.helpers import (
    PROJECT_ROOT,
    SMALL_METHOD,
    TINY,
    compose,
    tiny_run_config,
    without_timing,
)

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = pytest.mark.slow

RUN_KEYS = ["iterations", "reported_step", "stop_reason", "train_clip_img", "train_clip_txt", "val_clip_img",
            "val_clip_txt", "dino", "div"]


def command(results: Path, method: str, strategy: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "benchmark.run", *TINY, f"method={method}", f"strategy={strategy}",
            f"paths.results={results}", "checkpoint_every=3", *SMALL_METHOD.get(method, []), *extra]


def kill_after_a_checkpoint(cmd: list[str], results: Path, min_step: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    step = -1
    while time.time() < deadline and proc.poll() is None:
        for f in results.glob("work/*/trajectories/*/snapshots/step*.meta.pt"):
            try:
                step = torch.load(f, weights_only=False)["step"]
            except Exception:
                continue
        if step >= min_step:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step >= min_step, "the run was killed after a checkpoint and before it finished"
    return step


def table(results: Path, name: str) -> pd.DataFrame:
    return without_timing(records.read(results, name))


def check_same(a: Path, b: Path) -> None:
    for name in ("steps", "evals"):
        pd.testing.assert_frame_equal(table(a, name), table(b, name))
    ra, rb = records.read(a, "runs").iloc[0], records.read(b, "runs").iloc[0]
    assert ra.run_id == rb.run_id
    assert ra[RUN_KEYS].tolist() == rb[RUN_KEYS].tolist()


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    for i, (method, strategy, extra) in enumerate([
        ("dreambooth_lora", "dvar", ["strategy.max_steps=40", "strategy.window=12", "strategy.threshold=0.3"]),
        ("textual_inversion", "clip_s", ["strategy.max_steps=16", "strategy.eval_every=2", "strategy.patience=3",
                                        "strategy.eps=0.0"]),
        # fp16: half frozen weights, autocast, and a GradScaler whose state the snapshot carries
        ("dreambooth_lora", "dvar", ["strategy.max_steps=40", "strategy.window=12", "strategy.threshold=0.3",
                                     "mixed_precision=fp16"]),
    ]):
        base = tmp_path / f"{i}-{method}"
        run(tiny_run_config(method, strategy, base / "clean", "checkpoint_every=3", *extra), share_models=True)
        step = kill_after_a_checkpoint(command(base / "killed", method, strategy, extra), base / "killed", 6)
        stopped = records.read(base / "clean", "runs").iloc[0].iterations
        assert step < stopped, f"{method}: killed at checkpoint {step}, before the stop at {stopped}"
        assert not (base / "killed" / "runs").exists()
        subprocess.run(command(base / "killed", method, strategy, extra), cwd=PROJECT_ROOT, check=True,
                       capture_output=True)
        check_same(base / "clean", base / "killed")
        assert not list((base / "killed").glob("work/*/trajectories/*")), "the snapshots are removed once done"


def test_a_relaunch_removes_the_leftovers_of_a_killed_weights_write(tmp_path):
    """A SIGKILL while weights are written leaves a temporary file in the run's weights folder: the
    safetensors library's own empty `.tmpXXXXXX` (how weights were written before) or the writer's
    `.<file>.<random>.tmp`. The relaunch removes both and writes the weights."""
    results = tmp_path / "killed"
    cmd = command(results, "textual_inversion", "dvar", ["strategy.max_steps=40", "strategy.window=12",
                                                          "strategy.threshold=0.3"])
    kill_after_a_checkpoint(cmd, results, 3)
    folder = next(results.glob("work/default/*/config.json")).parent
    leftovers = [folder / "weights" / "final" / ".tmpQx3Zk1",
                 folder / "weights" / "best" / ".learned_embeds.safetensors.5f0c2e9a.tmp"]
    for f in leftovers:  # what the killed write left
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True)
    assert not [f for f in leftovers if f.exists()]
    assert (folder / "weights" / "final" / "learned_embeds.safetensors").stat().st_size > 0


def test_a_killed_shared_trajectory_resumes_to_the_records_of_standalone_runs(tmp_path):
    """Baseline, CLIP-s and DVAR of one concept trained as one trajectory by a sweep, SIGKILLed after a
    snapshot, launched again: every run's records equal its uninterrupted standalone run's."""
    import yaml

    strategies = {"baseline": [], "clip_s": [], "dvar": []}
    overrides = [*TINY, "method.max_train_steps=14", "method.protocol.baseline.eval_every=4",
                 "method.protocol.clip_s.eval_every=2", "method.protocol.clip_s.patience=2",
                 "method.protocol.clip_s.eps=0.0", "method.protocol.dvar.window=4", "method.protocol.dvar.threshold=0.5",
                 "checkpoint_every=3"]
    exp = tmp_path / "shared.yaml"
    exp.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(
        {"overrides": overrides, "grid": {"method": ["textual_inversion"], "strategy": list(strategies),
                                          "concept": ["sample_duck_toy"], "seed": [59]}}))
    clean = tmp_path / "clean"
    for strategy in strategies:
        run(compose([*overrides, "experiment=shared", "method=textual_inversion", f"strategy={strategy}",
                     f"paths.results={clean}"]), share_models=True)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "benchmark.sweep", f"experiment={exp}", f"paths.results={killed}"]
    kill_after_a_checkpoint(cmd, killed, 6)
    assert len(records.read(killed, "runs")) < 3, "killed before every run finished"
    subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True)
    for name in ("steps", "evals"):
        pd.testing.assert_frame_equal(table(clean, name).sort_values(["run_id", "step"], kind="stable").reset_index(drop=True),
                                      table(killed, name).sort_values(["run_id", "step"], kind="stable").reset_index(drop=True))
    a, b = (records.read(r, "runs").sort_values("run_id").reset_index(drop=True) for r in (clean, killed))
    assert a.run_id.tolist() == b.run_id.tolist() and a[RUN_KEYS].equals(b[RUN_KEYS])
