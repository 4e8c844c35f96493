"""`python -m benchmark.measure.kill_trials [--trials N] [--sweeps M]`: SIGKILL runs and sweeps at random and at
targeted moments, launch them again, and count how often the records come out identical to an
uninterrupted run.

Each run trial trains one shared trajectory of the tiny backbone (Baseline, CLIP-s, DVAR and a
Few-iters run of one method; the methods take turns) through `benchmark.sweep`, kills the process —
after a random delay, or right after a snapshot, a records part, a finished run's row, or while a
temporary file is being written — launches it again until it completes, and compares every run's
`runs` / `steps` / `evals` rows (timing columns aside) with a clean sweep. Each sweep trial kills a
two-worker sweep over three methods x two seeds the same way. Prints the counts.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmark.protocol.config import class_image_overrides, group_options
from benchmark.store import records
from benchmark.sweep.local import die_with_parent

PROJECT = Path(__file__).resolve().parents[2]
TINY = ["model=tiny", "metrics=tiny", "progress=false", "log_every=1000", "train_batch_size=1", "ldet.batch_size=4",
        "sampling.steps=2", "sampling.n_train_prompts=2", "sampling.save_images=none", "checkpoint_every=3",
        "method.max_train_steps=24", "method.protocol.baseline.eval_every=6", "method.protocol.clip_s.eval_every=3",
        "method.protocol.clip_s.patience=2", "method.protocol.clip_s.eps=0.01", "method.protocol.dvar.window=5",
        "method.protocol.dvar.threshold=0.5"]
MOMENTS = {  # what the targeted kills wait for, as a glob under the results folder
    "snapshot": "work/*/trajectories/*/snapshots/*.meta.pt",
    "part": "steps/**/*.parquet",
    "finished run": "runs/**/*.parquet",
    "temporary file": "**/.*.tmp*",
}
# Not results: timings, and where and with which commit a run was made (a commit during the trials
# must not count as a difference).
IGNORED = ["train_s", "ldet_s", "sampling_s", "wall_s", "scoring_s", "total_s", "time_s", "setup_s", "final_eval_s",
           "started_at", "finished_at", "config_json", "hostname", "slurm_job_id", "experiment", "git_sha", "git_dirty"]


def experiment(folder: Path, methods: list[str], seeds: list[int]) -> Path:
    path = folder / "killtrial.yaml"
    path.write_text("# python -m benchmark.measure.kill_trials\n" + yaml.safe_dump(
        {"overrides": TINY, "few_iters": "pinned", "per_method": {m: class_image_overrides(m, 2) for m in methods},
         "grid": {"method": methods, "strategy": ["baseline", "clip_s", "dvar", "few_iters_mean"],
                  "concept": ["sample_duck_toy"], "seed": seeds}}))
    return path


def command(exp: Path, results: Path, extra: list[str]) -> list[str]:
    # few_iters: pinned with a step count of its own, inside the budget
    return [sys.executable, "-m", "benchmark.sweep", f"experiment={exp}", f"paths.results={results}",
            "method.protocol.few_iters.mean=10", *extra]


def kill_at(cmd: list[str], results: Path, moment: str | None, delay: float) -> bool:
    """Start the sweep and SIGKILL it at `moment` (or after `delay` seconds); False if it ended first."""
    proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True,
                            preexec_fn=die_with_parent)
    t0, seen = time.time(), set(results.glob(MOMENTS[moment])) if moment else set()
    while proc.poll() is None:
        if moment is None and time.time() - t0 >= delay:
            break
        if moment is not None and set(results.glob(MOMENTS[moment])) - seen:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every worker it started
    proc.wait()
    return True


def finish(cmd: list[str]) -> float:
    """Run the sweep to the end (relaunching up to five times); returns the wall seconds."""
    t0 = time.time()
    for _ in range(5):
        if subprocess.run(cmd, cwd=PROJECT, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          preexec_fn=die_with_parent).returncode == 0:
            return time.time() - t0
    raise RuntimeError("the relaunched sweep did not finish")


def difference(a: Path, b: Path, tolerance: float = 0.0) -> str:
    """What differs between two results folders' records (IGNORED aside); "" when nothing does.
    With a `tolerance`, numeric columns may differ by that much relative to their values (a GPU
    without deterministic kernels for every op); everything else must be identical."""
    for table, keys in (("runs", ["run_id"]), ("steps", ["run_id", "step"]), ("evals", ["run_id", "step", "phase"])):
        x, y = (records.read(r, table) for r in (a, b))
        x, y = (d.drop(columns=[c for c in IGNORED if c in d.columns]).sort_values(keys).reset_index(drop=True)
                for d in (x, y))
        if x.shape != y.shape:
            return f"{table}: {x.shape[0]} rows against {y.shape[0]}"
        differ = [c for c in x.columns if not x[c].equals(y[c])]
        if tolerance and differ:
            worst = {c: relative_difference(x[c], y[c]) for c in differ}
            if all(v <= tolerance for v in worst.values()):
                continue
            return f"{table}: " + ", ".join(f"{c} (max relative difference {v:.3g})" for c, v in worst.items())
        if differ:
            return f"{table}: {', '.join(differ)} differ"
    return ""


def relative_difference(x, y) -> float:
    """The largest |x - y| / max(|x|, |y|) over two columns (inf for non-numeric or missing mismatches)."""
    if not (pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y)) or \
            not x.isna().equals(y.isna()):
        return float("inf")
    a, b = x.dropna().to_numpy(float), y.dropna().to_numpy(float)
    scale = np.maximum(np.maximum(abs(a), abs(b)), 1e-12)
    return float(np.max(abs(a - b) / scale, initial=0.0))


def trial(tmp: Path, name: str, exp: Path, clean: tuple[Path, float], extra: list[str], moment: str | None,
          rng, tolerance: float = 0.0) -> str:
    """Kill, relaunch, compare; `clean` = (the uninterrupted results, their wall seconds)."""
    results, (reference, seconds) = tmp / name, clean
    cmd = command(exp, results, extra)
    killed = kill_at(cmd, results, moment, rng.uniform(0.1, 0.9) * seconds)
    if killed and rng.random() < 0.5:  # sometimes a second kill, of the relaunch
        kill_at(cmd, results, None, rng.uniform(0.1, 0.9) * seconds)
    finish(cmd)
    diff = difference(reference, results, tolerance)
    return ("identical" if not diff else f"DIFFERENT ({diff})") + ("" if killed else " (ended before the kill)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.measure.kill_trials", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=12, help="run trials (the methods take turns)")
    p.add_argument("--sweeps", type=int, default=3, help="trials of a two-worker sweep over the three methods")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest relative difference of a numeric record that still counts as identical (0: bit "
                        "for bit, what a CPU gives; a GPU run without deterministic=true may need e.g. 1e-3)")
    p.add_argument("overrides", nargs="*", help="run config overrides for every trial (e.g. device=cuda "
                                                "mixed_precision=fp16)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    methods = group_options("method")
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean = {}
        for m in methods:
            (tmp / m).mkdir()
            exp = experiment(tmp / m, [m], [59])
            clean[m] = (exp, (tmp / f"clean-{m}", finish(command(exp, tmp / f"clean-{m}", args.overrides))))
        kinds = [None, *MOMENTS]
        for i in range(args.trials):
            method, moment = methods[i % 3], kinds[i % len(kinds)]
            result = trial(tmp, f"run{i}", clean[method][0], clean[method][1], args.overrides, moment, rng,
                           args.tolerance)
            print(f"run trial {i + 1}: {method}, kill {'at a random time' if moment is None else 'after a ' + moment}"
                  f" -> {result}", flush=True)
            counts[result] = counts.get(result, 0) + 1
        (tmp / "sweep").mkdir()
        exp = experiment(tmp / "sweep", methods, [59, 60])
        two_workers = [*args.overrides, "launcher.workers=2"]
        reference = (tmp / "clean-sweep", finish(command(exp, tmp / "clean-sweep", two_workers)))
        for i in range(args.sweeps):
            result = trial(tmp, f"sweep{i}", exp, reference, two_workers, None, rng, args.tolerance)
            print(f"sweep trial {i + 1}: two workers, kill at a random time -> {result}", flush=True)
            counts[result] = counts.get(result, 0) + 1
    total = args.trials + args.sweeps
    print(f"\n{total} trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0 if not any(k.startswith("DIFFERENT") for k in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
