"""One trajectory, many observers: the five strategies of a (concept, method, seed) trained once
write exactly the records of five standalone runs; Few-iters branch from a stored state later; L_det
variants of an ablation observe one trajectory; kill-and-resume of a shared trajectory is exact."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmark.engine.snapshots import trajectory_dir
from benchmark.engine.train import run, run_trajectory
from benchmark.protocol.config import trajectory_id
from benchmark.store import records
from tests.helpers import METHOD_NAMES, tiny_run_config, without_timing

pytestmark = pytest.mark.slow
STRATEGIES = {  # budgets that make every strategy stop differently on the tiny backbone
    "baseline": ["strategy.max_steps=8", "strategy.eval_every=3"],
    "clip_s": ["strategy.max_steps=8", "strategy.eval_every=2", "strategy.patience=0", "strategy.eps=0.5"],
    "few_iters_mean": ["strategy.steps=3"],
    "few_iters_max": ["strategy.steps=7"],
    "dvar": ["strategy.max_steps=8", "strategy.window=3", "strategy.threshold=0.9"],
}
RUN_KEYS = ["run_id", "concept", "seed", "model", "model_identity", "status", "iterations", "reported_step",
            "max_steps", "stop_reason", "train_clip_img", "train_clip_txt", "val_clip_img", "val_clip_txt", "dino",
            "div", "clip_pairing", "weights_dir"]  # config_json differs only in paths.results


def configs(method: str, results, strategies=STRATEGIES, *extra: str) -> list[dict]:
    return [tiny_run_config(method, s, results, "checkpoint_every=2", *overrides, *extra)
            for s, overrides in strategies.items()]


def assert_same_records(a, b) -> None:
    ra = records.read(a, "runs").sort_values("run_id")[RUN_KEYS].reset_index(drop=True)
    rb = records.read(b, "runs").sort_values("run_id")[RUN_KEYS].reset_index(drop=True)
    pd.testing.assert_frame_equal(ra, rb)
    for table in ("steps", "evals"):
        ta = without_timing(records.read(a, table)).sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
        tb = without_timing(records.read(b, table)).sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(ta, tb)


@pytest.mark.parametrize("method,precision", [(m, "no") for m in METHOD_NAMES] + [("dreambooth_lora", "fp16")])
def test_five_strategies_on_one_trajectory_write_the_standalone_records(method, precision, tmp_path):
    standalone, shared = tmp_path / "standalone", tmp_path / "shared"
    for cfg in configs(method, standalone, STRATEGIES, f"mixed_precision={precision}"):
        run(cfg, share_models=True)
    cfgs = configs(method, shared, STRATEGIES, f"mixed_precision={precision}")
    assert len({trajectory_id(c) for c in cfgs}) == 1
    rows = run_trajectory(cfgs, share_models=True)
    stops = {r["iterations"] for r in rows}
    assert len(stops) >= 3, f"the strategies stop at different steps ({stops})"
    assert_same_records(standalone, shared)
    assert not trajectory_dir(cfgs[0]).exists(), "snapshots are removed once every run is done"


def test_few_iters_branch_later_from_a_stored_state(tmp_path):
    """CLIP-s first (snapshots kept), Few-iters once their budgets are known: they start from the
    latest snapshot at or before their budget, their earlier rows from the trace."""
    standalone, shared = tmp_path / "standalone", tmp_path / "shared"
    for cfg in configs("textual_inversion", standalone):
        run(cfg, share_models=True)
    cfgs = configs("textual_inversion", shared)
    first = [c for c in cfgs if not c["strategy"]["name"].startswith("few_iters")]
    run_trajectory(first, share_models=True, keep_snapshots=True)
    snapshots = sorted(p.name.split(".")[0] for p in (trajectory_dir(cfgs[0]) / "snapshots").glob("*.meta.pt"))
    assert snapshots == [f"step{s:07d}" for s in (2, 4, 6)]
    run_trajectory([c for c in cfgs if c not in first], share_models=True)
    assert_same_records(standalone, shared)
    passes = [json.loads(line) for line in (shared / "work" / "default" / "passes.jsonl").read_text().splitlines()]
    assert [(p["start"], p["end"]) for p in passes[1:]] == [(2, 3), (6, 7)], "each branch from its own snapshot"


def test_a_run_by_hand_between_the_phases_leaves_the_snapshots_to_the_branches(tmp_path):
    """The sweep's first phase keeps its snapshots for the derived Few-iters; a run of the same
    trajectory launched by hand before the second phase must not take them away, and the second
    phase removes them once its branches are done."""
    results = tmp_path / "results"
    cfgs = configs("textual_inversion", results)
    first = [c for c in cfgs if not c["strategy"]["name"].startswith("few_iters")]
    run_trajectory(first, share_models=True, keep_snapshots=True)
    run(tiny_run_config("textual_inversion", "dvar", results, "checkpoint_every=2", "strategy.max_steps=8",
                        "strategy.window=4", "strategy.threshold=0.9"), share_models=True)
    run_trajectory([c for c in cfgs if c["strategy"]["name"].startswith("few_iters")], share_models=True,
                   keep_snapshots=False)
    passes = [json.loads(line) for line in (results / "work" / "default" / "passes.jsonl").read_text().splitlines()]
    assert [(p["start"], p["end"]) for p in passes[2:]] == [(2, 3), (6, 7)], "the branches found their snapshots"
    assert not trajectory_dir(cfgs[0]).exists(), "and removed them once no run was left to branch"


def test_l_det_variants_of_an_ablation_observe_one_trajectory(tmp_path):
    standalone, shared = tmp_path / "standalone", tmp_path / "shared"
    variants = [["ldet.batch_size=2"], ["ldet.fixed.noise=false", "ldet.accumulation=2"]]
    make = lambda results: [tiny_run_config("textual_inversion", "few_iters", results, "strategy.steps=5",  # noqa: E731
                                            "ldet.log=always", *v) for v in variants]
    for cfg in make(standalone):
        run(cfg, share_models=True)
    cfgs = make(shared)
    assert len({trajectory_id(c) for c in cfgs}) == 1
    run_trajectory(cfgs, share_models=True)
    assert_same_records(standalone, shared)
    steps = records.read(shared, "steps")
    a, b = (steps[steps.run_id == r].sort_values("step").l_det.to_numpy() for r in sorted(set(steps.run_id)))
    assert len(a) == len(b) == 6 and (a != b).all(), "each variant has its own evaluation batch"
