"""`python -m benchmark.sweep [run|status|preflight|list] experiment=NAME [key=value ...] [--switch ...]`:
run an experiment's grid, locally or on Slurm, and watch it (`--help` explains every key)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from benchmark.cli_args import Spec, UsageError, as_list, as_number, fail
from benchmark.cli_args import parse as parse_args
from benchmark.errors import ConfigError
from benchmark.sweep.plan import (GRID_KEYS, Composer, Job, available_experiments, expand, load_experiment,
                                  read_submissions, record_derivation, record_submissions, resolve_derived,
                                  statuses, trajectories, waiting_trajectories, write_plan)

log = logging.getLogger("dvar")
STATES = ("done", "damaged", "failed", "cancelled", "running", "requeued", "queued", "pending", "waiting")
RERUN = ("failed", "damaged", "cancelled")  # what --rerun-failed runs again
DEFAULT_TIMEOUT_MIN = 180  # launcher.timeout_min=auto without a timing profile for the model

PROG = "python -m benchmark.sweep"
COMMANDS = ("run", "status", "preflight", "list")
_NARROW = {"methods": "method", "strategies": "strategy", "concepts": "concept", "seeds": "seed"}
_KEYS = ("experiment", "profile", *GRID_KEYS)
SPECS = {
    "run": Spec(keys=_KEYS, switches=("dry-run", "rerun-failed", "wait"), overrides=True, renamed=_NARROW),
    "status": Spec(keys=_KEYS, overrides=True, renamed=_NARROW),
    "preflight": Spec(keys=_KEYS, overrides=True, renamed=_NARROW),
    "list": Spec(),
}

HELP = f"""\
usage: {PROG} [run|status|preflight|list] experiment=NAME [key=value ...] [--switches]

Run an experiment's grid (conf/experiments/NAME.yaml), locally or on Slurm, and watch it. Completed
runs are skipped, unfinished ones resume. Before anything runs or is submitted, the preflight checks
configs, images, weights (offline), class images, the results folder and the Slurm partition, lists
every failure at once, and prices the sweep from the launcher's timing profile.

commands:
  run (default)      preflight, then run or submit every run that is not done
  status             each run's state per method x strategy, failures with their logs; writes nothing
  preflight          the checks and the cost only (same as python -m benchmark.preflight)
  list               the committed experiments and the command that runs each

keys:
  experiment=NAME    the grid: a name from `list`, or a path to a YAML file (required)
  method=A,B         only these methods of the grid; likewise strategy=, concept=, seed=
  profile=FILE       launcher keys merged over conf/launcher/<launcher>.yaml (e.g. slurm/a100.yaml)
  launcher=slurm     submit to Slurm (default: local); launcher.KEY=VALUE sets one launcher key
                     (launcher.workers=2, launcher.partition=a100, launcher.timeout_min=120 ...)
  KEY=VALUE          any other key is a run config override for every run (paths.results=DIR,
                     ldet.every=10, ...; `python -m benchmark.run --help` lists them)

switches (run only):
  --dry-run          print what would run; run and write nothing
  --rerun-failed     run failed, damaged and cancelled runs again (they resume where they can)
  --wait             Slurm: wait until every submitted job has ended, then print the status

examples:
  {PROG} experiment=smoke                  # local, offline, tiny model, ~2 min
  {PROG} experiment=table1 launcher=slurm profile=slurm/a100.yaml
  {PROG} status experiment=table1
  {PROG} experiment=table1 concept=cat,dog method=textual_inversion --dry-run
  {PROG} experiment=table1 --rerun-failed
  {PROG} list
