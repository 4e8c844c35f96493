"""`python -m analysis COMMAND experiment=NAME [key=value ...]`: tables, figures and a report from an
experiment's records; criterion replay (`--help` explains every command and key)."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

from analysis.load import completed_runs, evals_of, runs_and_left_out, steps_of
from analysis.replay import (
    CRITERIA,
    check_grid,
    grid_search,
    strided_summary,
    strided_vs_every_step,
    traces,
)
from analysis.tables import write_tables
from benchmark.core.cli_args import (
    Spec,
    UsageError,
    as_list,
    as_number,
    fail,
    progress,
    require,
)
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError, integer, number
from benchmark.core.fs import writable
from benchmark.core.registry import did_you_mean
from benchmark.protocol.strategies import PROPOSED, REFERENCE, replay_strategy

PROG = "python -m analysis"
_COMMON = ("experiment", "results", "out")
SPECS = {
    "report": Spec(keys=_COMMON),
    "tables": Spec(keys=_COMMON),
    "ablation": Spec(keys=_COMMON),
    "strided": Spec(keys=(*_COMMON, "strategy", "every", "window", "threshold")),
    "replay": Spec(keys=(*_COMMON, "strategy", "method", "criterion", "tuning_fraction", "target", "seed"),
                   extra_keys=True,
                   hints={"grid": "give each hyperparameter as its own key, e.g. window=100,310 threshold=0.1,0.15,"}),
}

HELP = """\
usage: {prog} report|tables|ablation|strided|replay experiment=NAME [key=value ...]

Tables, figures and a report from an experiment's records: exactly the runs of the sweep's current
plan (results/work/NAME/plan.json). Reads Parquet only; no torch, no GPU. Everything lands in
<results>/analysis/NAME/ unless out= says otherwise. Progress goes to stderr, results to stdout.

commands:
  report        Tables 1 and 3, beside the paper, figures, report.md and report.html
  tables        Tables 1 and 3 only (.md, .tex, .csv)
  ablation      evaluation-batch and timestep ablations: the L_det grid, Table 4, trend-to-noise
  strided       DVAR with L_det every k steps against every step, replayed on full-length traces
  replay        a stopping criterion on logged full-length traces, over a grid of its hyperparameters

keys (every command):
  experiment=NAME       the experiment whose records to read (required)
  results=DIR           the results root the sweep wrote to (default: results)
  out=DIR               where to write (default: <results>/analysis/NAME)

keys (strided, replay):
  strategy=NAME         which runs hold the traces (default: baseline)
  every=2,5,10          strided: the strides k (default: 2,5,10)
  window=N threshold=A  strided: DVAR's N and alpha (default: each run's method.protocol.dvar)

keys (replay):
  criterion=NAME        {criteria} (required)
  method=NAME           only this method's traces (the paper tunes each method's criterion on its own)
  KEY=V1,V2,...         the criterion's hyperparameters, each a list; the grid is their product:
{hyperparameters}
  tuning_fraction=0.5   share of the concepts the choice is tuned on (the rest are held out)
  target=0.9            quality retained the chosen combination must reach on the tuning concepts
  seed=0                seed of the tuning / held-out split

examples:
  {prog} report experiment=smoke
  {prog} tables experiment=table1 results=/scratch/results
  {prog} ablation experiment=ablation_timesteps
  {prog} strided experiment=traces every=2,5,10
  {prog} replay experiment=table1 criterion=dvar window=200,310,440 threshold=0.1,0.15,0.2
