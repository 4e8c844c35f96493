"""What the flushed records say about the trajectories being trained, for `sweep status`: each one's
current step and which of its runs have stopped. Running runs write their steps every
`records.flush_every` updates, so the step shown is at most that far behind. Reads part names
and runs rows only: no torch, nothing written.
"""

from __future__ import annotations

from benchmark.protocol.experiments import Job
from benchmark.store import records
from benchmark.store.runs import RunPaths, read_row


def last_flushed_step(cfg: dict) -> int | None:
    parts = RunPaths(cfg).parts("steps")
    return max(records.part_range(p)[1] for p in parts) if parts else None


def running_trajectories(jobs: list[Job], states: list[str]) -> list[dict]:
    """Per trajectory with a running run: the jobs' method, concept, seed, the trajectory id, its
    step (the latest any of its runs flushed), and per run (strategy, run id, what it is doing)."""
    groups: dict[str, list[tuple[Job, str]]] = {}
    for job, state in zip(jobs, states):
        if job.cfg is not None:
            groups.setdefault(job.trajectory, []).append((job, state))
    out = []
    for tid, members in groups.items():
        if not any(state == "running" for _, state in members):
            continue
        runs, step = [], None
        for job, state in members:
            last = last_flushed_step(job.cfg)
            if state == "running":
                step = last if step is None or (last is not None and last > step) else step
                doing = f"running, step {last}" if last is not None else "running, no step flushed yet"
            elif state == "done":
                row = read_row(job.cfg)
                doing = f"stopped at step {row['iterations']} ({row['stop_reason']})"
            else:
                doing = state
            runs.append((job.strategy, job.run_id, doing))
        first = members[0][0]
        out.append({"method": first.method, "concept": first.concept, "seed": first.seed, "trajectory": tid,
                    "step": step, "runs": runs})
    return out


def print_running(jobs: list[Job], states: list[str]) -> None:
    running = running_trajectories(jobs, states)
    if not running:
        return
    print("\nrunning trajectories (as of their last records flush, every records.flush_every updates):")
    for t in running:
        step = "no step flushed yet" if t["step"] is None else f"step {t['step']}"
        print(f"  {t['method']} {t['concept']} seed {t['seed']} (trajectory {t['trajectory']}): {step}")
        for strategy, rid, doing in t["runs"]:
            print(f"    {strategy:<17}run {rid}  {doing}")
