"""One run's identity and files: where it lives, whether it is done, its log, its failure record.

A run is one concept x method x strategy x seed; its id is a short hash of its semantic config
(benchmark.config.run_id). Its records are the `runs` / `steps` / `evals` Parquet parts under the
results root; its folder <results>/work/<experiment>/<run_id>/ holds the resolved config, provenance,
log, weights and sample grids.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from benchmark import records
from benchmark.config import results_root, run_id
from benchmark.provenance import git_state, hostname, slurm_job_id, versions

log = logging.getLogger("dvar")


def now() -> datetime:
    return datetime.now(timezone.utc)


class RunPaths:
    """Where one run keeps its files: <results>/work/<experiment>/<run_id>/."""

    def __init__(self, cfg: dict, rid: str | None = None):
        self.rid = rid or run_id(cfg)
        self.results = results_root(cfg)
        self.work = self.results / "work" / str(cfg["experiment"]) / self.rid
        self.running = self.work / "RUNNING"  # present while a process works on the run
        self.weights = self.work / "weights"
        self.samples = self.work / "samples"
        self.log = self.work / "log.txt"
        self.keys = {"experiment": cfg["experiment"], "method": cfg["method"]["name"],
                     "strategy": cfg["strategy"]["name"]}

    def runs_file(self) -> Path:
        return records.partition_dir(self.results, "runs", self.keys) / f"{self.rid}.parquet"

    def parts(self, table: str) -> list[Path]:
        return records.run_parts(self.results, table, self.keys, self.rid)


def completed_record(cfg: dict) -> dict | None:
    """The `runs` row of this exact config if it completed, else None ("done" is decided on disk)."""
    f = RunPaths(cfg).runs_file()
    if not f.exists():
        return None
    import pyarrow.parquet as pq

    row = pq.read_table(f).to_pylist()[0]
    return row if row["status"] == "completed" else None


def write_run_files(cfg: dict, paths: RunPaths) -> None:
    paths.work.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_state()
    (paths.work / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str))
    (paths.work / "provenance.json").write_text(json.dumps(
        {"git_sha": sha, "git_dirty": dirty, "versions": versions(), "hostname": hostname(),
         "slurm_job_id": slurm_job_id()}, indent=1))


def mark_running(paths: RunPaths) -> None:
    paths.running.write_text(json.dumps({"host": hostname(), "pid": os.getpid(), "slurm_job_id": slurm_job_id(),
                                         "since": now().isoformat()}))


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
    """A `runs` row with status=failed, so `status` lists the run and its error."""
    row = {"run_id": paths.rid, "concept": cfg["concept"], "seed": cfg["seed"], "model": cfg["model"]["name"],
           "status": "failed", "error": f"{type(err).__name__}: {err}",
           "config_json": json.dumps(cfg, sort_keys=True, default=str), "started_at": started_at,
           "finished_at": now(), "hostname": hostname(), "slurm_job_id": slurm_job_id()}
    records.write_part(paths.results, "runs", paths.keys, f"{paths.rid}.parquet", [row])
