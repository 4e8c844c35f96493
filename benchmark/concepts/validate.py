"""Check concept folders: every image decodes, with what conversion, and what is wrong where.

Reports per file: EXIF rotations and mode conversions that loading will apply (grayscale, palette,
RGBA, CMYK, 16-bit → 8-bit RGB), and errors: undecodable or truncated files, non-images with image
names, images too small to train on, exact duplicates, files that differ from the published
checksum. Nothing is modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from benchmark.concepts.images import IMAGE_SUFFIXES, decode_image, image_files
from benchmark.core.checksums import sha256
from benchmark.core.errors import ConfigError

EXIF_ORIENTATION = 0x0112


@dataclass
class FileReport:
    path: Path
    level: str    # ok | info | warning | error
    detail: str


@dataclass
class ConceptReport:
    name: str
    folder: Path
    files: list[FileReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # folder-level errors

    @property
    def n_images(self) -> int:
        return sum(f.level in ("ok", "info") for f in self.files)

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.files)

    @property
    def status(self) -> str:
        if self.problems and not self.files:
            return "missing" if not self.folder.exists() else "empty"
        if self.count("error") or self.problems:
            return "broken"
        return "ok"


def describe_conversion(path: Path) -> str:
    """What decode_image will do to this file beyond decoding (empty if nothing)."""
    notes = []
    with Image.open(path) as im:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        if orientation not in (1, None):
            notes.append(f"EXIF orientation {orientation} applied")
        if im.mode != "RGB":
            notes.append(f"converted {im.mode} -> RGB" + (" (alpha composited on white)"
                                                            if "A" in im.mode or "transparency" in im.info else ""))
    return "; ".join(notes)


def check_file(path: Path) -> FileReport:
    try:
        decode_image(path)
    except ConfigError as err:
        return FileReport(path, "error", str(err).split(": ", 1)[-1])
    note = describe_conversion(path)
    return FileReport(path, "info" if note else "ok", note or "ok")


def validate_folder(name: str, folder: Path, expected: int | None = None,
                    pinned: dict[str, str] | None = None) -> ConceptReport:
    report = ConceptReport(name, Path(folder))
    if not report.folder.is_dir():
        report.problems.append(f"folder {folder} does not exist")
        return report
    try:
        files = image_files(folder)
    except ConfigError as err:
        report.problems.append(str(err))
        files = [p for p in sorted(report.folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith(".")]
    others = [p for p in sorted(report.folder.iterdir())
              if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES]
    if not files:
        report.problems.append(f"folder {folder} holds no images")
    seen: dict[str, Path] = {}
    for path in files:
        r = check_file(path)
        digest = sha256(path)
        if pinned and path.name in pinned and pinned[path.name] != digest:
            r = FileReport(path, "error", "differs from the published file (sha256 mismatch); fetch it again")
        elif r.level != "error" and digest in seen:
            r = FileReport(path, "error", f"exact duplicate of {seen[digest].name}; remove one of the two")
        seen.setdefault(digest, path)
        report.files.append(r)
    for path in others:
        if path.name in ("captions.txt", "ATTRIBUTION.md", "LICENSE.md"):
            continue
        report.files.append(FileReport(path, "warning", "not an image file; ignored"))
    if pinned:
        for missing in sorted(set(pinned) - {p.name for p in files}):
            report.problems.append(f"{missing} is missing (published file)")
    if expected is not None and files and report.n_images != expected:
        report.problems.append(f"{report.n_images} usable images, the source has {expected}")
    return report


def format_reports(reports: list[ConceptReport], verbose: bool = True) -> str:
    """A summary table per concept, then every file that needs attention."""
    head = f"{'concept':<20}{'status':<9}{'images':>7}{'converted':>10}{'warnings':>9}{'errors':>7}  folder"
    lines = [head, "-" * len(head)]
    for r in reports:
        errors = r.count("error") + len(r.problems)
        lines.append(f"{r.name:<20}{r.status:<9}{r.n_images:>7}{r.count('info'):>10}{r.count('warning'):>9}"
                     f"{errors:>7}  {r.folder}")
    details = []
    for r in reports:
        for problem in r.problems:
            details.append(f"  {r.name}: {problem}")
        for f in r.files:
            if f.level in ("error", "warning") or (verbose and f.level == "info"):
                details.append(f"  {r.name}/{f.path.name}: {f.level}: {f.detail}")
    if details:
        lines += ["", "details:"] + details
    return "\n".join(lines)
