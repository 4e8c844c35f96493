"""`python -m benchmark.measure.bench_sharing experiment=NAME [key=value ...]`: what training each trajectory
once saves, measured in one process.

Runs the experiment's sweep twice on this machine into temporary results folders — once with every
run trained on its own (`launcher.share_trajectories=false`), once as the sweep runs it (one training
per trajectory, derived Few-iters branching from snapshots) — and prints the updates each computed
(from the passes it logged) and its wall time, with the ratios. Then it checks that the two left the
same records (timing columns aside).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmark.store import records
from benchmark.sweep.cli import main as sweep


def sweep_once(overrides: list[str], results: Path, share: bool) -> dict:
    t0 = time.perf_counter()
    code = sweep([*overrides, f"paths.results={results}", f"launcher.share_trajectories={str(share).lower()}"])
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"the sweep failed (exit {code}); see above")
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment="))
    passes = [json.loads(line) for line in (results / "work" / Path(name).stem / "passes.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "updates": sum(p["updates"] for p in passes), "passes": len(passes)}


def same_records(a: Path, b: Path) -> bool:
    timing = ["train_s", "ldet_s", "sampling_s", "wall_s", "scoring_s", "total_s", "time_s", "setup_s",
              "final_eval_s", "started_at", "finished_at", "config_json", "hostname", "slurm_job_id"]
    for table, keys in (("runs", ["run_id"]), ("steps", ["run_id", "step"]), ("evals", ["run_id", "step", "phase"])):
        x, y = (records.read(r, table) for r in (a, b))
        x, y = (d.drop(columns=[c for c in timing if c in d.columns]).sort_values(keys).reset_index(drop=True)
                for d in (x, y))
        if not x.equals(y):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.measure.bench_sharing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="+", help="experiment=NAME and overrides for every run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        alone = sweep_once(args.overrides, Path(tmp) / "standalone", share=False)
        shared = sweep_once(args.overrides, Path(tmp) / "shared", share=True)
        same = same_records(Path(tmp) / "standalone", Path(tmp) / "shared")
    print(f"\n{'':<12}{'passes':>8}{'updates':>10}{'wall s':>10}")
    for label, r in (("standalone", alone), ("shared", shared)):
        print(f"{label:<12}{r['passes']:>8}{r['updates']:>10}{r['wall_s']:>10.1f}")
    print(f"standalone / shared: {alone['updates'] / shared['updates']:.2f}x updates, "
          f"{alone['wall_s'] / shared['wall_s']:.2f}x wall time; records identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
