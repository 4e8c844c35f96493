"""The Parquet records: `runs`, `steps` and `evals`, schema v1 (DESIGN.md §6).

Layout under the results root (hive partitions; concept and seed are columns):

    <root>/<table>/experiment=<e>/method=<m>/strategy=<s>/<file>.parquet

- runs:  one file per run, `<run_id>.parquet`, one row.
- steps: `<run_id>-<first step>-<last step>.parquet` parts, written at each checkpoint and every
  `records.flush_every` updates (a resume deletes the parts past its snapshot).
- evals: the same naming as steps.

Every file is written under a hidden temporary name, fsynced and renamed into place, so a killed
job never leaves a partial file for readers (they ignore names starting with "." or "_"). Each part
states in its Parquet metadata the run, the step range and the row count, so a damaged file (a
truncated copy, a bad disk) is found cheaply, from its footer; readers skip and name such files
instead of failing. This module imports no torch: analysis reads the records through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
PARTITIONS = ("experiment", "method", "strategy")
f64, i64, s = pa.float64(), pa.int64(), pa.string()


def _schema(table: str, fields: list[tuple[str, pa.DataType, str]]) -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"doc": d}) for n, t, d in fields],
                     metadata={"schema_version": SCHEMA_VERSION, "table": table})


RUNS = _schema("runs", [
    ("run_id", s, "short hash of the semantic config (identical config -> identical id)"),
    ("concept", s, "concept name from concepts/manifest.csv"),
    ("seed", i64, "run seed (training stream; the eval batch uses seed + ldet.seed_offset)"),
    ("model", s, "model config name (tiny, sd15, ...)"),
    ("model_identity", s, "hub id@revision, or built-<hash> for a model built from config (tiny, sd15_twin)"),
    ("status", s, "completed | failed"),
    ("iterations", i64, "optimizer updates the run performed (its cost; Table 1 'Iterations')"),
    ("reported_step", i64, "updates behind the reported weights (best checkpoint for baseline/clip_s)"),
    ("max_steps", i64, "step budget (cap) of the strategy"),
    ("stop_reason", s, "criterion | max_steps | fixed_steps"),
    ("train_clip_img", f64, "CLIP img similarity, train-prompt samples vs references, at reported_step"),
    ("train_clip_txt", f64, "CLIP image-text similarity of train-prompt samples"),
    ("val_clip_img", f64, "CLIP img similarity, validation-prompt samples vs references"),
    ("val_clip_txt", f64, "CLIP image-text similarity of validation samples (placeholder removed)"),
    ("dino", f64, "DINO CLS cosine similarity, train-prompt samples vs references"),
    ("div", f64, "mean LPIPS distance between samples of the same validation prompt"),
    ("train_s", f64, "seconds in training updates (forward, backward, optimizer)"),
    ("ldet_s", f64, "seconds computing L_det"),
    ("sampling_s", f64, "seconds in in-loop evaluations (sampling + scoring)"),
    ("total_s", f64, "seconds of this run's own steps: train_s + ldet_s + sampling_s"),
    ("time_s", f64, "seconds of the strategy's own protocol (Table 1 'Time'): updates, in-loop evaluations, "
                    "and L_det only where the strategy watches it"),
    ("setup_s", f64, "seconds before the loop (loading, data, eval batch); not in total_s"),
    ("final_eval_s", f64, "seconds of the post-training evaluation; not in total_s"),
    ("clip_pairing", s, "all_pairs | index: how CLIP img pairs generated and reference images"),
    ("weights_dir", s, "folder of the reported weights (safetensors), relative to the results root"),
    ("error", s, "exception text of a failed run"),
    ("config_json", s, "the resolved run config"),
    ("git_sha", s, "commit of the code that ran"),
    ("git_dirty", pa.bool_(), "uncommitted changes present"),
    ("versions_json", s, "versions of python, torch, diffusers, transformers, peft, open_clip, timm, ..."),
    ("device", s, "cpu or the GPU name"),
    ("hostname", s, "machine"),
    ("slurm_job_id", s, "SLURM_JOB_ID (with array task) when run under Slurm"),
    ("started_at", pa.timestamp("us", tz="UTC"), "start of the (first) attempt"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "end of the run"),
])

STEPS = _schema("steps", [
    ("run_id", s, "run id"),
    ("step", i64, "k = state after k optimizer updates; step 0 = the untrained weights"),
    ("train_loss", f64, "loss of the update that produced step k (null at step 0)"),
    ("grad_norm", f64, "L2 norm of the trainable gradients of that update, unscaled (before clipping)"),
    ("loss_scale", f64, "the fp16 GradScaler's loss scale for that update (null without fp16)"),
    ("update_skipped", pa.bool_(), "fp16: the scaled gradients overflowed, so the GradScaler skipped the optimizer "
                                   "step and halved its scale (grad_norm is null); null without fp16"),
    ("lr", f64, "learning rate of that update"),
    ("l_det", f64, "L_det of the weights at step k (null when not evaluated at this step)"),
    ("l_det_begin", f64, "L_det on timesteps 0-332 (ldet.intervals)"),
    ("l_det_middle", f64, "L_det on timesteps 333-665"),
    ("l_det_end", f64, "L_det on timesteps 666-999"),
    ("criterion", f64, "the strategy's statistic after this step (DVAR ratio, CLIP-s non-improving count)"),
    ("train_s", f64, "seconds of the update"),
    ("ldet_s", f64, "seconds of the L_det evaluation"),
    ("sampling_s", f64, "seconds of the in-loop evaluation at this step (0 when none)"),
    ("wall_s", f64, "training-loop seconds since the start of the run"),
])

EVALS = _schema("evals", [
    ("run_id", s, "run id"),
    ("step", i64, "updates behind the evaluated weights"),
    ("phase", s, "in_loop | final"),
    ("train_clip_img", f64, "see runs"),
    ("train_clip_txt", f64, "see runs"),
    ("val_clip_img", f64, "see runs"),
    ("val_clip_txt", f64, "see runs"),
    ("dino", f64, "see runs"),
    ("div", f64, "see runs"),
    ("n_train_images", i64, "samples from the train prompts"),
    ("n_val_images", i64, "samples from the validation prompts"),
    ("sampling_s", f64, "seconds generating the images"),
    ("scoring_s", f64, "seconds computing the metrics"),
])

TABLES = {"runs": RUNS, "steps": STEPS, "evals": EVALS}


def partition_dir(root: Path, table: str, keys: dict) -> Path:
    return Path(root) / table / "/".join(f"{k}={keys[k]}" for k in PARTITIONS)


def part_name(run_id: str, first: int, last: int) -> str:
    return f"{run_id}-{first:07d}-{last:07d}.parquet"


def write_part(root: Path, table: str, keys: dict, name: str, rows: list[dict]) -> Path:
    """Write rows as one immutable Parquet file, atomically (unique temp name, fsync, rename)."""
    schema = TABLES[table]
    folder = partition_dir(root, table, keys)
    folder.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows if r.get("step") is not None]
    meta = {"rows": str(len(rows)), "run_id": str(rows[0]["run_id"]),
            "first_step": str(min(steps)) if steps else "", "last_step": str(max(steps)) if steps else ""}
    data = pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in rows],
                                schema=schema.with_metadata({**schema.metadata, **{k.encode(): v.encode() for k, v in meta.items()}}))
    with atomic_file(folder / name) as f:
        pq.write_table(data, f)
    return folder / name


@contextlib.contextmanager
def atomic_file(path: Path):
    """A file opened for writing under a hidden temporary name beside `path` (`.<name>.<random>.tmp`),
    fsynced and renamed into place: a reader sees the old file or the new one, never half of one, and
    a killed write leaves only the temporary file, which the next launch removes. Every file the
    harness writes (records, weights, snapshots) goes through here, so all get the same permissions."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write; after the rename there is nothing left


