"""Submit a sweep to Slurm through submitit: job arrays, resources from the launcher config.

Each array task runs one run. On preemption or timeout submitit requeues the task
(`Checkpointable`), and the run resumes from its last checkpoint; its records come out identical
to an uninterrupted run. Few-iters runs whose step count derives from CLIP-s runs of the same
submission go out as a second array that starts after the first (`afterany`) and derives its step
count from the records when it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from benchmark.sweep.plan import Composer, Job, derived_steps, record_derivation, runs_table

# launcher config key → submitit AutoExecutor parameter
PARAMS = {
    "timeout_min": "timeout_min", "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb", "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "array_parallelism": "slurm_array_parallelism", "signal_delay_s": "slurm_signal_delay_s",
    "setup": "slurm_setup",
}


class SlurmRun(submitit.helpers.Checkpointable):
    """The callable each array task runs. `checkpoint` (inherited) resubmits it with the same
    payload; the run finds its own checkpoint on disk and continues from it."""

    def __call__(self, payload: dict) -> str:
        from benchmark.run import setup_logging
        from benchmark.train import run

        setup_logging()
        os.environ.setdefault("TQDM_MININTERVAL", "30")
        cfg = payload["cfg"]
        if cfg is None:
            job: Job = payload["job"]
            results = Path(payload["results"])
            d = derived_steps(runs_table(results), job.clip_s_ids)
            if d is None:
                raise RuntimeError(f"{job.name}: its CLIP-s runs have not all finished, or none completed; "
                                   "submit the sweep again once they have.")
            record_derivation(results, payload["experiment"], {job.method: d})
            cfg = Composer()([*job.overrides, f"strategy.steps={d[job.derive]}"], job.concept, job.seed)
        return run({**cfg, "progress": False})["run_id"]


def make_executor(launcher: dict, folder: Path, name: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=launcher.get("cluster"),
                                     slurm_max_num_timeout=int(launcher.get("max_num_timeout") or 0))
    params = {PARAMS[k]: v for k, v in launcher.items() if k in PARAMS and v not in (None, [], {})}
    extra = dict(launcher.get("additional_parameters") or {})
    executor.update_parameters(name=name, slurm_additional_parameters=extra, **params)
    return executor


def submit(ready: list[Job], deferred: list[Job], launcher: dict, results: Path, experiment: str) -> dict[str, str]:
    """Submit the ready runs as one array and the deferred Few-iters runs as a dependent one;
    returns job name → Slurm job id."""
    folder = Path(launcher.get("folder") or results / "slurm") / experiment
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(launcher, folder, f"dvar-{experiment}")
    payload = {"results": str(results), "experiment": experiment}
    ids: dict[str, str] = {}
    first = []
    if ready:
        first = executor.map_array(SlurmRun(), [{**payload, "cfg": j.cfg, "job": j} for j in ready])
        ids.update({j.name: s.job_id for j, s in zip(ready, first)})
    if deferred:
        if first:
            extra = dict(launcher.get("additional_parameters") or {})
            executor.update_parameters(slurm_additional_parameters={
                **extra, "dependency": f"afterany:{first[0].job_id.split('_')[0]}"})
        second = executor.map_array(SlurmRun(), [{**payload, "cfg": None, "job": j} for j in deferred])
        ids.update({j.name: s.job_id for j, s in zip(deferred, second)})
    return ids
