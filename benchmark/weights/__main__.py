"""`python -m benchmark.weights [list|fetch|check] experiment=NAME | key=value ...`

    python -m benchmark.weights fetch experiment=table1        # everything table1 loads, once, on a login node
    python -m benchmark.weights fetch model=sd15 metrics=real  # the same, named by config groups
    python -m benchmark.weights list experiment=table1         # what is cached where; no network, no writes
    python -m benchmark.weights check experiment=table1        # load every model with the network off

Files land in the libraries' own caches (HF_HOME or HF_HUB_CACHE for hub files, TORCH_HOME for
torchvision's AlexNet), where the runs look for them; fetch is resumable and verifies each file.
Without network it stops at once and lists every missing file, its URL and where to put it.
"""

from __future__ import annotations

import argparse
import sys

from benchmark.errors import ConfigError
from benchmark.weights.check import check_loads
from benchmark.weights.files import required

COMMANDS = ("list", "fetch", "check")


def configs_for(overrides: list[str]) -> list[dict]:
    """The run configs of an experiment (experiment=NAME among the overrides) or of one run."""
    from benchmark.config import compose

    names = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    rest = [o for o in overrides if not o.startswith("experiment=")]
    if not names:
        return [compose(rest)]
    from benchmark.sweep.plan import expand, load_experiment

    return [job.cfg for job in expand(load_experiment(names[-1]), rest) if job.cfg is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("overrides", nargs="*", help="experiment=NAME and/or config overrides (model=sd15 ...)")
    args = parser.parse_args(argv)
    from benchmark.weights.fetch import fetch, status

    try:
        cfgs = configs_for(args.overrides)
        files = required(cfgs)
        if args.command == "check":
            problems = check_loads(cfgs)
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            return 1 if problems else 0
        if args.command == "list":
            found = status(files)
            for x in found:
                where = f"{x.size / 1e6:>10.1f} MB  {x.path}" if x.path else f"{'missing':>13}  -> {x.file.destination()}"
                print(f"{x.file.what:<24}{x.file.label}\n{'':<24}{where}")
            missing = sum(x.path is None for x in found)
            print(f"{len(found)} files, {missing} missing" + (": python -m benchmark.weights fetch "
                                                             + " ".join(args.overrides) if missing else ""))
            return 1 if missing else 0
        found = fetch(files, "python -m benchmark.weights fetch " + " ".join(args.overrides))
        for x in found:
            print(f"{'fetched' if x.fetched else 'cached ':<8}{x.size / 1e6:>10.1f} MB  {x.file.label}"
                  f"{'  (' + x.verified + ' verified)' if x.verified else ''}")
        print(f"{len(found)} files, {sum(x.size for x in found) / 1e9:.2f} GB in the caches; "
              f"{sum(x.fetched for x in found)} fetched now")
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