"""


def help_text() -> str:
    by_keys: dict[tuple, list[str]] = {}
    for name, keys in CRITERIA.items():
        by_keys.setdefault(tuple(keys), []).append(name)
    lines = [f"{'':<24}{', '.join(names)}: {', '.join(keys)}" for keys, names in by_keys.items()]
    return HELP.format(prog=PROG, criteria=" | ".join(CRITERIA), hyperparameters="\n".join(lines))


def numbers(key: str, value: str, kind=float) -> list:
    values = [as_number(key, v, kind) for v in as_list(value)]
    if not values:
        raise UsageError(f"{key}= needs at least one value, e.g. {key}=1,2.")
    return values


def replay_grid(options: dict, criterion: str) -> dict[str, list]:
    """The criterion's hyperparameters among the options: KEY=V1,V2,... each."""
    if criterion not in CRITERIA and ":" not in criterion:  # FILE.py:Class: a criterion of one's own
        raise UsageError(f"criterion={criterion}: not a criterion; choose from {', '.join(CRITERIA)}, or give "
                         "FILE.py:Class." + did_you_mean(criterion, CRITERIA))
    keys = replay_strategy(criterion).replay_keys
    grid = {}
    for key, value in options.items():
        if key in SPECS["replay"].keys:
            continue
        if key not in keys:
            raise UsageError(f"unknown key `{key}`: {criterion} takes {', '.join(keys)}."
                             + did_you_mean(key, keys) + f" (see `{PROG} --help`)")
        grid[key] = numbers(key, value, keys[key])
    if not grid and keys:
        raise UsageError(f"give the grid: {PROG} replay criterion={criterion} "
                         + " ".join(f"{k}=V1,V2" for k in keys))
    return grid


def check_folders(results: Path, out: Path, given_out: bool) -> None:
    """results= a folder this user can read, out= a folder that can be written: refused before anything is read."""
    def exists(path: Path) -> bool:
        try:
            return path.exists()
        except OSError:  # below a folder this user cannot search
            return False

    existing = next(p for p in [results, *results.absolute().parents] if exists(p))
    if not existing.is_dir():
        raise ConfigError(f"results={results}: {'' if existing == results else str(existing) + ' is '}a file, not a "
                          "folder; give the results root the sweep wrote to.")
    if existing == results and not os.access(results, os.R_OK | os.X_OK):
        raise ConfigError(f"results={results}: this user cannot read it (permission denied); give a results folder "
                          "you can read, or fix its permissions.")
    key = "out" if given_out else "out (default <results>/analysis/NAME)"
    if exists(out) and not out.is_dir():
        raise ConfigError(f"{key}={out}: a file, not a folder; give out=DIR (created if missing).")
    if not writable(out):
        raise ConfigError(f"{key}={out}: cannot be written by this user (or lies on a read-only or system "
                          "filesystem); give out=DIR where you can write.")


