"""Measure a timing profile on this machine's GPU and write it where the preflight reads it
(`python -m benchmark.measure.bench model=sd15 metrics=real --record slurm/a100.timing.yaml`).

Per method: seconds per update without L_det, per L_det pass (8 items), per evaluation image at the
model's sampling steps (sampling + scoring, scaled to 50 steps), and the peak GPU memory; then the
setup time and one Custom Diffusion class image. Timing does not depend on weight values, so the
real-shape twin (model=sd15_twin metrics=real_twin) measures the same as SD v1.5 itself.
"""

from __future__ import annotations

import statistics
import time
from datetime import date
from pathlib import Path

import torch
import yaml

from benchmark.core.provenance import device_name, versions
from benchmark.engine.trajectory import Trajectory
from benchmark.protocol.config import class_image_overrides, compose


# Timing one trajectory's steps: shared with benchmark.measure.bench.
def timed(trainer, fn) -> float:
    trainer.sync()
    t0 = time.perf_counter()
    fn()
    trainer.sync()
    return time.perf_counter() - t0


def trainer_for(method: str, overrides: list[str]):
    extra = class_image_overrides(method, 4)
    cfg = compose([f"method={method}", "strategy=few_iters", "strategy.steps=1000000", "progress=false",
                   *extra, *overrides])
    trainer = Trajectory(cfg, share_models=True)
    trainer.setup()
    return trainer


def monitoring_cost(method: str, overrides: list[str], steps: int, blocks: int, every: int) -> dict:
    trainer = trainer_for(method, overrides)
    for _ in range(3):
        trainer.train_update()
        trainer.ldet()

    def strided():
        for _ in range(every):
            trainer.train_update()
        trainer.ldet()

    plain, monitored, sparse = [], [], []
    for _ in range(blocks):
        plain += [timed(trainer, trainer.train_update) for _ in range(steps)]
        monitored += [timed(trainer, lambda: (trainer.train_update(), trainer.ldet())) for _ in range(steps)]
        sparse += [timed(trainer, strided) / every for _ in range(max(1, steps // every))]
    return {"plain": statistics.median(plain), "every": statistics.median(monitored),
            "strided": statistics.median(sparse), "trainer": trainer}


def _peak_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure(method: str, overrides: list[str], steps: int, blocks: int, every: int) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = monitoring_cost(method, overrides, steps, blocks, every)
    trainer = r["trainer"]
    trainer.evaluator.evaluate(0, "in_loop")  # warm-up: the first call builds the pipeline
    eval_s = timed(trainer, lambda: trainer.evaluator.evaluate(0, "in_loop"))
    n_images = len(trainer.evaluator.train_prompts) + len(trainer.evaluator.val_prompts)
    steps_scale = 50 / int(trainer.cfg["sampling"]["steps"])
    ldet_items = trainer.cfg["ldet"]["batch_size"] * trainer.cfg["ldet"]["accumulation"]
    out = {"update_s": r["plain"], "ldet_s": (r["every"] - r["plain"]) * 8 / ldet_items,
           "image_s": eval_s / n_images * steps_scale, "strided_s": r["strided"], "every_s": r["every"],
           "setup_s": trainer.setup_s, "peak_gb": _peak_memory_gb(trainer.device), "wall_s": time.perf_counter() - t0,
           "eval_s": eval_s, "eval_images": n_images, "trainer": trainer}
    if "prior" in trainer.cfg["method"]:  # it generates class images: their price
        sampler = trainer.sampler()
        k = 4
        out["class_image_s"] = timed(trainer, lambda: sampler.generate(["photo of a dog"] * k)) / k * steps_scale
    return out


def write(path: Path, results: dict[str, dict], model: str, overrides: list[str],
          command: str = "python -m benchmark.measure.bench {overrides} --record") -> None:
    any_trainer = next(iter(results.values()))["trainer"]
    v = versions()
    profile = {
        "gpu": device_name(any_trainer.device),
        "models": sorted({model, "sd14", "sd15", "sd15_twin"} if model in ("sd14", "sd15", "sd15_twin") else {model}),
        "source": f"measured by `{command.format(overrides=' '.join(overrides))}` on {date.today()}, "
                  f"torch {v['torch']}, diffusers {v['diffusers']}, mixed precision {any_trainer.cfg['mixed_precision']}",
        "setup_s": round(max(r["setup_s"] for r in results.values()), 1),
        "class_image_s": round(next((r["class_image_s"] for r in results.values() if "class_image_s" in r), 2.0), 3),
        "methods": {m: {"update_s": round(r["update_s"], 4), "ldet_s": round(r["ldet_s"], 4),
                        "image_s": round(r["image_s"], 3), "peak_gb": None if r["peak_gb"] is None else round(r["peak_gb"], 1)}
                    for m, r in results.items()},
    }
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
