"""Report a sweep: each run's state per method x strategy, failures with their logs, damaged runs with
what is wrong, and how many Few-iters runs still wait for their CLIP-s runs."""

from __future__ import annotations

from collections import Counter

from benchmark.store.runs import read_row
from benchmark.sweep.files import read_submissions
from benchmark.sweep.live import print_running
from benchmark.sweep.plan import STATES, Sweep
from benchmark.sweep.slurm import job_log, log_folder


def report(sweep: Sweep) -> None:
    jobs, states, results = sweep.jobs, sweep.states, sweep.results
    counts = Counter(states)
    shown = [s for s in STATES if counts[s] or s in ("done", "failed", "running", "pending")]
    print(f"experiment {sweep.name}: {len(jobs)} runs - " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]))
    print(f"{'method':<20}{'strategy':<17}" + "".join(f"{s:>10}" for s in shown))
    table = Counter((j.method, j.strategy, s) for j, s in zip(jobs, states))
    for method, strategy in dict.fromkeys((j.method, j.strategy) for j in jobs):
        print(f"{method:<20}{strategy:<17}" + "".join(f"{table[(method, strategy, s)]:>10}" for s in shown))
    submitted = read_submissions(results, sweep.name)
    failed = [j for j, s in zip(jobs, states) if s in ("failed", "cancelled")]
    if failed:
        print("\nfailed or cancelled runs (rerun with --rerun-failed):")
        for j in failed:
            row = read_row(j.cfg)
            error = row["error"] if row and row.get("error") else "no failure recorded by the run (Slurm ended the job)"
            print(f"  {j.name} (run {j.run_id}): {error}")
            print(f"    log: {results / 'work' / sweep.name / j.run_id / 'log.txt'}")
            if j.name in submitted:
                log = job_log(log_folder(sweep.launcher, results, sweep.name), submitted[j.name])
                print(f"    slurm log: {log} (job {submitted[j.name]})")
    damaged = [j for j, s in zip(jobs, states) if s == "damaged"]
    if damaged:
        print("\ndamaged runs: completed, but their records cannot be read in full (rerun with --rerun-failed; the "
              "damaged files are moved to <results>/replaced/ first):")
        for j in damaged:
            print(f"  {j.name} (run {j.run_id}):")
            for problem in sweep.damage.get(j.name, []):
                print(f"    {problem}")
    waiting = sum(s == "waiting" for s in states)
    if waiting:
        print(f"\n{waiting} Few-iters runs wait for this sweep's CLIP-s runs (their step counts derive from them).")
    print_running(jobs, states)
