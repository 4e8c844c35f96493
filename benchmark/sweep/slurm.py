"""Submit a sweep to Slurm through submitit: job arrays, resources from the launcher config.

Each array task trains one trajectory for the runs that share it. On preemption or timeout
submitit requeues the task (`Checkpointable`), and the trajectory resumes from its last snapshot;
its records come out identical to an uninterrupted run. Few-iters runs whose step count derives from
CLIP-s runs of the same submission go out as a second array that starts after the first
(`afterany`), derives its step counts from the records when it starts and branches from the
trajectory's stored snapshots.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import submitit

from benchmark.core.cli_args import setup_logging
from benchmark.protocol.config import run_id
from benchmark.protocol.experiments import Composer, Job
from benchmark.store.runs import Busy
from benchmark.sweep.files import record_derivation, record_derived_run
from benchmark.sweep.plan import derived_steps, runs_table

# launcher config key → submitit AutoExecutor parameter
PARAMS = {
    "timeout_min": "timeout_min", "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb", "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "array_parallelism": "slurm_array_parallelism", "signal_delay_s": "slurm_signal_delay_s",
    "setup": "slurm_setup",
}


class SlurmRun(submitit.helpers.Checkpointable):
    """The callable each array task runs. `checkpoint` (inherited) resubmits it with the same
    payload; the trajectory finds its own snapshots on disk and continues from them."""

    def __call__(self, payload: dict) -> list[str]:
        from benchmark.engine.train import (
            run_trajectory,  # torch: on the compute node, not where the sweep submits
        )

        setup_logging()
        os.environ.setdefault("TQDM_MININTERVAL", "30")
        cfgs = payload["cfgs"]
        if cfgs is None:
            cfgs = [derive(job, payload) for job in payload["jobs"]]
        try:
            rows = run_trajectory([{**cfg, "progress": False} for cfg in cfgs], keep_snapshots=payload["keep"])
        except Busy as err:  # a duplicate submission: the owner finishes the runs
            logging.getLogger("dvar").warning("%s", err)
            return []
        return [row["run_id"] for row in rows]


def derive(job: Job, payload: dict) -> dict:
    """A Few-iters run's config, its step count derived from the finished CLIP-s runs."""
    results = Path(payload["results"])
    d = derived_steps(runs_table(results), job.clip_s_ids)
    if d is None:
        raise RuntimeError(f"{job.name}: its CLIP-s runs have not all finished, or none completed; "
                           "submit the sweep again once they have.")
    record_derivation(results, payload["experiment"], {job.method: d})
    cfg = Composer()([*job.overrides, f"strategy.steps={d[job.derive]}"], job.concept, job.seed)
    record_derived_run(results, payload["experiment"], job.name, run_id(cfg))
    return cfg


def log_folder(launcher: dict, results: Path, experiment: str) -> Path:
    """Where an experiment's Slurm logs go: a folder per job under it (submitit's %j)."""
    return Path(launcher.get("folder") or Path(results) / "slurm") / experiment


def job_log(folder: Path, job_id: str) -> Path:
    """The stderr log of one array task, as submitit names it: <folder>/<job>/<job>_0_log.err."""
    return folder / job_id / f"{job_id}_0_log.err"


def make_executor(launcher: dict, folder: Path, name: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=launcher.get("cluster"),
                                     slurm_max_num_timeout=int(launcher.get("max_num_timeout") or 0))
    params = {PARAMS[k]: v for k, v in launcher.items() if k in PARAMS and v not in (None, [], {})}
    extra = dict(launcher.get("additional_parameters") or {})
    executor.update_parameters(name=name, slurm_additional_parameters=extra, **params)
    return executor


def submit(ready: list[list[Job]], deferred: list[list[Job]], waiting: set[str], launcher: dict, results: Path,
           experiment: str) -> dict[str, str]:
    """Submit the ready trajectories as one array and the trajectories of the derived Few-iters runs
    as a dependent one; returns run name -> Slurm job id (the trajectory's task)."""
    folder = log_folder(launcher, results, experiment)
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(launcher, folder, f"dvar-{experiment}")
    payload = {"results": str(results), "experiment": experiment}
    ids: dict[str, str] = {}
    first = []
    if ready:
        first = executor.map_array(SlurmRun(), [{**payload, "cfgs": [j.cfg for j in group],
                                                 # None: a hold of an earlier submission stays as it is
                                                 "keep": True if group[0].trajectory in waiting else None}
                                                for group in ready])
        ids.update({j.name: s.job_id for group, s in zip(ready, first) for j in group})
    if deferred:
        if first:
            extra = dict(launcher.get("additional_parameters") or {})
            executor.update_parameters(slurm_additional_parameters={
                **extra, "dependency": f"afterany:{first[0].job_id.split('_')[0]}"})
        # False: these are the branches; once they are done their trajectory's snapshots may go
        second = executor.map_array(SlurmRun(), [{**payload, "cfgs": None, "jobs": group, "keep": False}
                                                 for group in deferred])
        ids.update({j.name: s.job_id for group, s in zip(deferred, second) for j in group})
    return ids


def wait_also_for(job_ids: list[str], new_ids: list[str]) -> list[str]:
    """Add `new_ids` to the `afterany` dependencies of pending jobs (scontrol update), keeping the
    ones they had: a Few-iters array must not start before resubmitted CLIP-s runs end. Returns the
    jobs that left the queue before they could be updated (Slurm started them meanwhile)."""
    started = []
    for jid in job_ids:
        out = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%E"], capture_output=True, text=True, timeout=30)
        old = re.findall(r"(\d+)(?:_[\d*\[\]-]+)?\(", out.stdout)
        deps = ":".join(dict.fromkeys([*old, *new_ids]))
        update = subprocess.run(["scontrol", "update", f"JobId={jid}", f"Dependency=afterany:{deps}"],
                                capture_output=True, text=True, timeout=30)
        if update.returncode != 0:
            still = subprocess.run(["squeue", "-h", "-j", jid, "-t", "PENDING", "-o", "%i"], capture_output=True,
                                   text=True, timeout=30)
            if still.stdout.strip():  # pending yet refused: a real error, say Slurm's words
                raise RuntimeError(f"scontrol update JobId={jid} failed: {update.stderr.strip()}")
            started.append(jid)
    return started
