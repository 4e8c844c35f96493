"""The benchmark command runs end to end and prints every section (its numbers are not asserted:
timings belong in the benchmark's output, not in tests)."""

import subprocess
import sys

from tests.helpers import PROJECT_ROOT


def test_bench_prints_every_section():
    proc = subprocess.run([sys.executable, "-m", "benchmark.bench", "--methods", "textual_inversion", "--steps", "2",
                           "--blocks", "1", "--every", "2", "ldet.batch_size=2", "sampling.steps=1",
                           "sampling.n_train_prompts=2"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "machine: " in out and "torch 2" in out and "settings: " in out
    line = next(line for line in out.splitlines() if line.startswith("textual_inversion"))
    assert len(line.split()) == 6, "method, none, every step, ratio, every k, ratio"
    for lever in ("cached VAE encodings", "batched sampling", "grouped passes", "one backbone load"):
        assert lever in out
    assert "harness overhead of the smoke experiment" in out and "%" in out
