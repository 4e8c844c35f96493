"""SHA-256 sums of shipped or fetched files."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from benchmark.errors import ConfigError

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


@lru_cache(maxsize=8)
def verify_sums(folder: Path, fix: str) -> None:
    """Raise ConfigError naming every file of `folder` that is missing or differs from SHA256SUMS."""
    bad = []
    for line in (folder / SUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        if not (folder / name).exists() or sha256(folder / name) != digest:
            bad.append(name)
    if bad:
        raise ConfigError(f"{folder}: {', '.join(bad)} missing or changed (SHA-256 differs from {SUMS}). {fix}")


SHIPPED_FIX = "Rebuild them with `python -m benchmark.toy.pretrain` or restore them with git."


def verify_shipped(path: Path, fix: str = SHIPPED_FIX) -> None:
    """Check the SHA256SUMS of the folder that ships `path` (its own folder or the one above), if
    there is one; once per process."""
    start = path if path.is_dir() else path.parent
    for folder in (start, start.parent):
        if (folder / SUMS).exists():
            verify_sums(folder.resolve(), fix)
            return
