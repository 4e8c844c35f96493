"""The plan: what a command line asks for, read against the disk, as the sweep's jobs and their
statuses. `plan` reads (the experiment, the launcher, the records, the run locks, Slurm's queue) and
writes nothing; the other stages act on what it returns. The experiment format itself:
benchmark.protocol.experiments."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from benchmark.core.cli_args import as_number
from benchmark.core.errors import ConfigError, boolean, integer, number, read_yaml
from benchmark.core.provenance import project_path
from benchmark.core.registry import did_you_mean
from benchmark.preflight.estimate import load_profile
from benchmark.protocol.config import CONF_DIR, check_groups
from benchmark.protocol.experiments import (
    Composer,
    Job,
    available_experiments,
    expand,
    load_experiment,
)
from benchmark.protocol.strategies import strategy_class
from benchmark.store import records
from benchmark.store.runs import RunPaths, held
from benchmark.sweep.files import read_submissions

STATES = ("done", "damaged", "failed", "cancelled", "running", "requeued", "queued", "pending", "waiting")


@dataclass
class Request:
    """What the command line asks of the sweep (benchmark.sweep.cli.parse)."""

    command: str
    overrides: list[str] = field(default_factory=list)  # experiment=NAME and the run config overrides, as given
    profile: Path | None = None       # launcher keys merged over the launcher config
    narrow: dict = field(default_factory=dict)  # grid key -> the values this launch keeps (None: all)
    rerun_failed: bool = False
    dry_run: bool = False
    wait: bool = False
    help: bool = False

    @property
    def experiment(self) -> str:
        names = [o.split("=", 1)[1] for o in self.overrides if o.startswith("experiment=")]
        if not names:
            raise ConfigError("name the experiment: python -m benchmark.sweep experiment=NAME (committed: "
                              + ", ".join(available_experiments()) + ").")
        return names[-1]

    @property
    def run_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.startswith("experiment=")]

    @property
    def narrowed(self) -> bool:
        return any(self.narrow.values())


@dataclass
class Sweep:
    """An experiment's runs as the disk shows them now."""

    experiment: dict
    jobs: list[Job]
    states: list[str]                 # per job, one of STATES
    damage: dict[str, list[str]]      # run name -> what is wrong with a damaged run
    derived: dict                     # method -> Few-iters steps derived from its finished CLIP-s runs
    launcher: dict
    results: Path
    data: Path
    composer: Composer

    @property
    def name(self) -> str:
        return self.experiment["name"]

    @property
    def env(self) -> dict:
        """What the preflight checks take."""
        return {"launcher": self.launcher, "results": self.results, "data": self.data}


def plan(request: Request) -> Sweep:
    check_groups(request.overrides)
    exp = load_experiment(request.experiment)
    narrow = dict(request.narrow)
    if narrow.get("seed"):
        narrow["seed"] = [as_number("seed", s, int) for s in narrow["seed"]]
    composer = Composer()
    jobs = expand(exp, request.run_overrides, narrow, composer)
    any_cfg = next((j.cfg for j in jobs if j.cfg), None) or composer(jobs[0].overrides, jobs[0].concept, jobs[0].seed)
    launcher = dict(any_cfg["launcher"])
    if request.profile:
        launcher.update(read_profile(request.profile))
    check_launcher(launcher)
    if launcher.get("timing") and request.command != "status":  # a file the launcher names, read by the preflight
        load_profile(project_path(launcher["timing"]))
    results = Path(any_cfg["paths"]["results"]).expanduser()
    check_results(results)
    derived = resolve_derived(jobs, results, composer)
    damage: dict[str, list[str]] = {}
    states = statuses(jobs, results, exp["name"], damage)
    return Sweep(exp, jobs, states, damage, derived, launcher, results,
                 Path(any_cfg["paths"]["data"]).expanduser(), composer)


def replan(sweep: Sweep) -> Sweep:
    """The same jobs as the disk shows them now: derived Few-iters decided where they can be, statuses read again."""
    derived = resolve_derived(sweep.jobs, sweep.results, sweep.composer)
    damage: dict[str, list[str]] = {}
    states = statuses(sweep.jobs, sweep.results, sweep.name, damage)
    return dataclasses.replace(sweep, states=states, damage=damage, derived={**sweep.derived, **derived})


