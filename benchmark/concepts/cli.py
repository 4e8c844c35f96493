"""`python -m benchmark.concepts {list,show,fetch,validate}`: the 48 concepts on disk."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmark.concepts.fetch import fetch, pinned_checksums
from benchmark.concepts.images import image_files
from benchmark.concepts.manifest import get_concept, load_manifest
from benchmark.concepts.validate import format_reports, validate_folder
from benchmark.errors import ConfigError

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.concepts", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help_, fn):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--data", type=Path, default=Path(DEFAULT_DATA),
                       help="data root holding <concept>/ folders (env DVAR_DATA; default: %(default)s)")
        s.set_defaults(fn=fn)
        return s

    s = add("list", "every concept of the manifest: source, class, images present / expected", cmd_list)
    s.add_argument("--source", choices=["dreambooth", "custom_diffusion", "textual_inversion", "bundled"])
    s = add("show", "one concept: manifest fields, folder, every file and its check", cmd_show)
    s.add_argument("name")
    s = add("fetch", "download (or copy from --from) concepts into the data root; resumable", cmd_fetch)
    s.add_argument("names", nargs="*", help="concept names (default: all 48)")
    s.add_argument("--source", choices=["dreambooth", "custom_diffusion", "textual_inversion"])
    s.add_argument("--from", type=Path, metavar="DIR",
                   help="local mirror: DIR/<folder>/ (DreamBooth, TI) or DIR/data.zip, DIR/data/<folder>/ (CD)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s = add("validate", "decode every image; report conversions, duplicates, bad and missing files", cmd_validate)
    s.add_argument("names", nargs="*", help="concept names (default: all 48)")
    s.add_argument("--source", choices=["dreambooth", "custom_diffusion", "textual_inversion"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
