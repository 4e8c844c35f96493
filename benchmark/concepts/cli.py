"""`python -m benchmark.concepts list|show|fetch|validate [NAME ...] [key=value ...]`: the 48 concepts on
disk (`--help` explains every command and key)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmark.concepts.fetch import fetch, pinned_checksums
from benchmark.concepts.images import image_files
from benchmark.concepts.manifest import get_concept, load_manifest
from benchmark.concepts.validate import format_reports, validate_folder
from benchmark.core.cli_args import Spec, UsageError, fail
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError
from benchmark.core.fs import writable
from benchmark.core.registry import did_you_mean

DEFAULT_DATA = os.environ.get("DVAR_DATA", "data")


def select(names: list[str], source: str | None, include_samples: bool = False):
    manifest = load_manifest()
    if names:
        return [get_concept(n) for n in names]
    return [c for c in manifest.values() if (source is None or c.source == source)
            and (include_samples or c.source != "bundled")]


def cmd_list(args) -> int:
    pins = pinned_checksums()
    print(f"{'concept':<20}{'source':<19}{'class':<16}{'kind':<8}{'images':>8}  status    folder")
    for c in select([], args.source, include_samples=True):
        folder = c.folder(args.data)
        have = len(image_files(folder)) if folder.is_dir() else 0
        expected = len(pins.get(c.name, {})) or c.n_images
        status = "missing" if not have else ("partial" if expected and have < expected else "present")
        count = f"{have}/{expected}" if expected else f"{have}/?"
        print(f"{c.name:<20}{c.source:<19}{c.class_noun:<16}{c.kind:<8}{count:>8}  {status:<9} {folder}")
    print("\n`validate` decodes every image; `fetch` gets missing ones.")
    return 0


def cmd_show(args) -> int:
    c = get_concept(args.name)
    for key, value in vars(c).items():
        print(f"{key:<18}{' | '.join(value) if isinstance(value, tuple) else value}")
    print(f"{'folder':<18}{c.folder(args.data)}\n")
    report = validate_folder(c.name, c.folder(args.data), c.n_images, pinned_checksums().get(c.name))
    print(format_reports([report]))
    for f in report.files:
        print(f"  {f.path.name:<24}{f.path.stat().st_size:>10} B  {f.level}: {f.detail}")
    return 0


def cmd_fetch(args) -> int:
    concepts = select(args.names, args.source)
    results = fetch(concepts, args.data, getattr(args, "from"), progress=not args.quiet)
    manual = [r for r in results if r.manual]
    print(f"fetched {sum(r.fetched for r in results)} files, {sum(r.present for r in results)} already present, "
          f"{len(concepts) - len(manual)} of {len(concepts)} concepts complete in {args.data}")
    for r in manual:
        print(f"\nto do by hand: {r.manual}")
    reports = [validate_folder(c.name, c.folder(args.data), c.n_images, pinned_checksums().get(c.name))
               for c in concepts if not any(r.concept == c.name and r.manual for r in results)]
    print(format_reports(reports, verbose=False))
    return 1 if any(r.status != "ok" for r in reports) else 0


def cmd_validate(args) -> int:
    pins = pinned_checksums()
    concepts = select(args.names, args.source, include_samples=bool(args.names))
    reports = [validate_folder(c.name, c.folder(args.data), c.n_images, pins.get(c.name)) for c in concepts]
    print(format_reports(reports))
    return 1 if any(r.status != "ok" for r in reports) else 0


PROG = "python -m benchmark.concepts"
SOURCES = ("dreambooth", "custom_diffusion", "textual_inversion")
SPECS = {
    "list": Spec(keys=("data", "source")),
    "show": Spec(keys=("data",), words=True),
    "fetch": Spec(keys=("data", "source", "from"), switches=("quiet",), words=True),
    "validate": Spec(keys=("data", "source"), words=True),
}
COMMANDS = {"list": cmd_list, "show": cmd_show, "fetch": cmd_fetch, "validate": cmd_validate}

HELP = f"""\
usage: {PROG} list|show|fetch|validate [NAME ...] [key=value ...] [--quiet]

The paper's 48 concepts (concepts/manifest.csv) on disk: which are present, fetching them (resumable,
checksums verified), and decoding every image before a run does.

commands:
  list                  every concept of the manifest: source, class, images present / expected
  show NAME             one concept: manifest fields, folder, every file and its check
  fetch [NAME ...]      download (or copy from a local mirror) into the data root; default: all 48
  validate [NAME ...]   decode every image: conversions, duplicates, bad and missing files (exit 1)

keys:
  data=DIR              data root holding <concept>/ folders (env DVAR_DATA; default: {DEFAULT_DATA})
  source=NAME           only {' | '.join(SOURCES)} (list: also bundled)
  from=DIR              fetch from a local mirror: DIR/<folder>/ (DreamBooth, TI) or DIR/data.zip (CD)

switches:
  --quiet               fetch: no progress bar

examples:
  {PROG} fetch data=/scratch/dvar
  {PROG} fetch source=dreambooth from=~/mirrors/dreambooth/dataset
  {PROG} validate data=/scratch/dvar
  {PROG} list data=/scratch/dvar
  {PROG} show cat1 data=/scratch/dvar
"""


def arguments(argv: list[str] | None) -> argparse.Namespace | None:
    p = parse_args(argv, PROG, SPECS)
    if p.help:
        return None
    source = p.get("source")
    allowed = (*SOURCES, "bundled") if p.command == "list" else SOURCES
    if source is not None and source not in allowed:
        raise UsageError(f"source={source}: choose one of {', '.join(allowed)}." + did_you_mean(source, allowed))
    if p.command == "show" and len(p.words) != 1:
        raise UsageError(f"name one concept: {PROG} show NAME (e.g. show cat1)")
    data = Path(p.get("data", DEFAULT_DATA)).expanduser()
    mirror = Path(p["from"]).expanduser() if p.get("from") else None
    if data.exists() and not data.is_dir():
        raise ConfigError(f"data={data}: a file, not a folder; give the data root that holds the <concept>/ folders.")
    if p.command == "fetch":
        if not writable(data):
            raise ConfigError(f"data={data}: cannot be written by this user (or lies on a read-only or system "
                              "filesystem); give data=DIR where you can write (it is created if missing).")
    if mirror is not None and not mirror.is_dir():
        raise ConfigError(f"from={mirror}: no such folder; give a local mirror: DIR/<folder>/ or DIR/data.zip.")
    return argparse.Namespace(
        command=p.command, fn=COMMANDS[p.command], names=p.words, name=p.words[0] if p.words else None,
        data=data, source=source, quiet="quiet" in p.switches, **{"from": mirror})


def main(argv: list[str] | None = None) -> int:
    try:
        args = arguments(argv)
        if args is None:
            print(HELP, end="")
            return 0
        return args.fn(args)
    except (ConfigError, UsageError) as err:
        return fail(err)


if __name__ == "__main__":
    sys.exit(main())
