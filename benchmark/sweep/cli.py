"""`python -m benchmark.sweep [run|status|preflight|list] experiment=NAME [key=value ...] [--switch ...]`:
run an experiment's grid, locally or on Slurm, and watch it (`--help` explains every key)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from benchmark.core.cli_args import Spec, UsageError, as_list, as_number, fail
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError, boolean, integer, number, read_yaml
from benchmark.core.registry import did_you_mean
from benchmark.protocol.config import CONF_DIR
from benchmark.protocol.experiments import (
    GRID_KEYS,
    Composer,
    Job,
    available_experiments,
    expand,
    load_experiment,
)
from benchmark.sweep.plan import (
    read_submissions,
    record_derivation,
    record_submissions,
    resolve_derived,
    settled_trajectories,
    statuses,
    trajectories,
    waiting_trajectories,
    write_plan,
)

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
        launcher.update(read_profile(args.profile))
    check_launcher(launcher)
    if launcher.get("timing") and args.command != "status":  # a file the launcher names, read by the preflight
        from benchmark.core.provenance import project_path
        from benchmark.preflight.estimate import load_profile

        load_profile(project_path(launcher["timing"]))
    results = Path(any_cfg["paths"]["results"]).expanduser()
    check_results(results)
    return exp, jobs, {"launcher": launcher, "results": results,
                       "data": Path(any_cfg["paths"]["data"]).expanduser()}, composer


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


# The launcher keys this module and benchmark.sweep.slurm read, with their types and ranges (the
# others are names, paths and free-form Slurm options passed on as they are).
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


def preflight(exp: dict, jobs: list[Job], env: dict, args) -> bool:
    """Print the preflight listing and the estimate; whether the sweep may start."""
    from benchmark.preflight.preflight import (
        format_estimate,
        format_problems,
        run_preflight,
    )

    pf = run_preflight(jobs, env, args.overrides, exp.get("runs_per_job"))
    print("\n".join(["preflight:", *pf.lines, *format_estimate(pf, env["launcher"], args.command == "preflight")]))
    if len(pf.problems) == 1 and "\n" not in pf.problems[0]:  # one problem: one line
        print(f"error: {pf.problems[0]} (the sweep cannot start; nothing was submitted)", file=sys.stderr)
    elif pf.problems:
        print("error: " + "\n".join(format_problems(pf)), file=sys.stderr)
    if env["launcher"].get("timeout_min") in (None, "auto"):
        env["launcher"]["timeout_min"] = pf.time_limit_min or DEFAULT_TIMEOUT_MIN
    return pf.ok


def print_status(exp: dict, jobs: list[Job], states: list[str], results: Path, details: dict | None = None,
                 launcher: dict | None = None) -> None:
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
        from benchmark.store.runs import read_row

        print("\nfailed or cancelled runs (rerun with --rerun-failed):")
        for j in failed:
            row = read_row(j.cfg)
            error = row["error"] if row and row.get("error") else "no failure recorded by the run (Slurm ended the job)"
            print(f"  {j.name} (run {j.run_id}): {error}")
            print(f"    log: {results / 'work' / exp['name'] / j.run_id / 'log.txt'}")
            if j.name in submitted:
                from benchmark.sweep.slurm import job_log, log_folder

                log = job_log(log_folder(launcher or {}, results, exp["name"]), submitted[j.name])
                print(f"    slurm log: {log} (job {submitted[j.name]})")
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
    from benchmark.engine.snapshots import release_snapshots
    from benchmark.sweep.local import execute

    failures, tried = [], set()  # phase 2 runs the derived Few-iters, not again what failed in phase 1
    for phase in (1, 2):
        states = statuses(jobs, env["results"], exp["name"])
        todo = [j for j in to_run(jobs, states, args.rerun_failed) if j.name not in tried]
        tried |= {j.name for j in todo}
        if phase == 2 and not todo:
            break
        print(f"phase {phase}: {len(todo)} runs to do, {states.count('done')} done already")
        if args.dry_run:
            for j in todo:
                print(f"  {j.name}  ({j.run_id})")
            return 0
        waiting = waiting_trajectories(jobs)
        share = env["launcher"].get("share_trajectories", True)
        # True: derived Few-iters will branch from the trajectory (its snapshots are held for them);
        # None: leave a hold of an earlier phase as it is (released below once its branches are done)
        groups = [([j.cfg for j in group], True if share and group[0].trajectory in waiting else None)
                  for group in (trajectories(todo, exp.get("runs_per_job")) if share else
                                [[j] for j in todo if j.cfg is not None])]
        print(f"  as {len(groups)} " + ("trajectories, each trained once for the runs that share it" if share else
                                        "standalone runs (launcher.share_trajectories=false)"))
        done = execute(groups, workers=env["launcher"].get("workers", 1))
        failures += [(cfgs, err) for cfgs, err in done if err]
        derived = resolve_derived(jobs, env["results"], composer)
        if derived:
            path = record_derivation(env["results"], exp["name"], derived)
            print("Few-iters steps derived from CLIP-s: " + ", ".join(
                f"{m} mean {d['mean']} max {d['max']}" for m, d in derived.items()) + f" (recorded in {path})")
            write_plan(env["results"], exp["name"], whole_grid(args, exp, jobs, env, composer))
    final = statuses(jobs, env["results"], exp["name"])
    for cfg in settled_trajectories(jobs, final):  # no derived run is left to branch from its snapshots
        release_snapshots(cfg)
    print_status(exp, jobs, final, env["results"], launcher=env["launcher"])
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
    print(f"submitted Slurm job arrays {', '.join(arrays)}; logs in {slurm.log_folder(env['launcher'], env['results'], exp['name'])}")
    print(f"watch: python -m benchmark.sweep status experiment={exp['name']}")
    if args.wait:
        from benchmark.sweep.plan import SLURM_STATES, slurm_states

        live = ("queued", "requeued", "running")
        mine = set(read_submissions(env["results"], exp["name"]).values())  # earlier submissions too
        while (now := slurm_states(mine)) and any(SLURM_STATES.get(now.get(i, ""), "") in live for i in mine):
            time.sleep(5)
        resolve_derived(jobs, env["results"])
        states = statuses(jobs, env["results"], exp["name"])
        print_status(exp, jobs, states, env["results"], launcher=env["launcher"])
        return 1 if "failed" in states else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmark.core.cli_args import setup_logging
    from benchmark.protocol.config import check_groups

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
            from benchmark.protocol.config import validate

            for job in jobs:  # the preflight lists config problems with the rest; status refuses them
                if job.cfg is not None:
                    validate(job.cfg)
            details: dict = {}
            print_status(exp, jobs, statuses(jobs, env["results"], exp["name"], details), env["results"], details,
                         env["launcher"])
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
