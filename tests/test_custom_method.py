"""A method added as one plugin: a module outside the package and its conf (DVAR_CONF_PATH) run
through the sweep, its preflight and estimate, and the report, with no other file changed."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from benchmark.core.errors import ConfigError
from benchmark.protocol.config import validate
from benchmark.store import records
from tests.helpers import PROJECT_ROOT

CONF = PROJECT_ROOT / "tests" / "conf"
TINY = ["model=tiny", "metrics=tiny", "progress=false", "log_every=1000", "train_batch_size=1", "ldet.batch_size=4",
        "sampling.steps=2", "sampling.n_train_prompts=2", "sampling.save_images=none", "method.max_train_steps=6",
        "method.protocol.baseline.eval_every=3", "method.protocol.dvar.window=3", "method.protocol.dvar.threshold=0.9"]


def command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVAR_CONF_PATH": str(CONF), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_a_method_from_a_test_module_runs_through_sweep_preflight_and_report(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    exp = {"overrides": TINY, "few_iters": "pinned",
           "grid": {"method": ["conv_out_bias"], "strategy": ["baseline", "dvar"], "concept": ["sample_duck_toy"],
                    "seed": [59]}}
    experiment = tmp_path / "own_method.yaml"
    experiment.write_text("# python -m benchmark.sweep experiment=<this file>\n" + yaml.safe_dump(exp))
    # A profile of the tiny model that knows Textual Inversion only: the new method takes the fallback.
    profile = tmp_path / "tiny.timing.yaml"
    profile.write_text(yaml.safe_dump({"gpu": "this CPU", "models": ["tiny"], "setup_s": 5, "class_image_s": 0.1,
                                       "methods": {"textual_inversion": {"update_s": 0.1, "ldet_s": 0.05,
                                                                         "image_s": 0.2}}}))
    args = [f"experiment={experiment}", f"paths.results={results}", f"launcher.timing={profile}"]

    pre = command("benchmark.preflight", *args)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    said = pre.stdout + pre.stderr
    assert "conv_out_bias" in said and "priced as its slowest method" in said, said

    swept = command("benchmark.sweep", *args)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    runs = records.read(results, "runs")
    assert sorted(runs.strategy) == ["baseline", "dvar"] and set(runs.method) == {"conv_out_bias"}
    assert (runs.status == "completed").all()
    steps = records.read(results, "steps")
    assert steps[steps.step > 0].train_loss.notna().all() and steps.l_det.notna().any()  # step 0: no update

    # It trained: the saved bias moved away from the base model's, and the token file is there too.
    baseline = runs[runs.strategy == "baseline"].iloc[0]
    weights = results / baseline.weights_dir
    bias = load_file(str(weights / "conv_out_bias.safetensors"))["conv_out.bias"]
    assert (weights / "learned_embeds.safetensors").exists()
    from benchmark.engine.backbone import load_backbone
    from benchmark.protocol.config import cache_root, compose

    cfg = compose([*TINY, "method=textual_inversion"])
    base = load_backbone(cfg["model"], cache_root(cfg)).unet.conv_out.bias
    assert not torch.allclose(bias, base), "the method trained its parameter"

    report = command("analysis", "report", f"experiment={experiment.stem}", f"results={results}", f"out={out}")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "conv_out_bias" in (out / "table1.md").read_text()


def test_a_bad_plugin_is_one_line_naming_the_key():
    from benchmark.protocol.config import compose

    cfg = compose(["method=textual_inversion", "method.plugin=tests.no_such_module:Nothing"])
    try:
        validate(cfg)
    except ConfigError as err:
        assert "method.plugin" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a missing plugin module passed validation")


def test_validating_a_config_does_not_import_torch():
    code = ("import sys; from benchmark.protocol.config import compose, validate; "
            "validate(compose(['method=custom_diffusion'])); print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
