"""Weights that plain diffusers loads: the shipped toy pipeline loads with `from_pretrained`, and a
client that does not import the project (examples/load_with_diffusers.py) reproduces a run's own
sample grid from the base pipeline plus the run's saved weights. Every weights file states its
method, token, base model, run id and step; every run saves the grid of its reported step."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from benchmark.toy.pretrain import WEIGHTS_DIR
from tests.helpers import (
    METHOD_NAMES,
    PROJECT_ROOT,
    SMALL_METHOD,
    compose,
    tiny_run_config,
)

CLIENT = PROJECT_ROOT / "examples" / "load_with_diffusers.py"
PIPELINE = WEIGHTS_DIR / "pipeline"
# Runs the client with every import of the project refused, so it proves it needs none.
WITHOUT_PROJECT = """import runpy, sys
class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("benchmark", "analysis", "tests"):
            raise ImportError("the client imported the project: " + name)
sys.meta_path.insert(0, NoProject())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def toy_config(method: str, results, precision: str = "no") -> dict:
    """A short best-checkpoint run on the shipped toy model: weights/best, a grid at the best step."""
    return compose([f"mixed_precision={precision}",
        "model=toy", "metrics=toy", f"method={method}", "method.initializer_token=null",
        "concept=toy_orange_dotted_ring", "strategy=baseline", "strategy.max_steps=4", "strategy.eval_every=2",
        "ldet.enabled=false", "progress=false", "train_batch_size=1", "sampling.steps=3",
        "sampling.n_train_prompts=2", "sampling.n_val_prompts=1", "sampling.images_per_val_prompt=2",
        "sampling.save_images=final", f"paths.results={results}", *SMALL_METHOD.get(method, []),
        # Custom Diffusion's 4e-5 barely moves K/V in 4 steps; the test needs weights that show.
        *(["method.learning_rate=1.0e-3"] if method == "custom_diffusion" else []),
    ])