def analysis_grid(sweep: Sweep, request: Request) -> list[Job]:
    """The runs the experiment's plan lists for analysis: the whole grid and this launch's runs, even
    when it narrowed the grid (a sweep of one method must not hide the others' runs from the tables)
    or swapped values in (concept=sample_duck_toy for an offline try of a real-concept grid)."""
    if not request.narrowed:
        return sweep.jobs
    everything = expand(sweep.experiment, request.run_overrides, None, sweep.composer)
    resolve_derived(everything, sweep.results, sweep.composer)
    ids = {j.run_id for j in everything} | {j.name for j in everything if j.cfg is None}
    return everything + [j for j in sweep.jobs if (j.run_id if j.cfg else j.name) not in ids]


# --- the launcher -------------------------------------------------------------------------------
def read_profile(path: Path) -> dict:
    """A launcher profile: launcher keys merged over conf/launcher/<launcher>.yaml."""
    if not path.is_file():
        raise ConfigError(f"profile={path}: no such file (e.g. profile=slurm/a100.yaml).")
    profile = read_yaml(path, "a launcher profile")
    if profile is None:
        return {}
    if not isinstance(profile, dict):
        raise ConfigError(f"profile={path}: holds a {type(profile).__name__}, not launcher keys (key: value lines, "
                          "as in slurm/a100.yaml).")
    known = {k for f in (CONF_DIR / "launcher").glob("*.yaml") for k in (yaml.safe_load(f.read_text()) or {})}
    unknown = sorted(set(profile) - known)
    if unknown:
        raise ConfigError(f"profile={path}: unknown launcher keys {', '.join(map(str, unknown))}."
                          + did_you_mean(str(unknown[0]), sorted(known)) + " The keys are those of conf/launcher/*.yaml.")
    return profile


def _optional(check):
    return lambda key, value: None if value is None else check(key, value)


# The launcher keys the sweep reads, with their types and ranges (the others are names, paths and
# free-form Slurm options passed on as they are).
LAUNCHER_KEYS = {
    "workers": lambda k, v: integer(k, v, 1, 256, "local runs in parallel processes"),
    "share_trajectories": boolean,
    "gpus_per_node": _optional(lambda k, v: integer(k, v, 0, 64)),
    "cpus_per_task": _optional(lambda k, v: integer(k, v, 1, 1024)),
    "mem_gb": _optional(lambda k, v: number(k, v, 0, 1_000_000, open_lo=True)),
    "timeout_min": lambda k, v: None if v in (None, "auto") else integer(k, v, 1, 525_600, "minutes, or auto"),
    "array_parallelism": lambda k, v: integer(k, v, 1, 100_000),
    "signal_delay_s": lambda k, v: integer(k, v, 0, 86_400),
    "max_num_timeout": lambda k, v: integer(k, v, 0, 1000),
}


def check_launcher(launcher: dict) -> None:
    for key, check in LAUNCHER_KEYS.items():
        if key in launcher:
            check(f"launcher.{key}", launcher[key])


def check_results(results: Path) -> None:
    """The results root is read before anything runs (status, derived steps): a file, or a folder this
    user cannot read, is refused here, naming the key."""
    try:
        exists, folder = results.exists(), results.is_dir()
    except OSError:  # below a folder this user cannot search
        exists, folder = True, False
    if exists and not folder:
        raise ConfigError(f"paths.results={results}: a file, not a folder, or below a folder this user cannot "
                          "search; give the results folder of the sweep.")
    if folder and not os.access(results, os.R_OK | os.X_OK):
        raise ConfigError(f"paths.results={results}: this user cannot read it (permission denied); give a results "
                          "folder you can read, or fix its permissions.")


# --- trajectories: which runs train together ----------------------------------------------------
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
    decided = {(j.strategy, j.method, j.concept, j.seed, tuple(j.overrides)): j for j in jobs if j.cfg}
    pairs = []
    for job in jobs:
        if job.derive:
            source = strategy_class(job.strategy).derived_from
            key = tuple(o.replace(f"strategy={job.strategy}", f"strategy={source}") for o in job.overrides)
            sibling = decided.get((source, job.method, job.concept, job.seed, key))
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


# --- derived Few-iters --------------------------------------------------------------------------
def runs_table(results: Path):
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


# --- statuses -----------------------------------------------------------------------------------
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


def statuses(jobs: list[Job], results: Path, experiment: str, details: dict | None = None) -> list[str]:
    """Per job: done | damaged (completed, records unreadable or incomplete) | failed | cancelled |
    running | requeued | queued | pending | waiting (derived steps not known yet). Read only.
    `details` (optional) receives run name -> what is wrong with a damaged run."""
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
    f = RunPaths(job.cfg).runs_file()
    problem = records.part_problem(f) if f.exists() else None
    if problem and details is not None:
        details[job.name] = [problem]
    return problem is not None
