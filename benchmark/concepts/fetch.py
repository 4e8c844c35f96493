"""Get the concepts' images from their public sources (or a local mirror) into the data root.

- DreamBooth: every file of `google/dreambooth` `dataset/<subject>/` at a pinned commit, verified
  against `concepts/checksums.csv`.
- Custom Diffusion: the `data.zip` archive of the CD authors (downloaded once, resumable), of which
  the concepts' folders are extracted.
- Textual Inversion: a shared-drive folder that cannot be fetched by a script; fetch prints what to
  download and where to put it, and validates it once it is there.

Idempotent and resumable: a finished file (checksum verified where one is pinned) is never fetched
again; a file is written as `<name>.part` and renamed when complete, and an interrupted download
continues from its `.part`. The checksums of everything fetched are recorded in
`<data>/CHECKSUMS.csv`. `from=DIR` takes a local mirror instead of the network: DIR/<folder>/ for
DreamBooth and TI, DIR/data.zip or DIR/data/<folder>/ for Custom Diffusion.
"""

from __future__ import annotations

import csv
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.concepts.manifest import CONCEPTS_DIR, Concept
from benchmark.core.checksums import sha256
from benchmark.core.errors import ConfigError

DREAMBOOTH_COMMIT = "4f887af7970a06fc0cd3adaa1d0b368547d6a1d0"
DREAMBOOTH_URL = "https://raw.githubusercontent.com/google/dreambooth/{commit}/dataset/{folder}/{file}"
CD_ARCHIVE_URLS = (
    "https://huggingface.co/datasets/nupurkmr9/custom-diffusion/resolve/main/data.zip",
    "https://www.cs.cmu.edu/~custom-diffusion/assets/data.zip",
)
TI_FOLDER_URL = "https://drive.google.com/drive/folders/1d2UXkX0GWM-4qUwThjNhFIPP7S6WUbQJ"
RECORD = "CHECKSUMS.csv"


@dataclass
class FetchResult:
    concept: str
    fetched: int = 0       # files written by this call
    present: int = 0       # files already there and verified
    manual: str = ""       # instructions when the source needs a human