def part_problem(path: Path) -> str | None:
    """Why a part file cannot be trusted (unreadable footer, row count unlike its metadata), or None."""
    try:
        meta = pq.read_metadata(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        return f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})"
    stated = (meta.metadata or {}).get(b"rows")
    if stated is not None and int(stated) != meta.num_rows:
        return f"{path}: {meta.num_rows} rows where the file states {int(stated)}"
    return None


def run_problems(root: Path, keys: dict, run_id: str, iterations: int) -> list[str]:
    """What is wrong with a completed run's records: unreadable parts, or steps parts that do not
    cover steps 0..iterations one after another. Empty when the run is intact."""
    problems = unreadable_parts(root, keys, run_id)
    expected = 0
    for f in run_parts(root, "steps", keys, run_id):
        first, last = part_range(f)
        if first != expected:
            problems.append(f"{f}: starts at step {first}, the run's steps before it end at {expected - 1}")
        expected = last + 1
    if expected != iterations + 1:
        problems.append(f"steps of run {run_id} end at step {expected - 1}, the run reports {iterations} iterations")
    return problems


def unreadable_parts(root: Path, keys: dict, run_id: str) -> list[str]:
    """The problems of the run's steps and evals parts that cannot be trusted (part_problem)."""
    return [p for table in ("steps", "evals") for f in run_parts(root, table, keys, run_id) if (p := part_problem(f))]


