"""The preflight's price of a sweep: L_det is paid only where a run reads or logs it, and a method
the timing profile lacks is priced from a stated fallback instead of ending in a traceback."""

from __future__ import annotations

import pytest
import yaml

from benchmark.core.provenance import project_path
from benchmark.preflight.estimate import load_profile
from benchmark.preflight.preflight import Preflight, estimate, format_estimate
from benchmark.protocol.experiments import expand, load_experiment

PROFILE = project_path("slurm/a100.timing.yaml")


def forecast(name: str, extra: list[str], profile=PROFILE, narrow=None) -> Preflight:
    exp = load_experiment(name)
    pf = Preflight()
    pf.costs, pf.trajectories, pf.class_images_s, pf.profile = estimate(
        expand(exp, extra, narrow or {"concept": ["cat", "dog"]}), {"timing": str(profile)}, 0, exp.get("runs_per_job"))
    return pf


def gpu_hours(pf: Preflight, strategy: str | None = None) -> float:
    return sum(c.expected_s for c in pf.costs if strategy in (None, c.strategy)) / 3600


def test_ldet_is_priced_only_where_a_run_reads_or_logs_it():
    watched, always = forecast("table1", []), forecast("table1", ["ldet.log=always"])
    assert gpu_hours(watched, "dvar") == pytest.approx(gpu_hours(always, "dvar")), "DVAR reads it either way"
    for strategy in ("baseline", "clip_s", "few_iters_mean", "few_iters_max"):
        assert gpu_hours(watched, strategy) < gpu_hours(always, strategy)
    shared = lambda pf: sum(t.expected_s for t in pf.trajectories)  # noqa: E731
    assert shared(watched) < 0.9 * shared(always), "the trajectories stop computing L_det once DVAR stopped"
    # what replay and the ablations read is kept
    traces = forecast("traces", [])
    assert gpu_hours(traces) == pytest.approx(gpu_hours(forecast("traces", ["ldet.log=always"])))


def test_a_method_missing_from_the_profile_is_priced_from_the_slowest_with_a_warning(tmp_path):
    raw = yaml.safe_load(PROFILE.read_text())
    del raw["methods"]["custom_diffusion"]
    partial = tmp_path / "partial.timing.yaml"
    partial.write_text(yaml.safe_dump(raw))
    full, cut = forecast("table1", [], PROFILE), forecast("table1", [], partial)
    assert load_profile(partial).methods.keys() == {"textual_inversion", "dreambooth_lora"}
    slowest = {k: max(m[k] for m in raw["methods"].values()) for k in ("update_s", "ldet_s", "image_s")}
    assert cut.profile.method("custom_diffusion") == slowest
    assert gpu_hours(cut, "dvar") != gpu_hours(full, "dvar") and gpu_hours(cut) > 0
    listing = "\n".join(format_estimate(cut, {}))
    assert "warning: custom_diffusion not in" in listing and "--record" in listing
    assert "warning" not in "\n".join(format_estimate(full, {}))


@pytest.mark.parametrize("body", ["methods: {}\ngpu: x\nmodels: [sd15]\nsetup_s: 1\nclass_image_s: 1\n",
                                  "- a list\n", "gpu: [unclosed\n"])
def test_a_broken_profile_is_one_line_naming_the_file(body, tmp_path):
    from benchmark.core.errors import ConfigError

    path = tmp_path / "bad.timing.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=f"{path}: not a timing profile"):
        load_profile(path)
