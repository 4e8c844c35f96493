"""One command-line convention: subcommand words, key=value options, --switches only without a value;
the natural misuses get one line with the fix (exit 2); --help reads like a man page."""

import os
import subprocess
import sys

import pytest

from benchmark.core.cli_args import Spec, UsageError, parse
from tests.helpers import CONF_DIR, PROJECT_ROOT


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# --- the misuses the issue names, as a user types them -----------------------------------------------
def test_run_with_a_flag_names_the_override():
    line = one_line_error(cli("benchmark.run", "--experiment", "X"))
    assert "write experiment=X instead of --experiment X" in line


def test_sweep_with_a_flag_names_the_key():
    line = one_line_error(cli("benchmark.sweep", "--experiment", "smoke"))
    assert "write experiment=smoke instead of --experiment smoke" in line


@pytest.mark.slow
def test_analysis_takes_experiment_as_a_key(tmp_path):
    proc = cli("analysis", "report", "experiment=nothing_here", f"results={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == f"reading the runs of nothing_here under {tmp_path}"
    assert proc.stderr.splitlines()[-1].startswith("error: no completed runs of experiment 'nothing_here'"), \
        "the key was taken; the records are missing"
    line = one_line_error(cli("analysis", "report", "--experiment", "smoke"))
    assert "write experiment=smoke instead of --experiment smoke" in line
    line = one_line_error(cli("analysis", "report"))
    assert "name the experiment: python -m analysis report experiment=NAME" in line


@pytest.mark.parametrize("args, fix", [
    (["benchmark.run", "--seed=3"], "write seed=3 instead of --seed=3"),
    (["benchmark.run", "force=true"], "--force is a switch: write --force instead of force=true"),
    (["benchmark.run", "model=sd16"], "Unknown model 'sd16' (config key `model`). Did you mean: sd15, sd14?"),
    (["benchmark.sweep", "experiment=smoke", "--concepts", "cat", "dog"], "write concept=cat,dog instead of --concepts cat dog"),
    (["benchmark.sweep", "experiment=smoke", "--profile", "slurm/a100.yaml"], "write profile=slurm/a100.yaml instead of"),
    (["benchmark.sweep", "statu", "experiment=smoke"], "unknown command `statu`"),
    (["benchmark.sweep", "experiment=smoke", "--dry_run"], "Did you mean: --dry-run?"),
    (["benchmark.preflight", "--experiment", "smoke"], "write experiment=smoke instead of --experiment smoke"),
    (["analysis", "replay", "experiment=x", "criterion=dvar", "--grid", "window=1,2"],
     "give each hyperparameter as its own key, e.g. window=100,310 threshold=0.1,0.15, instead of --grid"),
    (["analysis", "replay", "experiment=x", "criterion=dvar", "windw=3"], "unknown key `windw`: dvar takes window"),
    (["analysis", "tables", "experimnt=smoke"], "unknown key `experimnt`; keys: experiment=, results=, out=."),
    (["analysis", "experiment=smoke"], "name a command: python -m analysis report | tables"),
    (["benchmark.concepts", "validate", "duck_toy", "--data", "/tmp/d"], "write data=/tmp/d instead of --data /tmp/d"),
    (["benchmark.concepts", "fetch", "--from=/m"], "write from=/m instead of --from=/m"),
    (["benchmark.weights", "list", "--experiment", "table1"], "write experiment=table1 instead of --experiment table1"),
])
def test_misuses_get_one_line_with_the_fix(args, fix):
    assert fix in one_line_error(cli(*args))


# --- --help ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["benchmark.run", "benchmark.sweep", "analysis", "benchmark.concepts",
                                     "benchmark.weights", "benchmark.preflight"])
def test_help_is_a_short_page_with_examples(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"usage: python -m {command} ") and len(lines) <= 70, len(lines)
    examples = lines[lines.index("examples:") + 1:]
    assert any(line.strip().startswith(f"python -m {command}") for line in examples)
    documented = [line for line in lines if line.startswith("  ") and "=" in line.split()[0]]
    assert documented, "the keys are listed as key=value"
    assert not any(f"--{k}" in proc.stdout for k in ("experiment", "concepts", "data", "profile", "grid"))