def run_parts(root: Path, table: str, keys: dict, run_id: str) -> list[Path]:
    folder = partition_dir(root, table, keys)
    return sorted(folder.glob(f"{run_id}-*.parquet")) if folder.is_dir() else []


def part_range(path: Path) -> tuple[int, int]:
    first, last = path.stem.rsplit("-", 2)[1:]
    return int(first), int(last)


# Filesystems of the kernel's own state (/proc, /sys, ...): their permission bits do not say whether a
# folder can be made there, and nothing belongs in them.
def plan_file(root: Path, experiment: str) -> Path:
    return Path(root) / "work" / experiment / "plan.json"


def derived_file(root: Path, experiment: str, job_name: str) -> Path:
    """Where a Few-iters job that derived its steps on a compute node records the run id it became."""
    return Path(root) / "work" / experiment / "derived" / (job_name.replace("/", "__") + ".txt")


def read_plan(root: Path, experiment: str) -> set[str] | None:
    """Run ids of the experiment's current plan (written by the sweep, completed by the derived
    Few-iters jobs), or None when there is none."""
    f = plan_file(root, experiment)
    if not f.exists():
        return None
    plan = json.loads(f.read_text())
    ids = set(plan["run_ids"])
    for name in plan["waiting"]:
        d = derived_file(root, experiment, name)
        if d.exists():
            ids.add(d.read_text().strip())
    return ids


def read(root: Path, table: str, experiment: str | None = None) -> pd.DataFrame:
    """One table as a DataFrame with the partition columns; empty (with columns) if nothing is there.
    Damaged files are left out with a warning that names each one and the fix."""
    schema = TABLES[table]
    base = Path(root) / table
    part_fields = [pa.field(k, pa.string()) for k in PARTITIONS]
    folder = base / f"experiment={experiment}" if experiment else base
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith((".", "_"))) if folder.is_dir() else []
    problems = [p for f in files if (p := part_problem(f))]
    if problems:
        bad = {p.split(": ", 1)[0] for p in problems}
        files = [f for f in files if str(f) not in bad]
        warnings.warn(f"{len(problems)} damaged {table} files left out (`python -m benchmark.sweep status` names the "
                      f"runs; rerun them with --rerun-failed):\n  " + "\n  ".join(problems))
    if not files:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in [*part_fields, *schema]})
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=pa.schema([*schema, *part_fields]),
                         partitioning=ds.partitioning(pa.schema(part_fields), flavor="hive"), partition_base_dir=str(base))
    return dataset.to_table().to_pandas()
