"""One run's identity and files: where it lives, whether it is done, its log, its failure record.

A run is one concept x method x strategy x seed; its id is a short hash of its semantic config
(benchmark.protocol.config.run_id). Its records are the `runs` / `steps` / `evals` Parquet parts under the
results root; its folder <results>/work/<experiment>/<run_id>/ holds the resolved config, provenance,
log, weights and sample grids.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from benchmark.core.errors import ConfigError
from benchmark.core.provenance import git_state, hostname, slurm_job_id, versions
from benchmark.protocol.config import results_root, run_id
from benchmark.store import records

log = logging.getLogger("dvar")


def now() -> datetime:
    return datetime.now(timezone.utc)


def work_folder(results: Path, experiment: str, rid: str) -> Path:
    """<results>/work/<experiment>/<run_id>/: a run's files besides its records."""
    return Path(results) / "work" / str(experiment) / rid


def grid_file(samples: Path, step: int) -> Path:
    """The evaluation grid a run saved at `step` (engine.evaluation writes it, the report reads it)."""
    return samples / f"step{step:06d}.png"


class RunPaths:
    """Where one run keeps its files: <results>/work/<experiment>/<run_id>/."""

    def __init__(self, cfg: dict, rid: str | None = None):
        self.rid = rid or run_id(cfg)
        self.results = results_root(cfg)
        self.work = work_folder(self.results, cfg["experiment"], self.rid)
        self.weights = self.work / "weights"
        self.samples = self.work / "samples"
        self.log = self.work / "log.txt"
        self.keys = {"experiment": cfg["experiment"], "method": cfg["method"]["name"],
                     "strategy": cfg["strategy"]["name"]}

    def runs_file(self) -> Path:
        return records.partition_dir(self.results, "runs", self.keys) / f"{self.rid}.parquet"

    def parts(self, table: str) -> list[Path]:
        return records.run_parts(self.results, table, self.keys, self.rid)


class Busy(RuntimeError):
    """Another process owns one of the runs; the message names the run and its owner."""


def lock_file(cfg: dict) -> Path:
    """One lock per run: a process holds the lock of every run it works on, so jobs that split one
    trajectory between them never refuse each other."""
    return results_root(cfg) / "work" / str(cfg["experiment"]) / "locks" / f"{run_id(cfg)}.lock"


def owner() -> dict:
    return {"host": hostname(), "pid": os.getpid(), "slurm_job_id": slurm_job_id(), "since": now().isoformat()}


def describe_owner(info: dict) -> str:
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"{info.get('host', '?')} pid {info.get('pid', '?')}{job}, since {info.get('since', '?')}"


@contextlib.contextmanager
def owning(cfgs: list[dict]):
    """Hold the locks of all these runs, or of none: raises Busy, naming the run another process
    holds and its owner, after letting go of those taken. Taken in one order by every process."""
    with contextlib.ExitStack() as locks:
        for cfg in sorted(cfgs, key=run_id):
            locks.enter_context(owning_run(cfg))
        yield