def test_run_help_reads_its_comments_from_conf():
    out = cli("benchmark.run", "--help").stdout
    line = next(line for line in out.splitlines() if line.split()[:1] == ["seed=59"])
    run_yaml = (CONF_DIR / "run.yaml").read_text()
    comment = next(ln for ln in run_yaml.splitlines() if ln.startswith("seed:")).split("#", 1)[1].strip()
    assert line.split(None, 1)[1] == comment
    assert "model=tiny*" in out.split()  # the default of each group is marked
    assert "ldet.fixed.SOURCE=true" in out and "images|captions|latents|noise|timesteps" in out


@pytest.mark.slow
def test_progress_lines_go_to_stderr_and_the_result_to_stdout(tmp_path):
    from tests.helpers import TINY

    proc = cli("benchmark.run", *TINY, "log_every=2", "strategy=few_iters", "strategy.steps=4",
               f"paths.results={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("run ") and len(proc.stdout.splitlines()) == 1, proc.stdout
    assert "step 2/4 loss" in proc.stderr and "step 4/4 loss" in proc.stderr


def test_run_prints_the_composed_config():
    proc = cli("benchmark.run", "strategy=few_iters", "strategy.steps=7", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["strategy"] == {"name": "few_iters", "steps": 7}


# --- the grid keys of a sweep narrow it ---------------------------------------------------------------
def test_sweep_grid_keys_narrow_the_grid(tmp_path, capsys):
    from benchmark.sweep.cli import main as sweep

    assert sweep(["status", "experiment=smoke", "method=textual_inversion", "strategy=dvar,baseline",
                  f"paths.results={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("experiment smoke: 2 runs - 2 pending")
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    assert [r[:2] for r in rows] == [["textual_inversion", "dvar"], ["textual_inversion", "baseline"]]
    assert not tmp_path.joinpath("work").exists(), "status writes nothing"


# --- the parser itself ------------------------------------------------------------------------------
SPECS = {"go": Spec(keys=("experiment", "concept"), switches=("dry-run",), overrides=True, renamed={"concepts": "concept"}),
         "show": Spec(keys=("data",), words=True)}


def test_parse_splits_words_keys_switches_and_overrides():
    p = parse(["go", "experiment=e", "ldet.every=2", "--dry-run", "concept=a,b", "+x.y=1"], "prog", SPECS)
    assert (p.command, p.options, p.switches, p.overrides) == ("go", {"experiment": "e", "concept": "a,b"},
                                                                {"dry-run"}, ["ldet.every=2", "+x.y=1"])
    p = parse(["show", "cat", "data=/d"], "prog", SPECS)
    assert (p.command, p.words, p.options) == ("show", ["cat"], {"data": "/d"})
    assert parse(["--help"], "prog", SPECS).help and parse(["show", "-h"], "prog", SPECS).command == "show"
    assert parse(["experiment=e"], "prog", SPECS, default="go").command == "go"


@pytest.mark.parametrize("argv, message", [
    (["go", "--experiment", "e"], "write experiment=e instead of --experiment e"),
    (["go", "--concepts", "a", "b", "experiment=e"], "write concept=a,b instead of --concepts a b"),
    (["go", "--dry-run=yes"], "--dry-run is a switch without a value"),
    (["go", "dry_run=true"], "--dry-run is a switch: write --dry-run instead of dry_run=true"),
    (["go", "stray"], "unexpected word `stray`"),
    (["show", "cat", "--data", "/d", "dog"], "write data=/d instead of --data /d"),
    (["show", "colour=red"], "unknown key `colour`; keys: data=."),
    (["experiment=e"], "name a command: prog go | show"),
    (["shw"], "unknown command `shw`; prog takes go | show. Did you mean: show?"),
])
def test_parse_refuses_with_the_fix(argv, message):
    with pytest.raises(UsageError) as err:
        parse(argv, "prog", SPECS)
    assert message in str(err.value) and "\n" not in str(err.value)
