"""The path a GPU takes, run on a CPU: half frozen weights, autocast and (fp16) a GradScaler, through
the very code CUDA runs. Trainable weights start from the fp32 pretrained values, every random
generator is part of a snapshot, and L_det is computed only where a run reads or logs it."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from benchmark.engine.train import run, run_trajectory
from benchmark.store import records
from tests.helpers import METHOD_NAMES, set_up, tiny_run_config

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = pytest.mark.slow

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("precision", list(HALF))
def test_trainable_weights_start_from_the_fp32_pretrained_values(method, precision, tmp_path):
    """At step 0 every trainable tensor equals, bit for bit, what a full-precision setup takes (the
    token row, LoRA's seeded init, Custom Diffusion's K/V), while every frozen weight is half."""
    full = set_up(tiny_run_config(method, "dvar", tmp_path, "mixed_precision=no"))
    half = set_up(tiny_run_config(method, "dvar", tmp_path, f"mixed_precision={precision}"))
    reference, start = full.method.trainable_state(), half.method.trainable_state()
    assert reference.keys() == start.keys() and len(start) >= 1
    for name, tensor in reference.items():
        assert torch.equal(tensor, start[name]), f"{name} is not the fp32 pretrained value"
    assert all(p.dtype == torch.float32 for p in half.method.parameters())
    trainable = {id(p) for p in half.method.parameters()}
    for module in (half.backbone.unet, half.backbone.text_encoder, half.backbone.vae):
        frozen = [p for p in module.parameters() if id(p) not in trainable]
        assert frozen and all(p.dtype == HALF[precision] for p in frozen)
    # the fp32 master weights were never rounded: a half copy would differ from them somewhere
    assert any(not torch.equal(t, t.to(HALF[precision]).float()) for t in start.values())


@pytest.mark.parametrize("precision", list(HALF))
def test_ldet_of_the_same_weights_is_the_same_twice(precision, tmp_path):
    t = set_up(tiny_run_config("dreambooth_lora", "dvar", tmp_path, f"mixed_precision={precision}"))
    t.train_update()
    first, second = t.ldet(), t.ldet()
    assert first == second and math.isfinite(first["l_det"])


def test_a_snapshot_holds_every_random_generator(tmp_path):
    """The process-wide torch / numpy / python generators come back with the training state, so a
    library call that draws from them cannot break resume or branch identity."""
    t = set_up(tiny_run_config("textual_inversion", "dvar", tmp_path))
    state = t.state()
    draws = lambda: (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())  # noqa: E731
    expected = draws()
    draws()
    t.load_state(state)
    assert draws() == expected


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(HALF))
def test_every_method_and_strategy_trains_at_half_precision(precision, tmp_path):
    """The main job's sweep (3 methods x 5 strategies, one trajectory per method) on the toy model,
    which really learns, at fp16 (GradScaler) and bf16: every run completes, the records are finite,
    the training loss and L_det fall."""
    from benchmark.sweep.cli import main as sweep

    assert sweep(["experiment=toy_smoke", f"paths.results={tmp_path}", f"mixed_precision={precision}",
                  "method.max_train_steps=30", "method.protocol.baseline.eval_every=15",
                  "method.protocol.clip_s.eval_every=10", "method.protocol.clip_s.patience=0",
                  "method.protocol.dvar.window=5", "sampling.steps=4", "sampling.n_train_prompts=2",
                  "sampling.n_val_prompts=1", "checkpoint_every=10", "progress=false"]) == 0
    runs, steps, evals = (records.read(tmp_path, t) for t in ("runs", "steps", "evals"))
    assert len(runs) == 15 and set(runs.status) == {"completed"}
    assert (runs.config_json.map(lambda c: json.loads(c)["mixed_precision"]) == precision).all()
    for column in ("train_loss", "grad_norm", "l_det"):
        values = steps[column].dropna()
        assert len(values) and np.isfinite(values).all(), f"{column} is not finite at {precision}"
    assert np.isfinite(evals[["train_clip_img", "dino", "div"]].to_numpy()).all()
    updates = steps[steps.step > 0]  # fp16: the GradScaler may skip an overflowing update, and says so
    assert updates.update_skipped.notna().all() == (precision == "fp16")
    assert updates.update_skipped.fillna(False).mean() < 0.2
    for run_id in runs[runs.strategy == "baseline"].run_id:
        mine = steps[steps.run_id == run_id].sort_values("step")
        loss, l_det = mine.train_loss.dropna().to_numpy(), mine.l_det.to_numpy()
        assert loss[-10:].mean() < loss[:10].mean(), f"training loss does not fall at {precision}"
        assert l_det[-1] < l_det[0], f"L_det does not fall at {precision} ({l_det[0]:.4f} -> {l_det[-1]:.4f})"


def test_ldet_is_computed_only_where_a_run_reads_or_logs_it(tmp_path):
    """ldet.log=watched: Baseline logs no L_det and DVAR its own; always: every step of both; N: every
    N steps; and the trajectory computes L_det only until its last reader stops."""
    def rows(results, log):
        cfgs = [tiny_run_config("textual_inversion", s, results, f"ldet.log={log}", "strategy.max_steps=8")
                for s in ("baseline", "dvar")]
        return run_trajectory(cfgs, share_models=True), records.read(results, "steps")

    (baseline, dvar), steps = rows(tmp_path / "watched", "watched")
    mine = lambda row: steps[steps.run_id == row["run_id"]].sort_values("step")  # noqa: E731
    assert mine(baseline).l_det.isna().all() and baseline["ldet_s"] == 0
    assert mine(dvar).l_det.notna().all() and len(mine(dvar)) == dvar["iterations"] + 1
    (baseline, dvar), steps = rows(tmp_path / "every2", "2")
    assert mine(baseline).dropna(subset=["l_det"]).step.tolist() == [0, 2, 4, 6, 8]
    assert mine(dvar).l_det.notna().all()
    (baseline, dvar), steps = rows(tmp_path / "always", "always")
    assert mine(baseline).l_det.notna().all() and mine(dvar).l_det.notna().all()


def test_resampled_batches_keep_the_standalone_values_whatever_the_other_runs_log(tmp_path):
    """With a redrawn source, which steps are evaluated changes the draws: runs that log at other
    steps get their own variant, so each keeps its standalone values."""
    extra = ["ldet.fixed.noise=false", "strategy.steps=4"]
    make = lambda results, log: tiny_run_config("textual_inversion", "few_iters", results,  # noqa: E731
                                                f"ldet.log={log}", *extra)
    alone = run(make(tmp_path / "alone", "2"), share_models=True)
    run_trajectory([make(tmp_path / "shared", "2"), make(tmp_path / "shared", "always")], share_models=True)
    a, b = (records.read(r, "steps") for r in (tmp_path / "alone", tmp_path / "shared"))
    b = b[b.run_id == alone["run_id"]]
    a, b = (d.sort_values("step").dropna(subset=["l_det"]) for d in (a, b))
    assert a.step.tolist() == b.step.tolist() == [0, 2, 4] and a.l_det.tolist() == b.l_det.tolist()