def logged_traces(results: Path, experiment: str, strategy: str):
    """(runs, traces) of the experiment's completed runs of `strategy`, the input of replays."""
    progress(f"reading the {strategy} runs of {experiment} under {results}")
    runs = completed_runs(results, experiment)
    runs = runs[runs.strategy == strategy]
    if runs.empty:
        raise ConfigError(f"no completed {strategy} runs in experiment {experiment} (strategy= picks another)")
    progress(f"reading the steps and evaluations of {len(runs)} runs")
    return runs, traces(runs, steps_of(results, experiment, runs.run_id), evals_of(results, experiment, runs.run_id))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv, PROG, SPECS)
        if args.help:
            print(help_text(), end="")
            return 0
        experiment = require(args, "experiment", PROG, f"{args.command} experiment=NAME (e.g. experiment=smoke)")
        results = Path(args.get("results", "results"))
        out = Path(args["out"]) if args.get("out") else results / "analysis" / experiment
        check_folders(results, out, given_out=bool(args.get("out")))
        t0 = time.perf_counter()
        if args.command == "report":
            from analysis.report import (
                build,  # matplotlib: tables and replay start without it
            )

            files = build(results, experiment, out, progress=progress)
            progress(f"done in {time.perf_counter() - t0:.0f} s")
            print((out / "table1.md").read_text())
            print(f"wrote {len(files)} files to {out}; open {out / 'report.html'}")
        elif args.command == "ablation":
            from analysis.ablation import (
                write,  # matplotlib: tables and replay start without it
            )

            progress(f"reading the records of {experiment} and writing the ablation tables and figures")
            files = write(results, experiment, out)
            print((out / "ablation.md").read_text())
            print(f"wrote {', '.join(sorted(files))} to {out}")
        elif args.command == "tables":
            progress(f"reading the runs of {experiment} under {results}")
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                runs, left = runs_and_left_out(results, experiment)
                progress(f"tables from {len(runs)} completed runs")
                files = write_tables(runs, out, left)
            print((out / "table1.md").read_text())
            print((out / "table3.md").read_text())
            print(f"wrote {', '.join(sorted(files))} to {out}")
        elif args.command == "strided":
            every = numbers("every", args.get("every", "2,5,10"), int)
            window = as_number("window", args["window"], int) if args.get("window") else None
            threshold = as_number("threshold", args["threshold"]) if args.get("threshold") else None
            check_grid(PROPOSED, {"every": every, **({"window": [window]} if window is not None else {}),
                                **({"threshold": [threshold]} if threshold is not None else {})}, complete=False)
            runs, ts = logged_traces(results, experiment, args.get("strategy", REFERENCE))
            params = {}
            for r in runs.itertuples():
                dvar = json.loads(r.config_json)["method"]["protocol"][PROPOSED]
                params[r.run_id] = {"window": window or dvar["window"], "threshold": threshold or dvar["threshold"]}
            check_grid(PROPOSED, {"every": every, "window": sorted({p["window"] for p in params.values()})}, complete=False)
            progress(f"replaying DVAR on {len(ts)} traces at strides {', '.join(map(str, every))}")
            rows = strided_vs_every_step(ts, params, every)
            out.mkdir(parents=True, exist_ok=True)
            rows.to_csv(out / "strided_dvar.csv", index=False)
            summary = strided_summary(rows)
            summary.to_csv(out / "strided_dvar_summary.csv", index=False, float_format="%.4g")
            print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print(f"\nper trace: {out / 'strided_dvar.csv'}")
        else:
            criterion = require(args, "criterion", PROG, f"replay experiment={experiment} criterion="
                                                         f"{'|'.join(CRITERIA)}|FILE.py:Class KEY=V1,V2 ...")
            grid = replay_grid(args.options, criterion)
            check_grid(criterion, grid)
            fraction = number("tuning_fraction", as_number("tuning_fraction", args.get("tuning_fraction", "0.5")), 0, 1,
                              open_lo=True, note="the share of the concepts the choice is tuned on")
            target = number("target", as_number("target", args.get("target", "0.9")), 0, 1, open_lo=True,
                            note="the share of the best train CLIP img to retain")
            seed = integer("seed", as_number("seed", args.get("seed", "0"), int), 0, 2**31 - 1)
            _, ts = logged_traces(results, experiment, args.get("strategy", REFERENCE))
            if args.get("method"):
                ts = [t for t in ts if t.method == args["method"]]
                if not ts:
                    raise ConfigError(f"method={args['method']}: no traces of that method in {experiment}.")
            combos = 1
            for values in grid.values():
                combos *= len(values)
            progress(f"replaying {criterion} on {len(ts)} traces: {combos} combinations")
            table = grid_search(ts, criterion, grid, fraction, seed, target)
            out.mkdir(parents=True, exist_ok=True)
            name = replay_strategy(criterion).replay_name if ":" in criterion else criterion  # not a file's path
            path = out / f"replay_{name}{'_' + args['method'] if args.get('method') else ''}.csv"
            table.to_csv(path, index=False, float_format="%.6g")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"\nchosen on the tuning concepts (target retained >= {target}); held-out columns are the "
                  f"estimate. Written to {path}")
    except (ConfigError, UsageError, OSError) as err:  # OSError: a records file this user cannot read
        return fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
