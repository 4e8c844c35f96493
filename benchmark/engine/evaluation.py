"""In-loop and final evaluations: sample the train and validation prompts with the current weights
and score them (CLIP img / txt, DINO, DIV). One evaluation of a step serves every run that observes
the trajectory at that step: the sampler is re-seeded per evaluation, so the images depend only on
the weights."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from benchmark.engine.metrics import score, text_for_clip
from benchmark.store.runs import grid_file

METRICS = ("train_clip_img", "train_clip_txt", "val_clip_img", "val_clip_txt", "dino", "div")


class Evaluator:
    def __init__(self, cfg: dict, trajectory):
        self.cfg, self.t = cfg, trajectory
        sampling = cfg["sampling"]
        self.train_prompts = trajectory.data.eval_prompts(int(sampling["n_train_prompts"]))
        concept, subject = trajectory.concept, trajectory.method.subject
        n_val = sampling.get("n_val_prompts") or len(concept.val_prompts)
        val = [p.format(subject) for p in concept.val_prompts[:n_val]]
        per_prompt = int(sampling["images_per_val_prompt"])
        self.val_prompts = [p for _ in range(per_prompt) for p in val]
        self.val_groups = [i for _ in range(per_prompt) for i in range(len(val))]
        mode, noun = cfg["metrics"]["text_subject"], concept.class_noun
        placeholder = trajectory.method.placeholder
        self.texts = [text_for_clip(p, placeholder, noun, mode) for p in self.train_prompts + self.val_prompts]

    def evaluate(self, step: int, phase: str) -> tuple[dict, list]:
        """(the evals row without run_id, the images) for the weights after `step` updates."""
        t, n_train = self.t, len(self.train_prompts)
        t.sync()
        t0 = time.perf_counter()
        images = t.sampler().generate(self.train_prompts + self.val_prompts)
        t.sync()
        t1 = time.perf_counter()
        scores = score(t.metric_models, t.references, images[:n_train], self.texts[:n_train], images[n_train:],
                       self.texts[n_train:], self.val_groups, self.cfg["metrics"]["pairing"])
        row = {"step": step, "phase": phase, **scores, "n_train_images": n_train, "n_val_images": len(images) - n_train,
               "sampling_s": t1 - t0, "scoring_s": time.perf_counter() - t1}
        return row, images


def grid_image(images):
    """The samples of one evaluation as one image, 8 to a row."""
    w, h = images[0].size
    cols = min(8, len(images))
    grid = Image.new("RGB", (cols * w, -(-len(images) // cols) * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def save_grid(images, folder: Path, step: int) -> None:
    """The grid of one evaluation as one PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    grid_image(images).save(grid_file(folder, step))


def keep_grid(folder: Path, step: int) -> None:
    """Remove the grids of `folder` other than that of `step` (earlier bests of a best-checkpoint run)."""
    keep = grid_file(folder, step)
    for f in folder.glob("step*.png"):
        if f != keep:
            f.unlink()
