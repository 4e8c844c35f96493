"""`python -m analysis`: tables, figures and a report from an experiment's records; criterion replay.

    python -m analysis report --experiment smoke                  # everything, into results/analysis/smoke/
    python -m analysis tables --experiment table1
    python -m analysis ablation --experiment ablation_timesteps   # Fig. 5 grid, Table 4, trend-to-noise
    python -m analysis strided --experiment traces --every 2 5 10     # strided vs every-step DVAR
    python -m analysis replay --experiment traces --criterion dvar --grid window=100,200,310 threshold=0.1,0.15
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from benchmark.errors import ConfigError


def parse_grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise ConfigError(f"--grid takes key=v1,v2,... (got {item!r})")
        grid[key] = [float(v) if any(c in v for c in ".e") else int(v) for v in values.split(",")]
    return grid


def logged_traces(args):
    """(runs, traces) of the experiment's completed runs of `--strategy`, the input of replays."""
    from analysis.load import completed_runs, evals_of, steps_of
    from analysis.replay import traces

    runs = completed_runs(args.results, args.experiment)
    runs = runs[runs.strategy == args.strategy]
    if runs.empty:
        raise ConfigError(f"no completed {args.strategy} runs in experiment {args.experiment}")
    return runs, traces(runs, steps_of(args.results, args.experiment, runs.run_id),
                        evals_of(args.results, args.experiment, runs.run_id))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("report", "tables, figures, report.md and report.html"), ("tables", "Tables 1 and 3 only"),
                        ("ablation", "evaluation-batch and timestep ablations: L_det grid, Table 4, trend-to-noise"),
                        ("strided", "DVAR with L_det every k steps vs every step, replayed on full-length traces"),
                        ("replay", "evaluate a stopping criterion on logged full-length traces")):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--experiment", required=True)
        s.add_argument("--results", type=Path, default=Path("results"))
        s.add_argument("--out", type=Path, help="default: <results>/analysis/<experiment>")
        if name in ("replay", "strided"):
            s.add_argument("--strategy", default="baseline", help="which runs hold the traces (default: baseline)")
        if name == "strided":
            s.add_argument("--every", type=int, nargs="+", default=[2, 5, 10])
            s.add_argument("--window", type=int, help="DVAR N (default: each run's method.protocol.dvar.window)")
            s.add_argument("--threshold", type=float, help="DVAR alpha (default: each run's method.protocol)")
        if name == "replay":
            s.add_argument("--criterion", required=True, choices=["dvar", "clip_s", "ema", "hall", "trend", "fixed"])
            s.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                           help="hyperparameter values, e.g. window=100,310 threshold=0.1,0.15 (one value: a single replay)")
            s.add_argument("--tuning-fraction", type=float, default=0.5)
            s.add_argument("--target", type=float, default=0.9, help="quality retained the choice must reach")
            s.add_argument("--seed", type=int, default=0, help="seed of the tuning / held-out concept split")
    args = p.parse_args(argv)
    out = args.out or args.results / "analysis" / args.experiment
    try:
        if args.command == "report":
            from analysis.report import build

            files = build(args.results, args.experiment, out)
            print(f"wrote {len(files)} files to {out}; open {out / 'report.html'}")
        elif args.command == "ablation":
            from analysis.ablation import write

            files = write(args.results, args.experiment, out)
            print((out / "ablation.md").read_text())
            print(f"wrote {', '.join(sorted(files))} to {out}")
        elif args.command == "tables":
            from analysis.load import completed_runs
            from analysis.tables import write_tables

            with warnings.catch_warnings():
                warnings.simplefilter("always")
                files = write_tables(completed_runs(args.results, args.experiment), out)
            print((out / "table1.md").read_text())
            print((out / "table3.md").read_text())
            print(f"wrote {', '.join(sorted(files))} to {out}")
        elif args.command == "strided":
            import json

            from analysis.replay import strided_summary, strided_vs_every_step

            runs, ts = logged_traces(args)
            params = {}
            for r in runs.itertuples():
                dvar = json.loads(r.config_json)["method"]["protocol"]["dvar"]
                params[r.run_id] = {"window": args.window or dvar["window"], "threshold": args.threshold or dvar["threshold"]}
            rows = strided_vs_every_step(ts, params, args.every)
            out.mkdir(parents=True, exist_ok=True)
            rows.to_csv(out / "strided_dvar.csv", index=False)
            summary = strided_summary(rows)
            summary.to_csv(out / "strided_dvar_summary.csv", index=False, float_format="%.4g")
            print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print(f"\nper trace: {out / 'strided_dvar.csv'}")
        else:
            from analysis.replay import grid_search

            _, ts = logged_traces(args)
            table = grid_search(ts, args.criterion, parse_grid(args.grid), args.tuning_fraction, args.seed, args.target)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"replay_{args.criterion}.csv"
            table.to_csv(path, index=False, float_format="%.6g")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"\nchosen on the tuning concepts (target retained >= {args.target}); held-out columns are the "
                  f"estimate. Written to {path}")
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
