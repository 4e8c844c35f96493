"""The GPU check (`make gpu-check`) runs its whole logic on a CPU with device=cpu: timings at fp16
and bf16, L_det determinism, a SIGKILL after every snapshot and the relaunches, the summary and the
timing profile the preflight reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark.preflight.estimate import load_profile
from tests.helpers import PROJECT_ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "-m", "benchmark.measure.gpu_check", "device=cpu", "model=tiny", "metrics=tiny",
                           "methods=dreambooth_lora", f"out={out}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cpu") and set(summary["timings"]) == {"fp16", "bf16"}
    for precision in ("fp16", "bf16"):
        r = summary["timings"][precision]["dreambooth_lora"]
        assert 0 < r["update_ms"] < r["update_with_ldet_ms"] and r["image_s"] > 0
        assert r["ldet_repeat_abs_diff"] == 0, "a CPU computes the same L_det twice"
    resume = summary["resume"]
    assert resume["runs"] == 2 and resume["kills"] == 2 and resume["identical"], resume
    profile = load_profile(out / "timing.yaml")
    assert profile.models == ["tiny"] and "benchmark.measure.gpu_check" in profile.source
    assert profile.methods["dreambooth_lora"]["update_s"] == pytest.approx(summary["timings"]["fp16"]["dreambooth_lora"]["update_ms"] / 1e3, rel=1e-3)
    assert "resume after SIGKILL: 2 runs, 2 kills -> identical" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["methods=dreambooth"], "methods=dreambooth: unknown dreambooth; choose from"),
    (["precisions=fp8"], "precisions=fp8: unknown fp8"),
    (["tolerance=abc"], "tolerance=abc: expected a number"),
    (["--out", "x"], "write out=x instead of --out x"),
    (["mixed_precision=fp8", "device=cpu"], "mixed_precision must be one of"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmark.measure.gpu_check", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1",
                                                       "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.iterdir()), "nothing written"
