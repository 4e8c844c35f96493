"""`python -m benchmark.weights list|fetch|check experiment=NAME | key=value ...`: the weight files a config
loads, fetched once into the libraries' own caches (`--help` explains every command)."""

from __future__ import annotations

import sys

from benchmark.core.cli_args import Spec, UsageError, fail
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError
from benchmark.protocol.config import check_groups, compose, validate
from benchmark.protocol.experiments import expand, load_experiment
from benchmark.weights.check import check_loads
from benchmark.weights.fetch import fetch, status
from benchmark.weights.files import required

PROG = "python -m benchmark.weights"
SPECS = {c: Spec(overrides=True) for c in ("list", "fetch", "check")}
HELP = f"""\
usage: {PROG} list|fetch|check experiment=NAME | key=value ...

The weight files a set of run configs loads: SD v1.5 at its pinned commit (only the files a run
reads), OpenAI CLIP ViT-B/32 (open_clip), DINO ViT-S/16 (timm), torchvision's AlexNet for LPIPS.
Files land in the libraries' own caches (HF_HOME or HF_HUB_CACHE for hub files, TORCH_HOME for
AlexNet), where the runs look for them.

commands:
  list       what is cached where and what is missing (exit 1); no network, no writes
  fetch      download what is missing (hub files resume) and verify each file; without network it stops
             at once and lists every missing file, its URL and where to put it
  check      load every model with the network off, as a run would; exit 1 on any failure

keys:
  experiment=NAME   every run config of that experiment (conf/experiments/NAME.yaml)
  KEY=VALUE         run config overrides (model=sd15 metrics=real, model.variant=fp16, ...); without
                    experiment=, the one run config they compose

examples:
  {PROG} fetch experiment=table1          # once, on a login node with network
  {PROG} fetch model=sd15 metrics=real    # the same files, named by config groups
  {PROG} list experiment=table1
  {PROG} check experiment=table1
"""


def configs_for(overrides: list[str]) -> list[dict]:
    """The run configs of an experiment (experiment=NAME among the overrides) or of one run, validated."""
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    rest = [o for o in overrides if not o.startswith("experiment=")]
    check_groups(rest)
    if not names:
        cfgs = [compose(rest)]
    else:
        cfgs = [job.cfg for job in expand(load_experiment(names[-1]), rest) if job.cfg is not None]
    for cfg in cfgs:
        validate(cfg)
    return cfgs


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv, PROG, SPECS)
    except UsageError as err:
        return fail(err)
    if args.help:
        print(HELP, end="")
        return 0

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
