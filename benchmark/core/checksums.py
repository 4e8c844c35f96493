"""SHA-256 sums of shipped or fetched files."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from benchmark.core.errors import ConfigError

SUMS = "SHA256SUMS"


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_sums(folder: Path, suffixes=(".safetensors", ".json", ".pt", ".txt"), exclude=("report.json",)) -> Path:
    """Sums of the weights, configs and tokenizer files (merges.txt) under `folder` (not of reports,
    which hold timings)."""
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in (SUMS, *exclude) and p.suffix in suffixes]
    (folder / SUMS).write_text("\n".join(lines) + "\n")
    return folder / SUMS


def bad_files(folder: Path) -> dict[str, str]:
    """The files of `folder` that are missing or differ from its SHA256SUMS: name -> what is wrong."""
    bad = {}
    for line in (folder / SUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        if not (folder / name).exists():
            bad[name] = "missing"
        elif sha256(folder / name) != digest:
            bad[name] = f"changed (its SHA-256 differs from {folder / SUMS})"
    return bad


@lru_cache(maxsize=8)
def verify_sums(folder: Path, fix: str) -> None:
    """Raise ConfigError naming every file of `folder` that is missing or differs from SHA256SUMS."""
    bad = bad_files(folder)
    if bad:
        raise ConfigError(f"{folder}: {', '.join(bad)} missing or changed (SHA-256 differs from {SUMS}). {fix}")


SHIPPED_FIX = "Rebuild them with `python -m benchmark.toy.pretrain` or restore them with git."


def sums_folder(path: Path) -> Path | None:
    """The folder whose SHA256SUMS covers `path` (its own folder or the one above), if any."""
    start = path if path.is_dir() else path.parent
    return next((f for f in (start, start.parent) if (f / SUMS).exists()), None)


def verify_shipped(path: Path, fix: str = SHIPPED_FIX) -> None:
    """Check the SHA256SUMS of the folder that ships `path`, if there is one; once per process."""
    folder = sums_folder(path)
    if folder is not None:
        verify_sums(folder.resolve(), fix)


def shipped_problems(path: Path, fix: str = SHIPPED_FIX) -> list[str]:
    """One line per file at or under `path` that its SHA256SUMS lists and that is missing or changed
    (the preflight's listing: every broken file named, with the fix)."""
    folder = sums_folder(path)
    if folder is None:
        return []
    path = Path(path).resolve()
    return [f"{folder.resolve() / name}: {why}. {fix}" for name, why in bad_files(folder.resolve()).items()
            if (folder.resolve() / name) == path or path in (folder.resolve() / name).parents]
