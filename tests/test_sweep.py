"""Sweeps on this machine: phases, derived Few-iters, skip-done, rerun of deleted or failed runs."""

import json
import re
from pathlib import Path

import pytest
import yaml

from benchmark.store import records
from benchmark.sweep.cli import main as sweep
from tests.helpers import TINY

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = pytest.mark.slow

OVERRIDES = [*TINY, "method.max_train_steps=10", "method.protocol.clip_s.eval_every=2",
             "method.protocol.clip_s.patience=0", "method.protocol.clip_s.eps=0.5",
             "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9",
             "method.protocol.baseline.eval_every=5"]


def experiment(tmp_path: Path, **changes) -> Path:
    exp = {"overrides": OVERRIDES,
           "grid": {"method": ["textual_inversion"], "strategy": ["clip_s", "few_iters_mean", "few_iters_max", "dvar"],
                    "concept": ["sample_duck_toy"], "seed": [59, 60]},
           "few_iters": "derive", **changes}
    path = tmp_path / "mini.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    return path


def stamps(results: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*.parquet")}


def test_local_sweep_phases_skip_and_rerun(tmp_path, capsys):
    results = tmp_path / "results"
    args = [f"experiment={experiment(tmp_path)}", f"paths.results={results}"]
    assert sweep(args) == 0
    runs = records.read(results, "runs")
    assert len(runs) == 8 and (runs.status == "completed").all()
    clip = runs[runs.strategy == "clip_s"].iterations
    derived = json.loads((results / "work" / "mini" / "few_iters_steps.json").read_text())["textual_inversion"]
    assert derived["mean"] == round(clip.mean()) and derived["max"] == clip.max()
    assert (runs[runs.strategy == "few_iters_mean"].iterations == derived["mean"]).all()
    assert (runs[runs.strategy == "few_iters_max"].iterations == derived["max"]).all()
    steps = records.read(results, "steps")
    assert set(steps.run_id) == set(runs.run_id), "every run left its steps"

    before = stamps(results)
    capsys.readouterr()
    assert sweep(args) == 0
    assert "0 runs to do" in capsys.readouterr().out
    assert stamps(results) == before, "a finished experiment submits nothing"

    victim, partly = runs[runs.strategy == "dvar"].run_id
    for table in ("runs", "steps", "evals"):
        for f in (results / table).rglob(f"{victim}*.parquet"):
            f.unlink()
    sorted((results / "steps").rglob(f"{partly}*.parquet"))[-1].unlink()  # a run whose steps were deleted in part
    assert sweep(args) == 0
    after = stamps(results)
    rerun = [p for p in after if after[p] != before.get(p)]
    assert sorted(p.stem for p in rerun) == sorted([victim, partly]), "only the deleted runs ran again"
    assert len(records.read(results, "runs")) == 8
    assert list((results / "replaced").rglob(f"{partly}.parquet")), "the rest of its records was moved aside"


def test_rerun_of_a_damaged_clip_s_runs_file(tmp_path, capsys):
    """--rerun-failed repairs a CLIP-s run whose runs file is damaged: the damaged file is moved aside
    like any damaged record, the run's Few-iters keep the steps they derived, and the snapshots kept
    for them while they were waiting are removed once no run is left to branch."""
    results = tmp_path / "results"
    args = [f"experiment={experiment(tmp_path, overrides=[*OVERRIDES, 'checkpoint_every=2'])}",
            f"paths.results={results}"]
    assert sweep(args) == 0
    snapshots = results / "work" / "mini" / "trajectories"
    assert not list(snapshots.rglob("*.pt")), "the sweep removed its snapshots"
    runs = records.read(results, "runs")
    damaged = next((results / "runs").rglob(f"{runs[runs.strategy == 'clip_s'].run_id.iloc[0]}.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:50])
    assert sweep([*args, "--rerun-failed"]) == 0
    assert list((results / "replaced").rglob(damaged.name)), "the damaged runs file was moved aside"
    assert not list(snapshots.rglob("*.pt")), "no snapshot stays once no run is left to branch"
    capsys.readouterr()
    sweep(["status", *args])
    assert "8 done" in capsys.readouterr().out
    assert records.read(results, "runs").run_id.nunique() == 8, "the Few-iters kept their run ids"


def test_failed_runs_are_listed_and_rerun_on_demand(tmp_path, capsys):
    results = tmp_path / "results"
    exp = experiment(tmp_path, grid={"method": ["textual_inversion", "dreambooth_lora"], "strategy": ["dvar"],
                                     "concept": ["sample_duck_toy"], "seed": [59]},
                     per_method={"dreambooth_lora": ["method.lora.target_modules=[no_such_layer]"]})
    args = [f"experiment={exp}", f"paths.results={results}"]
    assert sweep(args) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out and "failed or cancelled runs" in out and "no_such_layer" in out and "log.txt" in out
    log_file = Path(re.search(r"log: (\S+log\.txt)", out).group(1))
    assert "Traceback" in log_file.read_text() and "no_such_layer" in log_file.read_text()
    failed = stamps(results)
    assert sweep(args) == 1, "without --rerun-failed nothing runs, and the experiment is still incomplete"
    assert stamps(results) == failed
    assert sweep([*args, "--rerun-failed"]) == 1
    changed = [p for p, t in stamps(results).items() if failed[p] != t]
    assert len(changed) == 1 and "dreambooth_lora" in str(changed[0])


def test_sweep_refuses_to_start_with_a_missing_concept(tmp_path, capsys):
    exp = experiment(tmp_path, grid={"method": ["textual_inversion"], "strategy": ["dvar"],
                                     "concept": ["duck_toy"], "seed": [59]})
    assert sweep([f"experiment={exp}", f"paths.results={tmp_path}/r", f"paths.data={tmp_path}/nodata"]) == 2
    assert "benchmark.concepts fetch duck_toy" in capsys.readouterr().err
    assert not (tmp_path / "r" / "runs").exists()


def test_unknown_experiment_suggests(capsys):
    assert sweep(["experiment=smok"]) == 2
    assert "Did you mean: smoke" in capsys.readouterr().err


SIZES = {"smoke": 15, "table1": 720, "toy_smoke": 15, "toy_tuning": 12, "toy_table1": 180}


@pytest.mark.parametrize("name", list(SIZES))
def test_committed_experiments_expand(name, capsys):
    """The first comment is the command; the grid composes into valid run configs."""
    from benchmark.protocol.config import validate
    from benchmark.protocol.experiments import expand, load_experiment

    exp = load_experiment(name)
    first = Path(exp["path"]).read_text().splitlines()[0]
    assert first.startswith(f"# python -m benchmark.sweep experiment={name}")
    jobs = expand(exp, [])
    assert len(jobs) == SIZES[name]
    for job in jobs:
        if job.cfg is not None:
            validate(job.cfg)
    strategies = set(exp["grid"]["strategy"])
    assert {j.derive for j in jobs} == ({None, "mean", "max"} if "few_iters_mean" in strategies else {None})


def test_the_toy_table_is_reported_on_concepts_it_was_not_tuned_on():
    from benchmark.protocol.experiments import load_experiment

    table, tuning = load_experiment("toy_table1"), load_experiment("toy_tuning")
    assert tuning["overrides"] == [*table["overrides"], "ldet.log=always"], "the same runs, with traces for replay"
    cd_tuning, cd_table = tuning["per_method"]["custom_diffusion"], table["per_method"]["custom_diffusion"]
    assert set(cd_tuning) < set(cd_table), "the same class priors; the table adds the tuned stopping settings"
    assert not any("protocol" in o for o in cd_tuning)
    assert len(table["grid"]["concept"]) == len(tuning["grid"]["concept"]) == 4
    assert not set(table["grid"]["concept"]) & set(tuning["grid"]["concept"])


def test_a_narrowed_sweep_keeps_the_whole_grid_in_the_plan(tmp_path):
    """Analysis reads the plan: running one seed of the grid must not hide the other seed's runs."""
    results = tmp_path / "results"
    assert sweep([f"experiment={experiment(tmp_path)}", f"paths.results={results}", "seed=59", "strategy=dvar"]) == 0
    plan = json.loads(records.plan_file(results, "mini").read_text())
    assert len(plan["run_ids"]) == 4, "clip_s and dvar of both seeds"
    assert len(plan["waiting"]) == 4, "the Few-iters runs of both seeds wait for their CLIP-s runs"
    ran = set(records.read(results, "runs").run_id)
    assert len(ran) == 1 and ran < set(plan["run_ids"])