def pinned_checksums(path: Path | None = None) -> dict[str, dict[str, str]]:
    """concept -> {file name: sha256} for the files whose published bytes are known
    (concepts/checksums.csv, or the file named by env DVAR_CHECKSUMS)."""
    path = path or Path(os.environ.get("DVAR_CHECKSUMS", CONCEPTS_DIR / "checksums.csv"))
    out: dict[str, dict[str, str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["concept"], {})[row["file"]] = row["sha256"]
    return out


def _finished(dest: Path, expected_sha: str | None) -> bool:
    return dest.exists() and dest.stat().st_size > 0 and (expected_sha is None or sha256(dest) == expected_sha)


def _commit(part: Path, dest: Path, expected_sha: str | None, origin: str) -> None:
    if expected_sha is not None and sha256(part) != expected_sha:
        part.unlink()
        raise ConfigError(f"{origin}: checksum mismatch for {dest.name} (the source changed or the copy is "
                          "damaged). Nothing was kept; run fetch again or check the mirror.")
    os.replace(part, dest)


def download(url: str, part: Path, timeout: float = 30.0) -> None:
    """HTTP(S) download into `part`, continuing from its current size (Range request)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            mode = "ab" if have and response.status == 206 else "wb"
            with open(part, mode) as f:
                shutil.copyfileobj(response, f, 1 << 20)
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(
            f"Could not download {url} ({err}). On a machine without network, fetch on one that has it "
            "and copy the data folder, or pass from=DIR with a local mirror."
        ) from err


def copy_file(source: Path, part: Path) -> None:
    if not source.is_file():
        raise ConfigError(f"from= mirror: {source} is missing. The mirror needs the source's layout "
                          "(see `python -m benchmark.concepts fetch --help`).")
    shutil.copyfile(source, part)


def fetch_file(dest: Path, expected_sha: str | None, *, url: str | None = None, source: Path | None = None) -> bool:
    """Make `dest` complete; False when it already was (no copy, no download)."""
    if _finished(dest, expected_sha):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if source is not None:
        copy_file(source, part)
    else:
        download(url, part)
    _commit(part, dest, expected_sha, str(source or url))
    return True


def _mirror_folder(mirror: Path, folder: str) -> Path:
    for candidate in (mirror / folder, mirror / "dataset" / folder, mirror / "data" / folder):
        if candidate.is_dir():
            return candidate
    return mirror / folder


def fetch_dreambooth(concept: Concept, data: Path, mirror: Path | None, pins: dict[str, str]) -> FetchResult:
    result = FetchResult(concept.name)
    src = _mirror_folder(mirror, concept.source_folder) if mirror else None
    for name, sha in sorted(pins.items()):
        url = DREAMBOOTH_URL.format(commit=DREAMBOOTH_COMMIT, folder=concept.source_folder, file=name)
        wrote = fetch_file(data / concept.name / name, sha, url=url, source=src / name if src else None)
        result.fetched += wrote
        result.present += not wrote
    return result


def cd_archive(data: Path, mirror: Path | None) -> Path:
    """The Custom Diffusion data.zip: from the mirror, or downloaded once into <data>/.downloads."""
    if mirror and (mirror / "data.zip").is_file():
        return mirror / "data.zip"
    archive = data / ".downloads" / "custom_diffusion_data.zip"
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    errors = []
    for url in CD_ARCHIVE_URLS:
        try:
            download(url, part)
            os.replace(part, archive)
            return archive
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError("Custom Diffusion data.zip could not be downloaded:\n  " + "\n  ".join(errors))


def fetch_custom_diffusion(concept: Concept, data: Path, mirror: Path | None, pins: dict[str, str]) -> FetchResult:
    result = FetchResult(concept.name)
    dest_dir = data / concept.name
    if mirror and _mirror_folder(mirror, concept.source_folder).is_dir():  # an extracted mirror
        src = _mirror_folder(mirror, concept.source_folder)
        for f in sorted(p for p in src.iterdir() if p.is_file()):
            wrote = fetch_file(dest_dir / f.name, pins.get(f.name), source=f)
            result.fetched += wrote
            result.present += not wrote
        return result
    with zipfile.ZipFile(cd_archive(data, mirror)) as zf:
        prefix = f"data/{concept.source_folder}/"
        members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        if not members:
            raise ConfigError(f"data.zip has no folder {prefix}; the archive layout changed.")
        for m in members:
            dest = dest_dir / Path(m.filename).name
            if _finished(dest, pins.get(dest.name)):
                result.present += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            with zf.open(m) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
            _commit(part, dest, pins.get(dest.name), f"data.zip:{m.filename}")
            result.fetched += 1
    return result


def fetch_textual_inversion(concept: Concept, data: Path, mirror: Path | None, pins: dict[str, str]) -> FetchResult:
    result = FetchResult(concept.name)
    src = _mirror_folder(mirror, concept.source_folder) if mirror else None
    if src is not None and src.is_dir():
        for f in sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")):
            wrote = fetch_file(data / concept.name / f.name, pins.get(f.name), source=f)
            result.fetched += wrote
            result.present += not wrote
        return result
    dest = data / concept.name
    if dest.is_dir() and any(dest.iterdir()):
        result.present = sum(1 for p in dest.iterdir() if p.is_file())
        return result
    result.manual = (f"{concept.name}: the Textual Inversion images live in a shared-drive folder that a script "
                     f"cannot download. Open {TI_FOLDER_URL}, download the folder '{concept.source_folder}', and "
                     f"put its images in {dest}/ . Then run `python -m benchmark.concepts validate {concept.name}`.")
    return result


FETCHERS = {"dreambooth": fetch_dreambooth, "custom_diffusion": fetch_custom_diffusion,
            "textual_inversion": fetch_textual_inversion}


def record_checksums(data: Path, concept: str) -> None:
    """Keep <data>/CHECKSUMS.csv up to date with the concept's files (for later validation)."""
    record = data / RECORD
    rows = []
    if record.exists():
        with open(record, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["concept"] != concept]
    folder = data / concept
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_file() and not p.name.endswith(".part"):
            rows.append({"concept": concept, "file": p.name, "bytes": p.stat().st_size, "sha256": sha256(p)})
    tmp = record.with_name(f".{RECORD}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["concept", "file", "bytes", "sha256"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, record)


def fetch(concepts: list[Concept], data: Path, mirror: Path | None = None, progress: bool = True) -> list[FetchResult]:
    data = Path(data).expanduser()
    data.mkdir(parents=True, exist_ok=True)
    pins = pinned_checksums()
    results = []
    for concept in tqdm(concepts, desc="fetch", disable=not progress or None):
        if concept.source == "bundled":
            results.append(FetchResult(concept.name, present=concept.n_images or 0))
            continue
        result = FETCHERS[concept.source](concept, data, Path(mirror) if mirror else None, pins.get(concept.name, {}))
        if not result.manual:
            record_checksums(data, concept.name)
        results.append(result)
    return results
