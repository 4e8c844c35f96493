"""The sweep's view of an experiment's runs on disk: which run trains with which (jobs, one per
trajectory), which derived Few-iters can be decided, and each run's status (records, locks, Slurm).
The experiment format itself: benchmark.protocol.experiments."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from benchmark.protocol.experiments import Composer, Job
from benchmark.store.runs import write_text_atomic


def trajectories(jobs: list[Job], runs_per_job: int | None = None) -> list[list[Job]]:
    """Runs that follow the same parameter trajectory, trained together (decided jobs only), at most
    `runs_per_job` to a job: an experiment whose observers are costly on their own (many accumulated
    L_det variants) trades some repeated training for jobs that fit a cluster's time limit."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if job.cfg is not None:
            groups.setdefault(job.trajectory, []).append(job)
    size = runs_per_job or max((len(g) for g in groups.values()), default=1)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def branch_sources(jobs: list[Job]) -> list[tuple[Job, Job]]:
    """(derived Few-iters job, the CLIP-s job of the same trajectory) pairs: the trajectory a derived
    run branches from."""
    clip_s = {(j.method, j.concept, j.seed, tuple(j.overrides)): j for j in jobs if j.strategy == "clip_s" and j.cfg}
    pairs = []
    for job in jobs:
        if job.derive:
            key = tuple(o.replace(f"strategy={job.strategy}", "strategy=clip_s") for o in job.overrides)
            sibling = clip_s.get((job.method, job.concept, job.seed, key))
            if sibling is not None:
                pairs.append((job, sibling))
    return pairs


def waiting_trajectories(jobs: list[Job]) -> set[str]:
    """Trajectories that derived Few-iters runs will branch from once their CLIP-s runs are done:
    their snapshots must outlive the first pass."""
    return {clip_s.trajectory for job, clip_s in branch_sources(jobs) if job.cfg is None}


def settled_trajectories(jobs: list[Job], states: list[str]) -> list[dict]:
    """A config of each trajectory whose derived Few-iters runs are all done: no run is left to branch
    from its snapshots."""
    state = {id(j): s for j, s in zip(jobs, states)}
    sources, unsettled = {}, set()
    for job, clip_s in branch_sources(jobs):
        sources[clip_s.trajectory] = clip_s.cfg
        if state[id(job)] != "done":
            unsettled.add(clip_s.trajectory)
    return [cfg for trajectory, cfg in sources.items() if trajectory not in unsettled]


def runs_table(results: Path):
    from benchmark.store import records

    return records.read(results, "runs")


def derived_steps(runs, clip_s_ids: list[str]) -> dict | None:
    """mean (rounded) and max of the completed CLIP-s stop steps, once every one of those runs has
    finished (failed ones are left out); None before, or when none completed."""
    mine = runs[runs.run_id.isin(clip_s_ids)]
    if len(set(mine.run_id)) < len(set(clip_s_ids)):
        return None
    done = mine[mine.status == "completed"]
    if done.empty:
        return None
    steps = done.drop_duplicates("run_id").iterations.astype(int)
    return {"mean": int(round(float(np.mean(steps)))), "max": int(steps.max()), "n_clip_s_runs": int(len(steps)),
            "clip_s_steps": sorted(int(s) for s in steps)}


def resolve_derived(jobs: list[Job], results: Path, composer: Composer | None = None) -> dict:
    """Give derived Few-iters jobs their step count where their CLIP-s runs are done; returns the
    derivations (recorded by the caller)."""
    composer = composer or Composer()
    runs = runs_table(results)
    out = {}
    for job in jobs:
        if job.derive and job.cfg is None:
            d = derived_steps(runs, job.clip_s_ids)
            if d is not None:
                job.cfg = composer([*job.overrides, f"strategy.steps={d[job.derive]}"], job.concept, job.seed)
                out[job.method] = d
    return out


def record_derivation(results: Path, experiment: str, derived: dict) -> Path | None:
    if not derived:
        return None
    path = Path(results) / "work" / experiment / "few_iters_steps.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(derived)
    write_text_atomic(path, json.dumps(current, indent=1, sort_keys=True))
    return path


def write_plan(results: Path, experiment: str, jobs: list[Job]) -> Path:
    """The experiment's current plan, which analysis reads: the run ids the grid holds now (records of
    runs outside it, e.g. of an edited config, are left out of the tables and listed)."""
    from benchmark.store import records

    plan = {"run_ids": sorted(j.run_id for j in jobs if j.cfg is not None),
            "waiting": sorted(j.name for j in jobs if j.cfg is None)}
    path = records.plan_file(results, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(plan, indent=1))
    return path


def record_derived_run(results: Path, experiment: str, job_name: str, rid: str) -> None:
    from benchmark.store import records

    path = records.derived_file(results, experiment, job_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, rid)


