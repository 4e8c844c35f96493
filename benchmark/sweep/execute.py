"""Execute a planned sweep: on this machine phase by phase (the derived Few-iters once their CLIP-s
runs are done), or on Slurm as job arrays. Returns what the report shows."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from benchmark.protocol.experiments import Job
from benchmark.protocol.strategies import derivation_sources
from benchmark.sweep import slurm
from benchmark.sweep.files import (
    read_submissions,
    record_derivation,
    record_submissions,
    write_plan,
)
from benchmark.sweep.local import run_trajectories
from benchmark.sweep.plan import (
    SLURM_STATES,
    Request,
    Sweep,
    analysis_grid,
    replan,
    settled_trajectories,
    slurm_states,
    trajectories,
    waiting_trajectories,
)

RERUN = ("failed", "damaged", "cancelled")  # what --rerun-failed runs again
DEFAULT_TIMEOUT_MIN = 180  # launcher.timeout_min=auto without a timing profile for the model


@dataclass
class Outcome:
    final: Sweep | None  # the sweep as it stands afterwards, for the report; None: nothing to report
    failed: bool


def execute(sweep: Sweep, request: Request, time_limit_min: int | None) -> Outcome:
    """Record the plan (unless --dry-run), then run or submit every run that is not done.
    `time_limit_min`: the preflight's time limit for launcher.timeout_min=auto."""
    if sweep.launcher.get("timeout_min") in (None, "auto"):
        sweep = dataclasses.replace(sweep, launcher={**sweep.launcher,
                                                     "timeout_min": time_limit_min or DEFAULT_TIMEOUT_MIN})
    if not request.dry_run:
        record_derivation(sweep.results, sweep.name, sweep.derived)
        write_plan(sweep.results, sweep.name, analysis_grid(sweep, request))
    if sweep.launcher.get("name") == "slurm":
        return run_slurm(sweep, request)
    return run_local(sweep, request)


def to_run(jobs: list[Job], states: list[str], rerun_failed: bool) -> list[Job]:
    return [j for j, s in zip(jobs, states) if s == "pending" or (s in RERUN and rerun_failed)]


def run_local(sweep: Sweep, request: Request) -> Outcome:
    # the engine imports torch: kept out of the sweep's status, preflight and Slurm submission
    from benchmark.engine.snapshots import release_snapshots

    failures, tried = [], set()  # phase 2 runs the derived Few-iters, not again what failed in phase 1
    now = sweep
    for phase in (1, 2):
        todo = [j for j in to_run(now.jobs, now.states, request.rerun_failed) if j.name not in tried]
        tried |= {j.name for j in todo}
        if phase == 2 and not todo:
            break
        print(f"phase {phase}: {len(todo)} runs to do, {now.states.count('done')} done already")
        if request.dry_run:
            for j in todo:
                print(f"  {j.name}  ({j.run_id})")
            return Outcome(final=None, failed=False)
        waiting = waiting_trajectories(now.jobs)
        share = now.launcher.get("share_trajectories", True)
        # True: derived Few-iters will branch from the trajectory (its snapshots are held for them);
        # None: leave a hold of an earlier phase as it is (released below once its branches are done)
        groups = [([j.cfg for j in group], True if share and group[0].trajectory in waiting else None)
                  for group in (trajectories(todo, now.experiment.get("runs_per_job")) if share else
                                [[j] for j in todo if j.cfg is not None])]
        print(f"  as {len(groups)} " + ("trajectories, each trained once for the runs that share it" if share else
                                        "standalone runs (launcher.share_trajectories=false)"))
        done = run_trajectories(groups, workers=now.launcher.get("workers", 1))
        failures += [(cfgs, err) for cfgs, err in done if err]
        now = replan(now)
        if now.derived:
            path = record_derivation(now.results, now.name, now.derived)
            print("Few-iters steps derived from CLIP-s: " + ", ".join(
                f"{m} mean {d['mean']} max {d['max']}" for m, d in now.derived.items()) + f" (recorded in {path})")
            write_plan(now.results, now.name, analysis_grid(now, request))
    for cfg in settled_trajectories(now.jobs, now.states):  # no derived run is left to branch from its snapshots
        release_snapshots(cfg)
    # earlier failures leave the experiment incomplete too
    return Outcome(final=now, failed=bool(failures) or "failed" in now.states)


