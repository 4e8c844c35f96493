"""Sweeps on a real Slurm cluster through submitit (started by slurm/start.sh; .ci/run does it).

Skipped where `sinfo` does not answer, so the rest of the suite runs anywhere.
"""

import json
import shutil
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml

from benchmark.engine.train import run
from benchmark.store import records
from benchmark.sweep.cli import main as sweep
from tests.helpers import TINY, tiny_run_config, without_timing


def slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True)
    return out.returncode == 0 and "up" in out.stdout


# One xdist group: under `make test-all` these run on one worker, one after another, and do not compete
# for the local cluster's CPUs.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm"),
              pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster (bash slurm/start.sh)")]
LAUNCHER = ["launcher=slurm", "launcher.partition=debug", "launcher.timeout_min=20", "launcher.cpus_per_task=1",
            "launcher.mem_gb=2", "launcher.gpus_per_node=null", "launcher.signal_delay_s=30"]


@pytest.fixture(autouse=True)
def quick_submitit():
    import submitit

    submitit.core.core.Job._results_timeout_s = 2  # a job that ended without a result raises in seconds


def test_sweep_on_slurm_with_the_few_iters_phase(tmp_path):
    results = tmp_path / "results"
    exp = {"overrides": [*TINY, "method.max_train_steps=8", "method.protocol.clip_s.eval_every=2",
                         "method.protocol.clip_s.patience=0", "method.protocol.clip_s.eps=0.5",
                         "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9"],
           "grid": {"method": ["textual_inversion"],
                    "strategy": ["clip_s", "few_iters_mean", "few_iters_max", "dvar"],
                    "concept": ["sample_duck_toy"], "seed": [59]}}
    path = tmp_path / "slurmini.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file> launcher=slurm\n" + yaml.safe_dump(exp))
    args = [f"experiment={path}", f"paths.results={results}", *LAUNCHER]
    assert sweep([*args, "--wait"]) == 0

    runs = records.read(results, "runs")
    assert len(runs) == 4 and (runs.status == "completed").all()
    assert runs.slurm_job_id.notna().all(), "every run ran as a Slurm job"
    clip = runs[runs.strategy == "clip_s"].iterations.iloc[0]
    assert (runs[runs.strategy.str.startswith("few_iters")].iterations == clip).all(), "derived from CLIP-s"
    steps = records.read(results, "steps")
    for row in runs.itertuples():
        assert list(steps[steps.run_id == row.run_id].sort_values("step").step) == list(range(row.iterations + 1))
    logs = list((results / "slurm" / "slurmini").rglob("*_log.out"))
    assert len(logs) == 2, "one job for the trajectory (CLIP-s, DVAR), one for its Few-iters branches"
    assert len(set(runs.slurm_job_id)) == 2
    assert sweep(args) == 0 and len(records.read(results, "runs")) == 4, "nothing left to submit"


def test_preempted_job_requeues_and_resumes(tmp_path):
    extra = ["strategy.max_steps=150", "strategy.window=100", "strategy.threshold=0.001", "checkpoint_every=10"]
    clean = run(tiny_run_config("textual_inversion", "dvar", tmp_path / "clean", *extra), share_models=True)

    exp = {"overrides": [*TINY, *extra], "grid": {"method": ["textual_inversion"], "strategy": ["dvar"],
                                                  "concept": ["sample_duck_toy"], "seed": [59]}}
    path = tmp_path / "preempt.yaml"
    path.write_text("# preemption test\n" + yaml.safe_dump(exp))
    results = tmp_path / "slurm"
    assert sweep([f"experiment={path}", f"paths.results={results}", *LAUNCHER]) == 0
    job_id = next(iter(__import__("json").loads((results / "work/preempt/submitted.json").read_text()).values()))

    deadline, step = time.time() + 180, -1
    while time.time() < deadline and step < 20:
        for f in results.glob("work/preempt/trajectories/*/snapshots/step*.meta.pt"):
            try:
                step = torch.load(f, weights_only=False)["step"]
            except Exception:
                pass
        time.sleep(0.2)
    assert step >= 20, "the job checkpointed"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what a preempting scheduler sends

    while time.time() < deadline + 240 and not (results / "runs").exists():
        time.sleep(1)
    runs = records.read(results, "runs")
    assert len(runs) == 1 and runs.status.iloc[0] == "completed"
    log = next(results.glob("work/preempt/*/log.txt")).read_text()
    assert "resumed" in log, "the requeued job continued from its checkpoint"
    for name in ("steps", "evals"):
        a = without_timing(records.read(tmp_path / "clean", name))
        b = without_timing(records.read(results, name)).drop(columns=["experiment"])
        pd.testing.assert_frame_equal(a.drop(columns=["experiment"]), b)
    assert runs.iterations.iloc[0] == clean["iterations"] and runs.run_id.iloc[0] == clean["run_id"]


