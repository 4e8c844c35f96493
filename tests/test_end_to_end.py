"""Every method x every strategy runs end to end on the tiny backbone and leaves records we can believe."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from benchmark.engine.backbone import load_backbone
from benchmark.engine.methods.base import method_class
from benchmark.engine.sampling import Sampler
from benchmark.engine.train import run
from benchmark.protocol.config import cache_root
from benchmark.store import records
from benchmark.store.records import RUNS
from tests.helpers import METHOD_NAMES, fitted, tiny_run_config
from tests.test_stopping import official_clip_s, official_dvar

STRATEGY_NAMES = ["baseline", "clip_s", "few_iters", "few_iters_mean", "few_iters_max", "dvar"]


def run_records(results, row):
    steps = records.read(results, "steps")
    evals = records.read(results, "evals")
    return (steps[steps.run_id == row["run_id"]].sort_values("step").reset_index(drop=True),
            evals[evals.run_id == row["run_id"]].sort_values("step").reset_index(drop=True))


# The fast lane (`make test`) keeps one of these end-to-end runs; `make test-all` runs them all.
FAST_LANE = ("textual_inversion", "dvar")


@pytest.mark.parametrize("method,strategy", [
    pytest.param(m, s, id=f"{m}-{s}", marks=() if (m, s) == FAST_LANE else pytest.mark.slow)
    for m in METHOD_NAMES for s in STRATEGY_NAMES])
def test_every_method_and_strategy(method, strategy, results):
    cfg = tiny_run_config(method, strategy, results)
    row = run(cfg, share_models=True)
    steps, evals = run_records(results, row)
    s = cfg["strategy"]

    assert row["status"] == "completed"
    assert list(steps.step) == list(range(row["iterations"] + 1)), "one row per update, step 0 included"
    if strategy == "dvar":  # ldet.log=watched: L_det where a criterion reads it, and nowhere else
        assert np.isfinite(steps.l_det).all(), "L_det after every update, the untrained weights included"
    else:
        assert steps.l_det.isna().all() and row["ldet_s"] == 0
    assert np.isnan(steps.train_loss[0]) and np.isfinite(steps.train_loss[1:]).all()
    assert (steps.grad_norm[1:] > 0).all()
    if strategy == "baseline":
        assert (row["iterations"], row["stop_reason"]) == (s["max_steps"], "max_steps")
        assert list(evals.step) == list(range(s["eval_every"], s["max_steps"] + 1, s["eval_every"]))
    elif strategy.startswith("few_iters"):
        assert (row["iterations"], row["stop_reason"]) == (s["steps"], "fixed_steps")
        assert list(evals.phase) == ["final"] and evals.step[0] == s["steps"]
    elif strategy == "clip_s":
        # the official rule on the logged checks says where the run must stop (or that it runs to its budget)
        checks = evals[evals.phase == "in_loop"]
        assert list(checks.step) == list(range(s["eval_every"], row["iterations"] + 1, s["eval_every"]))
        fired = official_clip_s(list(checks.train_clip_img), s["patience"], s["eps"])
        expected = (int(checks.step.iloc[fired]), "criterion") if fired is not None else (s["max_steps"], "max_steps")
        assert (row["iterations"], row["stop_reason"]) == expected
    elif strategy == "dvar":
        # the official VarEarlyStopper on the logged L_det says where the run must stop, and the logged
        # criterion is var(last N) / var(all) of the logged values, 1.0 before the first decision
        fired = official_dvar(list(steps.l_det), s["window"], s["threshold"])
        expected = (fired, "criterion") if fired is not None else (s["max_steps"], "max_steps")
        assert (row["iterations"], row["stop_reason"]) == expected
        h = steps.l_det.to_numpy()
        ratios = [1.0 if k < s["window"] else h[k - s["window"] + 1:k + 1].var() / h[:k + 1].var()
                  for k in range(len(h))]
        assert np.allclose(steps.criterion, ratios, rtol=1e-12, atol=0)
    if strategy in ("baseline", "clip_s"):
        best = evals.loc[evals.train_clip_img.idxmax()]
        assert row["reported_step"] == best.step, "the best checkpoint by train CLIP img is reported"
    else:
        assert row["reported_step"] == row["iterations"]
    reported = evals[evals.step == row["reported_step"]].iloc[0]
    for metric in ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div"):
        assert row[metric] == pytest.approx(reported[metric]), metric
        assert np.isfinite(row[metric])
    f = records.partition_dir(results, "runs", {"experiment": "default", "method": method,
                                                "strategy": s["name"]}) / f"{row['run_id']}.parquet"
    assert pq.read_schema(f).metadata[b"schema_version"] == b"1"
    assert set(RUNS.names) <= set(pq.read_schema(f).names)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_saved_weights_reload_into_a_plain_pipeline(method, results):
    """The safetensors a run writes, loaded by diffusers' own loaders into a freshly loaded pipeline,
    reproduce the images of the trained model exactly."""
    cfg = tiny_run_config(method, "few_iters", results, "strategy.steps=3")
    trainer, row = fitted(cfg)
    prompt = f"a photo of {trainer.method.subject} on the beach"
    live = np.asarray(trainer.sampler().generate([prompt])[0], dtype=np.int16)

    fresh = load_backbone(cfg["model"], cache_root(cfg))
    sampler = Sampler(fresh, cfg["sampling"], trainer.device, trainer.autocast)
    method_class(cfg["method"]).apply(sampler.pipe, results / row["weights_dir"], trainer.method.placeholder)
    reloaded = np.asarray(sampler.generate([prompt])[0], dtype=np.int16)
    assert reloaded.shape == (64, 64, 3)
    assert np.abs(reloaded - live).max() <= 1

    base = Sampler(load_backbone(cfg["model"], cache_root(cfg)), cfg["sampling"], trainer.device, trainer.autocast)
    untrained = np.asarray(base.generate([prompt])[0], dtype=np.int16)
    assert np.abs(untrained - live).max() > 0, "the trained weights change the samples"


@pytest.mark.slow
def test_custom_diffusion_without_random_rescale_weighs_every_pixel(results):
    """No rescale, no mask: the instance loss is the masked loss with a mask of ones (found by the
    toy sweep, which turns random rescale off)."""
    trainer, row = fitted(tiny_run_config("custom_diffusion", "few_iters", results, "strategy.steps=2",
                                          "method.random_rescale=false"))
    assert row["status"] == "completed" and trainer.data.sample(trainer.generator, 2).mask is None
    pred, target = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ones = torch.ones(2, 1, 8, 8)
    assert trainer.method.loss(pred, target, None, 2) == trainer.method.loss(pred, target, ones, 2)
    assert trainer.method.loss(pred, target, None, 2) != trainer.method.loss(pred, target, ones.tril(), 2)