def run_slurm(sweep: Sweep, request: Request) -> Outcome:
    jobs, states = sweep.jobs, sweep.states
    ready = [j for j in to_run(jobs, states, request.rerun_failed) if j.cfg is not None]
    sources = derivation_sources()  # the strategies derived budgets come from (CLIP-s for Few-iters)
    clip_s_busy = {j.run_id for j, s in zip(jobs, states) if j.strategy in sources and s in ("running", "queued", "requeued")}
    deferred = [j for j, s in zip(jobs, states) if s == "waiting"]
    later = [j for j in deferred if set(j.clip_s_ids) & clip_s_busy]
    deferred = [j for j in deferred if j not in later]
    print(f"submitting {len(ready)} runs" + (f" and {len(deferred)} Few-iters runs after them" if deferred else "")
          + f"; {states.count('done')} done, {states.count('running') + states.count('queued')} in Slurm already")
    if later:
        print(f"{len(later)} Few-iters runs wait for CLIP-s runs of an earlier submission: submit again when they end.")
    if request.dry_run or not (ready or deferred):
        return Outcome(final=None, failed=False)
    groups = {}
    for j in deferred:  # the derived runs of one trajectory branch from it together
        groups.setdefault((j.method, j.concept, j.seed, tuple(o for o in j.overrides if not o.startswith("strategy="))),
                          []).append(j)
    share = sweep.launcher.get("share_trajectories", True)
    ready_groups = trajectories(ready, sweep.experiment.get("runs_per_job")) if share else [[j] for j in ready]
    deferred_groups = list(groups.values()) if share else [[j] for j in deferred]
    before = read_submissions(sweep.results, sweep.name)
    ids = slurm.submit(ready_groups, deferred_groups, waiting_trajectories(jobs) if share else set(), sweep.launcher,
                       sweep.results, sweep.name)
    record_submissions(sweep.results, sweep.name, ids)
    # Few-iters already queued behind CLIP-s runs that go out again (--rerun-failed) wait for the new jobs too.
    again = {j.run_id for j in ready if j.strategy in sources}
    queued = sorted({before[j.name].split("_")[0] for j, s in zip(jobs, states)
                     if j.cfg is None and s in ("queued", "requeued") and j.name in before and set(j.clip_s_ids) & again})
    if queued:
        new = sorted({ids[j.name].split("_")[0] for j in ready if j.strategy in sources})
        started = slurm.wait_also_for(queued, new)
        if waiting := [q for q in queued if q not in started]:
            print(f"queued Few-iters job arrays {', '.join(waiting)} now also wait for {', '.join(new)}")
        if started:  # its tasks whose CLIP-s runs are missing fail with a line that says so
            print(f"Few-iters job arrays {', '.join(started)} started before they could wait for {', '.join(new)}: "
                  "the runs among them whose CLIP-s runs have not finished fail; submit again with --rerun-failed "
                  "once the new CLIP-s jobs end.")
    arrays = sorted({i.split("_")[0] for i in ids.values()})
    print(f"submitted Slurm job arrays {', '.join(arrays)}; logs in "
          f"{slurm.log_folder(sweep.launcher, sweep.results, sweep.name)}")
    print(f"watch: python -m benchmark.sweep status experiment={sweep.name}")
    if not request.wait:
        return Outcome(final=None, failed=False)
    live = ("queued", "requeued", "running")
    mine = set(read_submissions(sweep.results, sweep.name).values())  # earlier submissions too
    while (now := slurm_states(mine)) and any(SLURM_STATES.get(now.get(i, ""), "") in live for i in mine):
        time.sleep(5)
    final = replan(sweep)
    return Outcome(final=final, failed="failed" in final.states)