def grid_tiles(path, n: int, side: int) -> list[np.ndarray]:
    grid = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return [grid[(i // 8) * side:(i // 8 + 1) * side, (i % 8) * side:(i % 8 + 1) * side] for i in range(n)]


def test_shipped_toy_pipeline_loads_in_plain_diffusers_with_the_projects_tokenizer(tmp_path):
    from diffusers import StableDiffusionPipeline

    from benchmark.engine.tokenizer import build_clip_tokenizer

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE))
    ours = build_clip_tokenizer(tmp_path / "bpe")
    captions = ["a small orange dotted ring on a navy background at the left", "<|endoftext|> émigré 42 sks"]
    for text in captions:
        assert pipe.tokenizer(text, padding="max_length", max_length=77).input_ids == \
            ours(text, padding="max_length", max_length=77).input_ids
    assert pipe.tokenizer.model_max_length == 77 and len(pipe.tokenizer) == len(ours) == 49408


@pytest.mark.slow
@pytest.mark.parametrize("method,precision", [(m, "no") for m in METHOD_NAMES] + [(m, "fp16") for m in METHOD_NAMES])
def test_a_client_without_the_project_reproduces_the_runs_samples(method, precision, tmp_path):
    """fp16: the weights of a run trained with half frozen weights, autocast and a GradScaler, loaded
    into a half-precision pipeline."""
    from benchmark.engine.observer import Observer
    from benchmark.engine.train import Session

    results = tmp_path / "results"
    cfg = toy_config(method, results, precision)
    session = Session([Observer(cfg)], share_models=True)
    session.run()
    row, t = session.observers[0].row, session.trajectory
    weights = results / row["weights_dir"]
    assert weights.name == "best" and row["reported_step"] in (2, 4)

    files = sorted(p.name for p in weights.glob("*.safetensors"))
    assert files == sorted(["learned_embeds.safetensors", *{
        "dreambooth_lora": ["pytorch_lora_weights.safetensors"],
        "custom_diffusion": ["pytorch_custom_diffusion_weights.safetensors"]}.get(method, [])])
    for name in files:
        with safe_open(str(weights / name), "pt") as f:
            meta = f.metadata()
        assert {k: meta[k] for k in ("method", "token", "subject", "run_id", "step", "base_model", "model_config")} == {
            "method": method, "token": "<toy_orange_dotted_ring>", "subject": t.method.subject,
            "run_id": row["run_id"], "step": str(row["reported_step"]),
            "base_model": "benchmark/toy/weights/pipeline", "model_config": "toy"}, name
    with safe_open(str(results / row["weights_dir"].replace("best", "final") / files[0]), "pt") as f:
        assert f.metadata()["step"] == str(row["iterations"])

    prompts = t.evaluator.train_prompts + t.evaluator.val_prompts
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    s = cfg["sampling"]
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_PROJECT, str(CLIENT), str(PIPELINE), str(weights), "--prompts-file",
         str(tmp_path / "prompts.json"), "--out", str(tmp_path / "client"), "--seed", str(s["seed"]),
         "--steps", str(s["steps"]), "--guidance", str(s["guidance"]), "--device", "cpu",
         "--dtype", {"no": "fp32", "fp16": "fp16"}[precision]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout[:out.stdout.rindex("}") + 1])["run_id"] == row["run_id"]

    grid = results / "work" / "default" / row["run_id"] / "samples" / f"step{row['reported_step']:06d}.png"
    theirs = [np.asarray(Image.open(tmp_path / "client" / f"{i:03d}.png"), dtype=np.int16) for i in range(len(prompts))]
    ours = grid_tiles(grid, len(prompts), 32)
    assert all(a.shape == (32, 32, 3) for a in theirs)
    for i, (a, b) in enumerate(zip(theirs, ours)):
        assert np.abs(a - b).max() <= 1, f"image {i} ({prompts[i]!r}) differs from the run's sample"
    # Not trivially equal: without the method's own file (LoRA, K/V) or without any weights (TI)
    # the same prompts and noise give other images.
    reference = plain_images(weights if method != "textual_inversion" else None, prompts, s)
    assert any(np.abs(a - b).max() > 1 for a, b in zip(theirs, reference)), "the weights change the samples"


def plain_images(token_from, prompts: list[str], s: dict) -> list[np.ndarray]:
    """The toy pipeline's images of `prompts` with the run's sampling, with only the token of
    `token_from` loaded (or nothing)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE))
    pipe.set_progress_bar_config(disable=True)
    if token_from is not None:
        pipe.load_textual_inversion(str(token_from), weight_name="learned_embeds.safetensors")
    latents = torch.randn((len(prompts), 4, 8, 8), generator=torch.Generator().manual_seed(int(s["seed"])))
    images = pipe(prompt=prompts, latents=latents, num_inference_steps=int(s["steps"]),
                  guidance_scale=float(s["guidance"])).images
    return [np.asarray(im, dtype=np.int16) for im in images]


@pytest.mark.slow
def test_best_checkpoint_runs_save_the_grid_of_their_reported_step(results):
    """Baseline and CLIP-s report their best checkpoint and skip the final evaluation; each saves
    the grid of that evaluation, and no grid of an earlier best is left (one shared trajectory)."""
    from benchmark.engine.train import run_trajectory
    from benchmark.store import records

    extra = ("sampling.save_images=final", "ldet.enabled=false", "strategy.max_steps=6")
    rows = run_trajectory([tiny_run_config("textual_inversion", s, results, *extra) for s in ("baseline", "clip_s")],
                          share_models=True)
    evals = records.read(results, "evals")
    for row in rows:
        samples = results / "work" / "default" / row["run_id"] / "samples"
        grid = samples / f"step{row['reported_step']:06d}.png"
        assert [p.name for p in samples.glob("*.png")] == [grid.name]
        reported = evals[(evals.run_id == row["run_id"]) & (evals.step == row["reported_step"])].iloc[0]
        n = int(reported.n_train_images + reported.n_val_images)
        assert Image.open(grid).size == (min(8, n) * 64, -(-n // 8) * 64)