def test_preflight_checks_the_partition_before_anything_is_submitted(tmp_path, capsys):
    args = ["preflight", "experiment=smoke", f"paths.results={tmp_path}", "launcher=slurm", "launcher.partition=debug",
            "launcher.gpus_per_node=1", "launcher.mem_gb=100000", "launcher.cpus_per_task=1", "launcher.timeout_min=20"]
    assert sweep(args) == 2
    err = capsys.readouterr().err
    assert "partition debug has no GPUs" in err and "launcher.mem_gb=100000 exceeds" in err
    assert sweep([*args[:-4], "launcher.gpus_per_node=null", "launcher.mem_gb=2", "launcher.cpus_per_task=1",
                  "launcher.timeout_min=20"]) == 0
    assert sweep(["preflight", "experiment=smoke", "launcher=slurm", "launcher.partition=nope"]) == 2
    assert "launcher.partition=nope: no such partition here; sinfo lists debug" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "the preflight writes nothing"


def wait_for_state(job: str, state: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.split()
        if state in out:
            return
        time.sleep(0.5)
    pytest.fail(f"job {job} never reached {state}")


def test_a_cancelled_clip_s_run_resubmitted_while_few_iters_wait(tmp_path, capsys):
    """CLIP-s of seed 59 is cancelled as soon as it is submitted, seed 60's is suspended once it runs
    (so that the Few-iters array surely waits in the queue); `--rerun-failed` resubmits the cancelled
    run: the queued Few-iters array waits for the new job too, and all of them complete."""
    results = tmp_path / "results"
    exp = {"overrides": [*TINY, "method.max_train_steps=12", "method.protocol.clip_s.eval_every=3",
                         "method.protocol.clip_s.patience=2", "method.protocol.clip_s.eps=0.5",
                         "sampling.n_val_prompts=1"],
           "grid": {"method": ["textual_inversion"], "strategy": ["clip_s", "few_iters_mean", "few_iters_max"],
                    "concept": ["sample_duck_toy"], "seed": [59, 60]}}
    path = tmp_path / "resub.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file> launcher=slurm\n" + yaml.safe_dump(exp))
    args = [f"experiment={path}", f"paths.results={results}", *LAUNCHER]
    assert sweep(args) == 0
    submitted = json.loads((results / "work" / "resub" / "submitted.json").read_text())
    victim = submitted["textual_inversion/clip_s/sample_duck_toy/seed59"]
    other = submitted["textual_inversion/clip_s/sample_duck_toy/seed60"]
    subprocess.run(["scancel", victim], check=True)  # at once: it cannot have finished yet
    wait_for_state(other, "RUNNING", timeout=300)
    subprocess.run(["scontrol", "suspend", other], check=True)
    deadline, out = time.time() + 180, ""  # sacct learns of the cancel through slurmdbd: slow on a loaded machine
    while time.time() < deadline and "1 cancelled" not in out:
        capsys.readouterr()
        sweep(["status", *args])
        out = capsys.readouterr().out
        time.sleep(1)
    assert "1 cancelled" in out, f"the cancelled run never showed as cancelled; status said:\n{out}"
    few_iters = submitted["textual_inversion/few_iters_max/sample_duck_toy/seed59"]
    wait_for_state(few_iters, "PENDING")
    assert sweep([*args, "--rerun-failed"]) == 0
    assert "now also wait for" in capsys.readouterr().out
    subprocess.run(["scontrol", "resume", other], check=True)  # seed 60 goes on; the array waits for it and the new job
    mine = set(json.loads((results / "work" / "resub" / "submitted.json").read_text()).values())
    deadline = time.time() + 400
    while time.time() < deadline and in_queue(mine):
        time.sleep(2)
    runs = records.read(results, "runs")
    assert len(runs) == 6 and (runs.status == "completed").all()
    clip = runs[runs.strategy == "clip_s"].iterations
    assert (runs[runs.strategy == "few_iters_max"].iterations == clip.max()).all()


