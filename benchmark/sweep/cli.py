"""`python -m benchmark.sweep [run|status|preflight|list] experiment=NAME [key=value ...] [--switch ...]`:
run an experiment's grid, locally or on Slurm, and watch it (`--help` explains every key).

The sweep is a pipeline, each stage called once by `main`: parse the command line -> plan (read the
experiment and the disk: jobs and their statuses; writes nothing) -> preflight -> execute -> report."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.core.cli_args import Spec, UsageError, as_list, fail, setup_logging
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError
from benchmark.preflight.preflight import (
    Preflight,
    format_estimate,
    format_problems,
    run_preflight,
)
from benchmark.protocol.config import validate
from benchmark.protocol.experiments import (
    GRID_KEYS,
    available_experiments,
    load_experiment,
)
from benchmark.sweep.execute import execute
from benchmark.sweep.plan import Request, Sweep, plan
from benchmark.sweep.report import report

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




def main(argv: list[str] | None = None) -> int:
    try:
        request = parse(argv)
    except UsageError as err:
        return fail(err)
    if request.help:
        print(HELP, end="")
        return 0
    setup_logging()
    try:
        if request.command == "list":
            return list_experiments()
        sweep = plan(request)
        if request.command == "status":  # read only: status writes nothing
            refuse_bad_configs(sweep)
            report(sweep)
            return 0
        checked = preflight(sweep, request)
        if request.command == "preflight" or not checked.ok:
            return 0 if checked.ok else 2
        outcome = execute(sweep, request, checked.time_limit_min)
        if outcome.final is not None:
            report(outcome.final)
        return 1 if outcome.failed else 0
    except (ConfigError, UsageError) as err:
        return fail(err)


def parse(argv: list[str] | None) -> Request:
    p = parse_args(argv, PROG, SPECS, default="run")
    o = p.options
    return Request(
        command=p.command, help=p.help,
        overrides=([f"experiment={o['experiment']}"] if o.get("experiment") else []) + p.overrides,
        profile=Path(o["profile"]) if o.get("profile") else None,
        narrow={key: as_list(o.get(key)) or None for key in GRID_KEYS},
        rerun_failed="rerun-failed" in p.switches, dry_run="dry-run" in p.switches, wait="wait" in p.switches)


def list_experiments() -> int:
    for name in available_experiments():
        first = (Path(load_experiment(name)["path"]).read_text().splitlines() or [""])[0]
        print(f"{name:<26}{first.lstrip('# ')}")
    return 0


def refuse_bad_configs(sweep: Sweep) -> None:
    """status has no preflight to list config problems: it refuses the first."""
    for job in sweep.jobs:
        if job.cfg is not None:
            validate(job.cfg)


def preflight(sweep: Sweep, request: Request) -> Preflight:
    """Print the preflight listing and the estimate, the problems on stderr."""
    pf = run_preflight(sweep.jobs, sweep.env, request.overrides, sweep.experiment.get("runs_per_job"))
    print("\n".join(["preflight:", *pf.lines, *format_estimate(pf, sweep.launcher, request.command == "preflight")]))
    if len(pf.problems) == 1 and "\n" not in pf.problems[0]:  # one problem: one line
        print(f"error: {pf.problems[0]} (the sweep cannot start; nothing was submitted)", file=sys.stderr)
    elif pf.problems:
        print("error: " + "\n".join(format_problems(pf)), file=sys.stderr)
    return pf


if __name__ == "__main__":
    sys.exit(main())