"""


def parse(argv):
    p = parse_args(argv, PROG, SPECS, default="run")
    if p.help:
        return argparse.Namespace(help=True, command=p.command)
    o = p.options
    narrow = {key: as_list(o.get(key)) or None for key in GRID_KEYS}
    return argparse.Namespace(
        help=False, command=p.command,
        overrides=([f"experiment={o['experiment']}"] if o.get("experiment") else []) + p.overrides,
        profile=Path(o["profile"]) if o.get("profile") else None,
        methods=narrow["method"], strategies=narrow["strategy"], concepts=narrow["concept"], seeds=narrow["seed"],
        rerun_failed="rerun-failed" in p.switches, dry_run="dry-run" in p.switches, wait="wait" in p.switches)


def split_overrides(overrides: list[str]) -> tuple[str, list[str]]:
    experiments = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    if not experiments:
        raise ConfigError(f"name the experiment: {PROG} experiment=NAME (committed: "
                          + ", ".join(available_experiments()) + ").")
    return experiments[-1], [o for o in overrides if not o.startswith("experiment=")]


def whole_grid(args, exp: dict, jobs: list[Job], env: dict, composer: Composer) -> list[Job]:
    """The runs the experiment's plan lists for analysis: the whole grid and this launch's runs, even
    when it narrowed the grid (a sweep of one method must not hide the others' runs from the tables)
    or swapped values in (concept=sample_duck_toy for an offline try of a real-concept grid)."""
    if not any((args.methods, args.strategies, args.concepts, args.seeds)):
        return jobs
    everything = expand(exp, split_overrides(args.overrides)[1], None, composer)
    resolve_derived(everything, env["results"], composer)
    ids = {j.run_id for j in everything} | {j.name for j in everything if j.cfg is None}
    return everything + [j for j in jobs if (j.run_id if j.cfg else j.name) not in ids]


def plan(args) -> tuple[dict, list[Job], dict, Composer]:
    name, overrides = split_overrides(args.overrides)
    exp = load_experiment(name)
    narrow = {"method": args.methods, "strategy": args.strategies, "concept": args.concepts,
              "seed": [as_number("seed", s, int) for s in args.seeds] if args.seeds else None}
    composer = Composer()
    jobs = expand(exp, overrides, narrow, composer)
    any_cfg = next((j.cfg for j in jobs if j.cfg), None) or composer(jobs[0].overrides, jobs[0].concept, jobs[0].seed)
    launcher = dict(any_cfg["launcher"])
    if args.profile:
        if not args.profile.is_file():
            raise ConfigError(f"profile={args.profile}: no such file (e.g. profile=slurm/a100.yaml).")
        launcher.update(yaml.safe_load(args.profile.read_text()) or {})
    return exp, jobs, {"launcher": launcher, "results": Path(any_cfg["paths"]["results"]).expanduser(),
                       "data": Path(any_cfg["paths"]["data"]).expanduser()}, composer


def preflight(exp: dict, jobs: list[Job], env: dict, args) -> bool:
    """Print the preflight listing and the estimate; whether the sweep may start."""
    from benchmark.preflight.preflight import format_estimate, format_problems, run_preflight

    pf = run_preflight(jobs, env, args.overrides, exp.get("runs_per_job"))
    print("\n".join(["preflight:", *pf.lines, *format_estimate(pf, env["launcher"], args.command == "preflight")]))
    if pf.problems:
        print("error: " + "\n".join(format_problems(pf)), file=sys.stderr)
    if env["launcher"].get("timeout_min") in (None, "auto"):
        env["launcher"]["timeout_min"] = pf.time_limit_min or DEFAULT_TIMEOUT_MIN
    return pf.ok


def print_status(exp: dict, jobs: list[Job], states: list[str], results: Path, details: dict | None = None) -> None:
    counts = Counter(states)
    shown = [s for s in STATES if counts[s] or s in ("done", "failed", "running", "pending")]
    print(f"experiment {exp['name']}: {len(jobs)} runs - " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]))
    print(f"{'method':<20}{'strategy':<17}" + "".join(f"{s:>10}" for s in shown))
    table = Counter((j.method, j.strategy, s) for j, s in zip(jobs, states))
    for method, strategy in dict.fromkeys((j.method, j.strategy) for j in jobs):
        print(f"{method:<20}{strategy:<17}" + "".join(f"{table[(method, strategy, s)]:>10}" for s in shown))
    submitted = read_submissions(results, exp["name"])
    failed = [j for j, s in zip(jobs, states) if s in ("failed", "cancelled")]
    if failed:
        from benchmark.runs import read_row

        print("\nfailed or cancelled runs (rerun with --rerun-failed):")
        for j in failed:
            row = read_row(j.cfg)
            error = row["error"] if row and row.get("error") else "no failure recorded by the run (Slurm ended the job)"
            print(f"  {j.name} (run {j.run_id}): {error}")
            print(f"    log: {results / 'work' / exp['name'] / j.run_id / 'log.txt'}")
            if j.name in submitted:
                print(f"    slurm log: {results / 'slurm' / exp['name'] / submitted[j.name]}_0_log.err (job {submitted[j.name]})")
    damaged = [j for j, s in zip(jobs, states) if s == "damaged"]
    if damaged:
        print("\ndamaged runs: completed, but their records cannot be read in full (rerun with --rerun-failed; the "
              "damaged files are moved to <results>/replaced/ first):")
        for j in damaged:
            print(f"  {j.name} (run {j.run_id}):")
            for problem in (details or {}).get(j.name, []):
                print(f"    {problem}")
    waiting = sum(s == "waiting" for s in states)
    if waiting:
        print(f"\n{waiting} Few-iters runs wait for this sweep's CLIP-s runs (their step counts derive from them).")


def to_run(jobs: list[Job], states: list[str], rerun_failed: bool) -> list[Job]:
    return [j for j, s in zip(jobs, states) if s == "pending" or (s in RERUN and rerun_failed)]


def run_local(exp, jobs, env, composer, args) -> int:
    from benchmark.sweep.local import execute

    failures = []
    for phase in (1, 2):
        states = statuses(jobs, env["results"], exp["name"])
        todo = to_run(jobs, states, args.rerun_failed)
        if phase == 2 and not todo:
            break
        print(f"phase {phase}: {len(todo)} runs to do, {states.count('done')} done already")
        if args.dry_run:
            for j in todo:
                print(f"  {j.name}  ({j.run_id})")
            return 0
        waiting = waiting_trajectories(jobs)
        share = env["launcher"].get("share_trajectories", True)
        groups = [([j.cfg for j in group], share and group[0].trajectory in waiting)
                  for group in (trajectories(todo, exp.get("runs_per_job")) if share else
                                [[j] for j in todo if j.cfg is not None])]
        print(f"  as {len(groups)} " + ("trajectories, each trained once for the runs that share it" if share else
                                        "standalone runs (launcher.share_trajectories=false)"))
        done = execute(groups, workers=int(env["launcher"].get("workers") or 1))
        failures += [(cfgs, err) for cfgs, err in done if err]
        derived = resolve_derived(jobs, env["results"], composer)
        if derived:
            path = record_derivation(env["results"], exp["name"], derived)
            print("Few-iters steps derived from CLIP-s: " + ", ".join(
                f"{m} mean {d['mean']} max {d['max']}" for m, d in derived.items()) + f" (recorded in {path})")
            write_plan(env["results"], exp["name"], whole_grid(args, exp, jobs, env, composer))
    final = statuses(jobs, env["results"], exp["name"])
    print_status(exp, jobs, final, env["results"])
    return 1 if failures or "failed" in final else 0  # earlier failures leave the experiment incomplete too


def run_slurm(exp, jobs, env, args) -> int:
    from benchmark.sweep import slurm

    states = statuses(jobs, env["results"], exp["name"])
    ready = [j for j in to_run(jobs, states, args.rerun_failed) if j.cfg is not None]
    clip_s_busy = {j.run_id for j, s in zip(jobs, states) if j.strategy == "clip_s" and s in ("running", "queued", "requeued")}
    deferred = [j for j, s in zip(jobs, states) if s == "waiting"]
    later = [j for j in deferred if set(j.clip_s_ids) & clip_s_busy]
    deferred = [j for j in deferred if j not in later]
    print(f"submitting {len(ready)} runs" + (f" and {len(deferred)} Few-iters runs after them" if deferred else "")
          + f"; {states.count('done')} done, {states.count('running') + states.count('queued')} in Slurm already")
    if later:
        print(f"{len(later)} Few-iters runs wait for CLIP-s runs of an earlier submission: submit again when they end.")
    if args.dry_run or not (ready or deferred):
        return 0
    groups = {}
    for j in deferred:  # the derived runs of one trajectory branch from it together
        groups.setdefault((j.method, j.concept, j.seed, tuple(o for o in j.overrides if not o.startswith("strategy="))),
                          []).append(j)
    share = env["launcher"].get("share_trajectories", True)
    ready_groups = trajectories(ready, exp.get("runs_per_job")) if share else [[j] for j in ready]
    deferred_groups = list(groups.values()) if share else [[j] for j in deferred]
    before = read_submissions(env["results"], exp["name"])
    ids = slurm.submit(ready_groups, deferred_groups, waiting_trajectories(jobs) if share else set(), env["launcher"],
                       env["results"], exp["name"])
    record_submissions(env["results"], exp["name"], ids)
    # Few-iters already queued behind CLIP-s runs that go out again (--rerun-failed) wait for the new jobs too.
    again = {j.run_id for j in ready if j.strategy == "clip_s"}
    queued = sorted({before[j.name].split("_")[0] for j, s in zip(jobs, states)
                     if j.cfg is None and s in ("queued", "requeued") and j.name in before and set(j.clip_s_ids) & again})
    if queued:
        new = sorted({ids[j.name].split("_")[0] for j in ready if j.strategy == "clip_s"})
        slurm.wait_also_for(queued, new)
        print(f"queued Few-iters job arrays {', '.join(queued)} now also wait for {', '.join(new)}")
    arrays = sorted({i.split("_")[0] for i in ids.values()})
    print(f"submitted Slurm job arrays {', '.join(arrays)}; logs in {Path(env['launcher'].get('folder') or env['results'] / 'slurm') / exp['name']}")
    print(f"watch: python -m benchmark.sweep status experiment={exp['name']}")
    if args.wait:
        from benchmark.sweep.plan import SLURM_STATES, slurm_states

        live = ("queued", "requeued", "running")
        mine = set(read_submissions(env["results"], exp["name"]).values())  # earlier submissions too
        while (now := slurm_states(mine)) and any(SLURM_STATES.get(now.get(i, ""), "") in live for i in mine):
            time.sleep(5)
        resolve_derived(jobs, env["results"])
        states = statuses(jobs, env["results"], exp["name"])
        print_status(exp, jobs, states, env["results"])
        return 1 if "failed" in states else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmark.run import check_groups, setup_logging

    try:
        args = parse(argv)
    except UsageError as err:
        return fail(err)
    if args.help:
        print(HELP, end="")
        return 0
    setup_logging()
    try:
        if args.command == "list":
            for name in available_experiments():
                first = (Path(load_experiment(name)["path"]).read_text().splitlines() or [""])[0]
                print(f"{name:<26}{first.lstrip('# ')}")
            return 0
        check_groups(args.overrides)
        exp, jobs, env, composer = plan(args)
        derived = resolve_derived(jobs, env["results"], composer)
        if args.command == "status":  # read only: status writes nothing
            details: dict = {}
            print_status(exp, jobs, statuses(jobs, env["results"], exp["name"], details), env["results"], details)
            return 0
        ok = preflight(exp, jobs, env, args)
        if args.command == "preflight" or not ok:
            return 0 if ok else 2
        if not args.dry_run:
            record_derivation(env["results"], exp["name"], derived)
            write_plan(env["results"], exp["name"], whole_grid(args, exp, jobs, env, composer))
        if env["launcher"].get("name") == "slurm":
            return run_slurm(exp, jobs, env, args)
        return run_local(exp, jobs, env, composer, args)
    except (ConfigError, UsageError) as err:
        return fail(err)


if __name__ == "__main__":
    sys.exit(main())