def in_queue(job_ids: set[str]) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()
    return bool(job_ids & set(out))


def test_a_few_iters_array_that_started_before_it_could_wait_is_reported(tmp_path):
    """The resubmission's dependency update races with Slurm: a job that left the queue meanwhile is
    returned (the sweep says so), not a traceback."""
    from benchmark.sweep.slurm import wait_also_for

    ended = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-c", "1", "--mem=100M", "-o", str(tmp_path / "o"),
                            "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.time() + 60
    while time.time() < deadline and in_queue({ended}):
        time.sleep(0.5)
    waiting = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-c", "1", "--mem=100M", "-o", str(tmp_path / "o"),
                              "--hold", "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert wait_also_for([ended, waiting], [ended]) == [ended]
        deps = subprocess.run(["squeue", "-h", "-j", waiting, "-o", "%E"], capture_output=True, text=True).stdout
        assert ended in deps, deps
    finally:
        subprocess.run(["scancel", waiting])


def test_a_broken_model_is_refused_before_anything_is_submitted(tmp_path, capsys):
    from tests.test_preflight import pointing_at, toy_copy

    weights = toy_copy(tmp_path)
    (weights / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    results = tmp_path / "results"
    assert sweep([*pointing_at(weights, results), *LAUNCHER]) == 2
    err = capsys.readouterr().err
    assert f"{weights / 'pipeline' / 'unet' / 'diffusion_pytorch_model.safetensors'}: missing" in err
    assert "nothing was submitted" in err
    assert not (results / "work").exists() and not (results / "slurm").exists(), "no job array went out"


def test_a_task_that_ended_without_a_record_is_failed_and_names_its_log(tmp_path, capsys):
    """A task that never wrote a runs row (its setup line fails here, as a missing module would; out
    of memory and time limits end the same way) is failed, not pending, and status names its log."""
    results = tmp_path / "results"
    exp = {"overrides": [*TINY, "method.max_train_steps=4", "method.protocol.dvar.window=3",
                         "method.protocol.dvar.threshold=0.9"],
           "grid": {"method": ["textual_inversion"], "strategy": ["dvar"], "concept": ["sample_duck_toy"], "seed": [59]}}
    path = tmp_path / "nodeless.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file> launcher=slurm\n" + yaml.safe_dump(exp))
    args = [f"experiment={path}", f"paths.results={results}", *LAUNCHER]
    assert sweep([*args, "launcher.setup=[exit 1]", "--wait"]) == 1, "the sweep says the experiment failed"
    assert not (results / "runs").exists(), "the task wrote no record"
    capsys.readouterr()
    assert sweep(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "1 runs - 1 failed" in out, out
    job = json.loads((results / "work" / "nodeless" / "submitted.json").read_text())[
        "textual_inversion/dvar/sample_duck_toy/seed59"]
    log = results / "slurm" / "nodeless" / job / f"{job}_0_log.err"
    assert f"slurm log: {log} (job {job})" in out and log.exists()


def test_array_tasks_that_split_a_trajectory_run_side_by_side(tmp_path):
    """runs_per_job splits a trajectory into array tasks that Slurm runs at once: each holds the locks
    of its own runs, so neither refuses the other and the array ends with every run done."""
    results = tmp_path / "results"
    exp = {"overrides": [*TINY, "method.max_train_steps=8", "checkpoint_every=2", "method.protocol.clip_s.eval_every=2",
                         "method.protocol.clip_s.patience=0", "method.protocol.clip_s.eps=0.5",
                         "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9"],
           "grid": {"method": ["textual_inversion"], "strategy": ["clip_s", "dvar"], "concept": ["sample_duck_toy"],
                    "seed": [59]}, "runs_per_job": 1}
    path = tmp_path / "split.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file> launcher=slurm\n" + yaml.safe_dump(exp))
    assert sweep([f"experiment={path}", f"paths.results={results}", *LAUNCHER, "--wait"]) == 0
    runs = records.read(results, "runs")
    assert len(runs) == 2 and (runs.status == "completed").all() and runs.slurm_job_id.nunique() == 2
    assert not list(results.glob("work/*/trajectories/*/snapshots/*")), "each task removed what it may remove"
