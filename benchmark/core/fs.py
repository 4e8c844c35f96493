"""Whether a folder can be written, judged without writing anything (the preflight, `status` and
every command that refuses a bad `paths.results=` before it writes)."""

from __future__ import annotations

import os
from pathlib import Path

PSEUDO_FILESYSTEMS = frozenset({"proc", "sysfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                                "pstore", "bpf", "configfs", "efivarfs", "fusectl", "binfmt_misc", "mqueue",
                                "hugetlbfs", "autofs"})


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path` (its deepest mount point in /proc/self/mounts); None
    where the kernel does not list mounts there (not Linux)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    path, best, kind = Path(path), -1, None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (point == path or point in path.parents) and len(point.parts) >= best:
            best, kind = len(point.parts), fields[2]
    return kind


def writable(path: Path) -> bool:
    """Whether a folder can be created or written at `path`, judged without writing anything: its
    nearest existing parent is a folder, not on a read-only mount or a pseudo filesystem, and this
    user may write it (root may write anywhere the mount allows)."""
    path = Path(path).expanduser().absolute()
    try:
        while not path.exists():
            path = path.parent
        if not path.is_dir() or os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
        if filesystem_type(path.resolve()) in PSEUDO_FILESYSTEMS:
            return False
    except OSError:  # a parent this user cannot search
        return False
    return os.access(path, os.W_OK | os.X_OK)