def slurm_states(job_ids: set[str]) -> dict[str, str] | None:
    """Slurm's state of each submitted job id (array tasks as <array>_<task>): PENDING, RUNNING,
    REQUEUED (pending again after a requeue), then the accounting state once it ended (COMPLETED,
    CANCELLED, FAILED, TIMEOUT, ...). None where Slurm does not answer."""
    try:
        queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if queue.returncode != 0:
        return None
    states = {}
    for line in queue.stdout.splitlines():
        jid, state, reason = (line.strip().split("|") + ["", ""])[:3]
        # A requeued job waits as PENDING with reason BeginTime until it may start again.
        states[jid] = "REQUEUED" if state == "PENDING" and reason == "BeginTime" else state
    ended = sorted(j for j in job_ids if j not in states)
    if ended:
        try:
            acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ended)],
                                  capture_output=True, text=True, timeout=60)
            for line in acct.stdout.splitlines():  # "CANCELLED by 0": the state is the first word
                jid, state = (line.strip().split("|") + [""])[:2]
                if jid and state:
                    states.setdefault(jid, state.split()[0])
        except (OSError, subprocess.SubprocessError):
            pass
    return states


SLURM_STATES = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued",
                "RUNNING": "running", "COMPLETING": "running", "CANCELLED": "cancelled", "FAILED": "failed",
                "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "TIMEOUT": "failed", "BOOT_FAIL": "failed",
                "DEADLINE": "failed", "PREEMPTED": "requeued"}


def submissions_file(results: Path, experiment: str) -> Path:
    return Path(results) / "work" / experiment / "submitted.json"


def read_submissions(results: Path, experiment: str) -> dict[str, str]:
    """job name → Slurm job id of the latest submission of that run."""
    f = submissions_file(results, experiment)
    return json.loads(f.read_text()) if f.exists() else {}


def record_submissions(results: Path, experiment: str, new: dict[str, str]) -> None:
    f = submissions_file(results, experiment)
    f.parent.mkdir(parents=True, exist_ok=True)
    current = read_submissions(results, experiment)
    current.update(new)
    write_text_atomic(f, json.dumps(current, indent=1, sort_keys=True))


def statuses(jobs: list[Job], results: Path, experiment: str, details: dict | None = None) -> list[str]:
    """Per job: done | damaged (completed, records unreadable or incomplete) | failed | cancelled |
    running | requeued | queued | pending | waiting (derived steps not known yet). Read only.
    `details` (optional) receives run name -> what is wrong with a damaged run."""
    from benchmark.store import records
    from benchmark.store.runs import RunPaths, held

    runs = runs_table(results)
    submitted = read_submissions(results, experiment)
    slurm = slurm_states({submitted[j.name] for j in jobs if j.name in submitted}) if submitted else None
    out = []
    for job in jobs:
        jid = submitted.get(job.name)
        # A job Slurm no longer knows at all (an array task cancelled before it started leaves no
        # accounting record) ended without running: cancelled.
        in_slurm = "" if slurm is None or jid is None else SLURM_STATES.get(slurm.get(jid, "CANCELLED"), "")
        if job.cfg is None:
            out.append(in_slurm if in_slurm in ("queued", "requeued", "running") else "waiting")
            continue
        rows = runs[runs.run_id == job.run_id]
        state = "pending"
        if len(rows):
            row = rows.iloc[-1]
            state = "done" if row.status == "completed" else "failed"
            if state == "done":
                paths = RunPaths(job.cfg)
                problems = records.run_problems(results, paths.keys, job.run_id, int(row.iterations))
                if problems:
                    # An unreadable file is damaged (--rerun-failed moves it aside); parts that were deleted
                    # leave the run not done, and a relaunch runs it again.
                    state = "damaged" if records.unreadable_parts(results, paths.keys, job.run_id) else "pending"
                    if details is not None:
                        details[job.name] = problems
        elif paths_damaged(job, results, details):
            state = "damaged"
        if state != "done" and held(job.cfg) is not None:
            state = "running"
        elif state in ("pending", "failed") and in_slurm in ("queued", "requeued", "running", "cancelled", "failed"):
            state = in_slurm  # a task that ended without a runs row (out of memory, time limit, a dead node) failed
        out.append(state)
    return out


def paths_damaged(job: Job, results: Path, details: dict | None) -> bool:
    """A run without a readable runs row whose runs file exists: the file itself is damaged."""
    from benchmark.store import records
    from benchmark.store.runs import RunPaths

    f = RunPaths(job.cfg).runs_file()
    problem = records.part_problem(f) if f.exists() else None
    if problem and details is not None:
        details[job.name] = [problem]
    return problem is not None
