"""The sweep's own files under <results>/work/<experiment>/: the Few-iters steps derived from CLIP-s
runs, the Slurm job of each submitted run, and the plan analysis reads. Each is written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.protocol.experiments import Job
from benchmark.store import records
from benchmark.store.runs import write_text_atomic


def derivation_file(results: Path, experiment: str) -> Path:
    return Path(results) / "work" / experiment / "few_iters_steps.json"


def record_derivation(results: Path, experiment: str, derived: dict) -> Path | None:
    """Add method -> derived Few-iters steps to the experiment's record of them."""
    if not derived:
        return None
    path = derivation_file(results, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(derived)
    write_text_atomic(path, json.dumps(current, indent=1, sort_keys=True))
    return path


def write_plan(results: Path, experiment: str, jobs: list[Job]) -> Path:
    """The experiment's current plan, which analysis reads: the run ids the grid holds now (records of
    runs outside it, e.g. of an edited config, are left out of the tables and listed)."""
    plan = {"run_ids": sorted(j.run_id for j in jobs if j.cfg is not None),
            "waiting": sorted(j.name for j in jobs if j.cfg is None)}
    path = records.plan_file(results, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(plan, indent=1))
    return path


def record_derived_run(results: Path, experiment: str, job_name: str, rid: str) -> None:
    """The run id a Few-iters job became once it derived its steps on a compute node."""
    path = records.derived_file(results, experiment, job_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, rid)


def submissions_file(results: Path, experiment: str) -> Path:
    return Path(results) / "work" / experiment / "submitted.json"


def read_submissions(results: Path, experiment: str) -> dict[str, str]:
    """job name → Slurm job id of the latest submission of that run."""
    f = submissions_file(results, experiment)
    return json.loads(f.read_text()) if f.exists() else {}


def record_submissions(results: Path, experiment: str, new: dict[str, str]) -> None:
    f = submissions_file(results, experiment)
    f.parent.mkdir(parents=True, exist_ok=True)
    current = read_submissions(results, experiment)
    current.update(new)
    write_text_atomic(f, json.dumps(current, indent=1, sort_keys=True))
