"""Fetch the missing weight files once, verify them, and say what is where.

Hub files go through huggingface_hub (resumable `.incomplete` downloads into the shared hub cache);
plain URLs (torchvision's AlexNet, 233 MB) through torch.hub's downloader into the torch hub cache
(verified, not resumable). Verification needs no network: a hub cache names each blob by its content hash (the SHA-256
of LFS files, the git blob SHA-1 of small ones), and torchvision file names carry a SHA-256 prefix.
Without network, `fetch` fails at once and names every missing file, its URL and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import hf_hub_download
from huggingface_hub.constants import HF_HUB_OFFLINE
from huggingface_hub.errors import EntryNotFoundError

from benchmark.core.errors import ConfigError
from benchmark.weights.files import WeightFile, torch_hub_dir


@dataclass
class Found:
    file: WeightFile
    path: Path | None
    verified: str = ""        # "sha256" | "git-sha1" | "sha256-prefix" | "" (no hash to check against)
    fetched: bool = False

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path else 0


def _digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """Git's blob id: SHA-1 over a "blob <size>\0" header and the content (how the hub names small files)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.sha1(f"blob {path.stat().st_size}\0".encode())).hexdigest()


def verify(file: WeightFile, path: Path) -> str:
    """Check the bytes against the hash the cache or the file name states; raises on a mismatch.
    Returns what was checked ("" when nothing states a hash, e.g. a file copied in by hand)."""
    blob = Path(os.path.realpath(path)).name
    if file.repo and re.fullmatch(r"[0-9a-f]{64}", blob):
        ok, kind = _digest(path, "sha256") == blob, "sha256"
    elif file.repo and re.fullmatch(r"[0-9a-f]{40}", blob):
        ok, kind = _git_blob_sha1(path) == blob, "git-sha1"
    elif file.sha256_prefix():
        ok, kind = _digest(path, "sha256").startswith(file.sha256_prefix()), "sha256-prefix"
    else:
        return ""
    if not ok:
        raise ConfigError(f"{path}: the bytes do not match their {kind} ({file.label}); the copy is damaged. "
                          f"Delete it and run `python -m benchmark.weights fetch` again.")
    return kind


def unreachable_hosts(files: list[WeightFile], timeout: float = 5.0) -> list[str]:
    """Hosts of `files` this machine cannot open a connection to (all of them when HF_HUB_OFFLINE
    is set for hub files): one quick probe each instead of a library's minute of retries."""
    out = []
    for host in dict.fromkeys(urlparse(f.url).hostname for f in files if f.url):
        if HF_HUB_OFFLINE and any(f.repo and urlparse(f.url).hostname == host for f in files):
            out.append(f"{host} (HF_HUB_OFFLINE=1)")
            continue
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            out.append(host)
    return out


def missing_listing(missing: list[WeightFile]) -> str:
    lines = []
    for f in missing:
        lines.append(f"  {f.what}: {f.label}")
        if f.local:
            lines.append(f"      the config names {f.local}, which does not exist: copy the file there or fix the key")
            continue
        lines.append(f"      from {f.url}")
        lines.append(f"      to   {f.destination()}")
        if f.key and not f.revision:
            lines.append(f"      or anywhere, named by {f.key}=PATH")
    return "\n".join(lines)


def offline_error(missing: list[WeightFile], hosts: list[str], command: str) -> ConfigError:
    return ConfigError(
        f"{len(missing)} weight files are missing here and {', '.join(hosts)} cannot be reached:\n"
        f"{missing_listing(missing)}\n"
        f"Run `{command}` on a machine with network and copy the caches (HF_HOME, TORCH_HOME) to this one, "
        "or download each file from its URL to the path shown.")


def _download_url(file: WeightFile) -> Path:
    """torch.hub's own downloader (what torchvision uses for the same file): a temporary file, the
    SHA-256 prefix of the name checked, then renamed into the cache."""
    from torch.hub import (
        download_url_to_file,  # torch: hub-only fetches and `list` run without it
    )

    dest = torch_hub_dir() / "checkpoints" / file.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(file.url, str(dest), hash_prefix=file.sha256_prefix(), progress=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise ConfigError(f"Could not download {file.url} to {dest} ({err}). Download it on a machine with "
                          "network and copy it there.") from err
    return dest


def _download_hub(file: WeightFile) -> Path:
    try:
        return Path(hf_hub_download(file.repo, file.filename, revision=file.revision))
    except EntryNotFoundError:
        if not file.fallback:
            raise
        return Path(hf_hub_download(file.repo, file.fallback, revision=file.revision))


def fetch(files: list[WeightFile], command: str, log=print) -> list[Found]:
    """Download what is missing, verify everything; raise at once without network."""
    files = list(dict.fromkeys(files))
    found = [Found(f, f.cached()) for f in files]
    missing = [x.file for x in found if x.path is None]
    local = [f for f in missing if f.local]
    if local:
        raise ConfigError("files named in the config do not exist:\n" + missing_listing(local))
    hosts = unreachable_hosts(missing) if missing else []
    if hosts:
        raise offline_error(missing, hosts, command)
    free = shutil.disk_usage(torch_hub_dir().parent if torch_hub_dir().parent.exists() else Path.home()).free
    log(f"fetching {len(missing)} of {len(files)} files ({free / 1e9:.0f} GB free)" if missing
        else f"all {len(files)} files are in the cache")
    for x in found:
        if x.path is None:
            log(f"  {x.file.label} ...")
            x.path = _download_hub(x.file) if x.file.repo else _download_url(x.file)
            x.fetched = True
        x.verified = verify(x.file, x.path)
    return found


def status(files: list[WeightFile]) -> list[Found]:
    """Where each file is (None when missing), without network or writes."""
    return [Found(f, f.cached()) for f in dict.fromkeys(files)]
