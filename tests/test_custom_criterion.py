"""A researcher's own criterion in one file outside the package (examples/plateau_criterion.py) runs in
a sweep, replays on the stored traces where it stopped live, is priced by the estimate like the
strategies it resembles, and has its row in the report's tables."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.cli import main as analysis
from analysis.load import completed_runs, evals_of, steps_of
from analysis.replay import replay, traces
from benchmark.protocol.stopping import Criterion
from benchmark.sweep.cli import main as sweep
from tests.helpers import PROJECT_ROOT, TINY, compose

PLATEAU = "examples/plateau_criterion.py:Plateau"
PARAMS = {"window": 3, "threshold": 0.5}


class ClipPlateau(Criterion):
    """A criterion that watches train CLIP img (the estimate must price its in-loop evaluations)."""

    signal = "train_clip_img"

    def __init__(self, patience: int = 2):
        super().__init__()
        self.patience = patience

    def update(self, step, value):
        return False


def experiment(tmp_path: Path, criterion: str = PLATEAU) -> Path:
    exp = {"overrides": [*TINY, "method.max_train_steps=16", "method.protocol.baseline.eval_every=4", "ldet.log=always"],
           "grid": {"method": ["textual_inversion"], "strategy": ["baseline", "custom"],
                    "concept": ["sample_duck_toy"], "seed": [59]},
           "per_strategy": {"custom": [f"strategy.criterion={criterion}",
                                       *(f"+strategy.params.{k}={v}" for k, v in PARAMS.items())]}}
    path = tmp_path / "mine.yaml"
    path.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    return path


@pytest.mark.slow
def test_a_criterion_file_runs_replays_and_is_reported(tmp_path, capsys):
    results = tmp_path / "results"
    assert sweep([f"experiment={experiment(tmp_path)}", f"paths.results={results}"]) == 0
    runs = completed_runs(results, "mine")
    assert sorted(runs.strategy) == ["baseline", "custom"]
    live = runs[runs.strategy == "custom"].iloc[0]
    assert live.stop_reason == "criterion" and live.iterations < 16

    # the replay of the same criterion on the Baseline run's trace (same trajectory) stops where it stopped live
    base = runs[runs.strategy == "baseline"]
    trace = traces(base, steps_of(results, "mine", base.run_id), evals_of(results, "mine", base.run_id))[0]
    replayed = replay(trace, PLATEAU, PARAMS)
    assert (replayed["stop_step"], replayed["stopped"]) == (int(live.iterations), True)

    out = tmp_path / "analysis"
    assert analysis(["replay", "experiment=mine", f"results={results}", f"out={out}", f"criterion={PLATEAU}",
                     "window=3,4", "threshold=0.5"]) == 0
    assert len(pd.read_csv(out / "replay_plateau.csv")) == 2  # one row per combination

    assert analysis(["report", "experiment=mine", f"results={results}", f"out={out}"]) == 0
    assert re.search(r"\|\s*Custom\s*\|", (out / "table1.md").read_text()), "the criterion has its row in Table 1"


def test_the_estimate_prices_a_criterion_by_what_it_watches():
    from benchmark.preflight.estimate import load_profile, run_cost, run_seconds

    profile = load_profile(PROJECT_ROOT / "slurm" / "a100.timing.yaml")
    common = ["method=textual_inversion", "ldet.log=watched"]

    def seconds(*overrides):
        return run_seconds(compose([*common, *overrides]), profile, 300, 25)

    plateau = seconds("strategy=custom", f"strategy.criterion={PLATEAU}")
    clip = seconds("strategy=custom", "strategy.criterion=tests.test_custom_criterion:ClipPlateau")
    # L_det after every update and one final evaluation, as DVAR; evaluations every eval_every, as CLIP-s
    assert plateau == pytest.approx(seconds("strategy=dvar"))
    assert clip == pytest.approx(seconds("strategy=clip_s"))
    assert plateau > seconds("strategy=few_iters", "strategy.steps=300") and clip > plateau / 10
    # no paper number for a criterion of one's own: expected at its budget, an upper bound
    cfg = compose([*common, "strategy=custom", f"strategy.criterion={PLATEAU}"])
    cost = run_cost(cfg, "custom", profile, {}, 25)
    assert cost.expected_updates == cost.worst_updates == cfg["strategy"]["max_steps"]


@pytest.mark.parametrize("spec, message", [
    ("nomodule:X", "strategy.criterion=nomodule:X: cannot import module nomodule"),
    ("examples/nofile.py:X", "file examples/nofile.py does not exist"),
    ("examples/plateau_criterion.py:Nope", "has no Criterion subclass Nope"),
    ("plain", "give FILE.py:Class or module.path:Class"),
])
def test_a_bad_criterion_is_one_line_and_exit_2(tmp_path, capsys, spec, message):
    assert sweep([f"experiment={experiment(tmp_path, spec)}", f"paths.results={tmp_path}/r"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plateau_decides_on_two_windows():
    """The example's rule by hand: relative drop of the last window's mean against the one before."""
    from benchmark.protocol.criterion_file import load_criterion

    c = load_criterion(PLATEAU)(window=2, threshold=0.1)
    values = [10.0, 8.0, 6.0, 5.0, 4.9, 4.8, 4.8]
    stops = [c.update(step, v) for step, v in enumerate(values)]
    # at step 3: (9 - 5.5) / 9 = 0.39; step 4: (7 - 4.95) / 7 = 0.29; step 5: (5.5 - 4.85) / 5.5 = 0.118;
    # step 6: (4.95 - 4.8) / 4.95 = 0.03 < 0.1
    assert stops == [False] * 6 + [True] and c.stopped_at == 6
    assert math.isclose(c.value, 0.15 / 4.95)
