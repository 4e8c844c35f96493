"""Where a record came from: code version, package versions, machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "open_clip_torch", "timm", "lpips",
            "numpy", "pandas", "pyarrow", "hydra-core", "submitit")


def project_path(path: str | Path) -> Path:
    """A path as given, or relative to the project root when it does not exist as given
    (so shipped files such as benchmark/toy/weights resolve from any working directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() or not (PROJECT_ROOT / p).exists() else PROJECT_ROOT / p


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(commit sha, dirty) of the project checkout; ("unknown", False) outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip())
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def device_name(device) -> str:
    import torch  # torch: provenance is also written by torch-free commands

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def slurm_job_id() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else job


def hostname() -> str:
    return socket.gethostname()