@contextlib.contextmanager
def owning_run(cfg: dict):
    """Hold the run's lock (fcntl.flock: released by the OS when the process dies, so a dead owner
    never blocks, and a recycled PID never fools it). It works on local disks and NFS; on Lustre only
    when mounted with `-o flock`. Raises Busy, naming the owner, when another process holds it."""
    path = lock_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                info = json.loads(f.read() or "{}")
            except ValueError:
                info = {}
            raise Busy(f"run {run_id(cfg)} ({cfg['method']['name']}/{cfg['strategy']['name']}/{cfg['concept']}) is being "
                       f"worked on by {describe_owner(info)}; this launch leaves it alone.") from None
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise ConfigError(f"{path}: the filesystem of paths.results does not support file locks ({err}); "
                                  "a run needs one owner. Use a results folder on a local disk or NFS, or a Lustre "
                                  "mount with -o flock.") from err
            raise
        f.seek(0)
        f.truncate()
        f.write(json.dumps(owner()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def held(cfg: dict) -> dict | None:
    """The owner of the run if a live process holds its lock, else None. Reads only."""
    path = lock_file(cfg)
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(f.read() or "{}")
            except ValueError:
                return {}
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def read_row(cfg: dict) -> dict | None:
    """The run's `runs` row, or None (also when the file is damaged: the run is then not done)."""
    return read_runs_file(RunPaths(cfg).runs_file())


def read_runs_file(f: Path) -> dict | None:
    if not f.exists() or records.part_problem(f):
        return None

    return pq.read_table(f).to_pylist()[0]


def completed_record(cfg: dict) -> dict | None:
    """The `runs` row of this exact config if it completed and its records are intact, else None
    ("done" is decided on disk)."""
    row = read_row(cfg)
    if row is None or row["status"] != "completed":
        return None
    paths = RunPaths(cfg)
    return None if records.run_problems(paths.results, paths.keys, paths.rid, row["iterations"]) else row


def set_aside(cfg: dict) -> Path | None:
    """Move a run's records and folder to <results>/replaced/<time>/ (a forced rerun, or a damaged
    run about to be rerun): never deleted, out of the way of the new attempt."""
    paths = RunPaths(cfg)
    files = [paths.runs_file(), *paths.parts("steps"), *paths.parts("evals")]
    files = [f for f in files if f.exists()]
    if not files and not paths.work.exists():
        return None
    dest = paths.results / "replaced" / now().strftime("%Y%m%dT%H%M%S%f")
    for f in files:
        target = dest / f.relative_to(paths.results)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
    if paths.work.exists():
        target = dest / paths.work.relative_to(paths.results)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(paths.work), target)
    log.info("run %s: earlier records moved to %s", paths.rid, dest)
    return dest


def clean_leftovers(cfg: dict, snapshots: Path) -> None:
    """Temporary files of writes that a killed owner of this run never finished (they are never
    read): those named after the run in the folders it shares with other runs (whose writers may be at
    work), and all of them in its own folders, weights included (also the safetensors library's own
    `.tmpXXXXXX`, left by weights writes before they went through records.atomic_file)."""
    paths = RunPaths(cfg)
    shared = [(records.partition_dir(paths.results, t, paths.keys), f".{paths.rid}*.tmp") for t in records.TABLES]
    shared.append((snapshots, f".step*.{paths.rid}.*.tmp"))
    own = [(folder, pattern) for folder in (paths.work, paths.weights / "final", paths.weights / "best")
           for pattern in (".*.tmp", ".tmp*")]
    for folder, pattern in shared + own:
        for tmp in folder.glob(pattern) if folder.is_dir() else []:
            if tmp.is_dir():  # a method's own writer at work in a temporary folder (benchmark.engine.methods)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never half of one (records.atomic_file)."""
    with records.atomic_file(path) as f:
        f.write(text.encode())


def write_run_files(cfg: dict, paths: RunPaths) -> None:
    paths.work.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_state()
    write_text_atomic(paths.work / "config.json", json.dumps(cfg, indent=1, sort_keys=True, default=str))
    write_text_atomic(paths.work / "provenance.json", json.dumps(
        {"git_sha": sha, "git_dirty": dirty, "versions": versions(), "hostname": hostname(),
         "slurm_job_id": slurm_job_id()}, indent=1))


def open_log(paths: RunPaths) -> logging.FileHandler:
    """Log lines of the process go to the run's own log.txt while it works on the run."""
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def close_log(handler: logging.FileHandler) -> None:
    log.removeHandler(handler)
    handler.close()


def record_failure(cfg: dict, paths: RunPaths, err: BaseException, started_at: datetime) -> None:
    """A `runs` row with status=failed, so `status` lists the run and its error (never over a
    completed one)."""
    done = read_row(cfg)
    if done is not None and done["status"] == "completed":
        return
    row = {"run_id": paths.rid, "concept": cfg["concept"], "seed": cfg["seed"], "model": cfg["model"]["name"],
           "status": "failed", "error": f"{type(err).__name__}: {err}",
           "config_json": json.dumps(cfg, sort_keys=True, default=str), "started_at": started_at,
           "finished_at": now(), "hostname": hostname(), "slurm_job_id": slurm_job_id()}
    records.write_part(paths.results, "runs", paths.keys, f"{paths.rid}.parquet", [row])
