"""Every config composes and validates; bad values fail before training, naming the key."""

import subprocess
import sys

import pytest

from benchmark.core.errors import ConfigError
from benchmark.protocol.config import check_groups, run_id, validate
from tests.helpers import CONF_DIR, PROJECT_ROOT, compose

GROUPS = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in ("model", "metrics", "method", "strategy")}


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if option == "few_iters":
        overrides.append("strategy.steps=10")
    if option == "custom":
        overrides.append("strategy.criterion=examples/plateau_criterion.py:Plateau")
    cfg = compose(overrides)
    validate(cfg)
    assert len(run_id(cfg)) == 10


def test_paper_hyperparameters_reach_the_strategies():
    cfg = compose(["method=dreambooth_lora", "strategy=dvar"])
    assert (cfg["strategy"]["window"], cfg["strategy"]["threshold"], cfg["strategy"]["max_steps"]) == (440, 0.4, 1000)
    cfg = compose(["method=custom_diffusion", "strategy=clip_s"])
    assert (cfg["strategy"]["patience"], cfg["strategy"]["eps"], cfg["strategy"]["eval_every"]) == (6, 0.02, 50)
    cfg = compose(["method=textual_inversion", "strategy=few_iters_max"])
    assert cfg["strategy"]["steps"] == 850


def test_run_id_ignores_paths_but_not_semantics():
    a = compose(["paths.results=/a", "progress=false"])
    assert run_id(a) == run_id(compose(["paths.results=/b"]))
    assert run_id(a) != run_id(compose(["seed=1"]))
    assert run_id(a) != run_id(compose(["strategy.window=100"]))


@pytest.mark.parametrize("overrides, key", [
    (["strategy=dvar", "strategy.window=1"], "strategy.window"),
    (["strategy=dvar", "strategy.threshold=1.0"], "strategy.threshold"),
    (["strategy=dvar", "strategy.threshold=0"], "strategy.threshold"),
    (["strategy=clip_s", "strategy.patience=-1"], "strategy.patience"),
    (["strategy=baseline", "strategy.max_steps=0"], "strategy.max_steps"),
    (["strategy=few_iters"], "strategy.steps"),
    (["concept=catstatue"], "concept"),
    (["method.plugin=benchmark.engine.methods.textual_inversio:TextualInversion"], "method.plugin"),
    (["method.plugin=TextualInversion"], "method.plugin"),
    (["strategy.name=dvra"], "strategy"),
    (["ldet.batch_size=0"], "ldet.batch_size"),
    (["ldet.timestep_range=[500,400]"], "ldet.timestep_range"),
    (["strategy=dvar", "ldet.enabled=false"], "ldet.enabled"),
    (["mixed_precision=fp8"], "mixed_precision"),
    (["model.resolution=60"], "model.resolution"),
    (["sampling.scheduler=euler"], "sampling.scheduler"),
])
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(overrides))


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ConfigError, match="Did you mean: cat_statue"):
        validate(compose(["concept=catstatue"]))
    with pytest.raises(ConfigError, match="Did you mean: textual_inversion"):
        check_groups(["method=textual_inversio"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.run", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_groups_and_options():
    out = run_cli("--help").stdout
    for group, options in GROUPS.items():
        for option in options:  # one line per choice, written as it is typed
            assert any(line.split()[0].rstrip("*") == f"{group}={option}" for line in out.splitlines() if line.strip())


def test_unknown_group_option_fails_with_the_choices():
    proc = run_cli("model=sd16")
    assert proc.returncode != 0
    assert "sd15" in proc.stderr and "tiny" in proc.stderr


@pytest.mark.slow
def test_bad_value_on_the_command_line_is_one_clear_line(tmp_path):
    proc = run_cli("strategy=dvar", "strategy.window=1", f"paths.results={tmp_path}")
    assert proc.returncode == 2
    assert "error: strategy.window must be an integer from 2 to" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
