"""The benchmark command runs end to end and prints every section (its timings are not asserted:
timings belong in the benchmark's output, not in tests; what is asserted is that every derived
number it prints — ratios, speed-ups, shares — is the one its printed measurements give)."""

import re
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_ROOT

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = pytest.mark.slow


def printed_quotient_is(printed: float, printed_half: float, num: float, num_half: float, den: float,
                        den_half: float) -> bool:
    """Whether `printed` (rounded to +- printed_half) can be num / den, both printed rounded to +- their half."""
    lo, hi = (num - num_half) / (den + den_half), (num + num_half) / (den - den_half)
    return lo - printed_half <= printed <= hi + printed_half


def test_bench_prints_every_section():
    proc = subprocess.run([sys.executable, "-m", "benchmark.measure.bench", "--methods", "textual_inversion", "--steps", "2",
                           "--blocks", "1", "--every", "2", "ldet.batch_size=2", "sampling.steps=1",
                           "sampling.n_train_prompts=2"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "machine: " in out and "torch 2" in out and "settings: " in out
    line = next(line for line in out.splitlines() if line.startswith("textual_inversion"))
    method, none, every, ratio, strided, strided_ratio = line.split()
    none, every, ratio, strided, strided_ratio = map(float, (none, every, ratio, strided, strided_ratio))
    assert printed_quotient_is(ratio, 0.005, every, 0.05, none, 0.05), line
    assert printed_quotient_is(strided_ratio, 0.005, strided, 0.05, none, 0.05), line

    levers = {}
    for lever in re.finditer(r"^(.+?)\s*([\d.]+)ms\s*([\d.]+)ms\s*([\d.]+)x$", out, re.M):
        name, without, with_, speedup = lever.group(1), *map(float, lever.groups()[1:])
        levers[name] = speedup
        assert printed_quotient_is(speedup, 0.005, without, 0.05, with_, 0.05), lever.group(0)
    for lever in ("cached VAE encodings", "batched sampling", "grouped passes", "one backbone load"):
        assert sum(name.startswith(lever) for name in levers) == 1, (lever, list(levers))

    m = re.search(r"harness overhead of the smoke experiment's (\d+) TI runs .*: wall ([\d.]+) s, of which "
                  r"training \+ L_det \+ evaluation ([\d.]+) s, setup ([\d.]+) s, records and checkpoints in the "
                  r"loop ([\d.]+) s, other (-?[\d.]+) s -> overhead (-?[\d.]+) % \(setup ([\d.]+) %, "
                  r"loop bookkeeping (-?[\d.]+) %\)", out)
    assert m, out[-1500:]
    runs = int(m.group(1))
    wall, work, setup, loop, rest, overhead, setup_pct, loop_pct = map(float, m.groups()[1:])
    assert runs == 3, "the smoke experiment's Baseline, CLIP-s and DVAR runs of Textual Inversion"
    assert abs(wall - (work + setup + rest)) <= 0.02, "wall = work + setup + other"
    assert printed_quotient_is(overhead, 0.05, 100 * (wall - work), 100 * 0.01, wall, 0.005)
    assert printed_quotient_is(setup_pct, 0.05, 100 * setup, 100 * 0.005, wall, 0.005)
    assert printed_quotient_is(loop_pct, 0.05, 100 * loop, 100 * 0.0005, wall, 0.005)
