"""Class-prior images for Custom Diffusion's prior preservation.

Either a user folder of real images (captions from `captions.txt`, one line per image in sorted
file order, else the class prompt), or images generated once by the *base* model and cached per
(base weights, class prompt, count, sampler settings). Generation is resumable: each image has its
own seed, and finished files are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from benchmark.concepts.images import decode_image, image_files, read_captions
from benchmark.core.errors import ConfigError

CLASS_SEED = 2023  # seeds of class image i: CLASS_SEED + i


def user_class_images(folder: Path, class_prompt: str) -> tuple[list[Image.Image], list[str]]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"method.prior.class_images_dir: folder {folder} does not exist.")
    files = image_files(folder)
    if not files:
        raise ConfigError(f"method.prior.class_images_dir: {folder} holds no images.")
    captions = read_captions(folder, len(files)) or [class_prompt] * len(files)
    return [decode_image(p) for p in files], captions


def generated_folder(cache_dir: Path, identity: str, class_prompt: str, count: int, sampling: dict) -> Path:
    settings = {k: sampling[k] for k in ("scheduler", "steps", "guidance")}
    key = hashlib.sha1(json.dumps([identity, class_prompt, settings], sort_keys=True).encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "_", class_prompt.lower()).strip("_")
    return Path(cache_dir).expanduser() / "class_images" / identity.replace("/", "_") / f"{slug}-{key}"


def generate_class_images(sampler, folder: Path, class_prompt: str, count: int, progress: bool = True):
    """Generate the missing images among 0..count-1 into `folder` (atomic writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (folder / f"{i:05d}.png").exists()]
    chunk = max(1, int(sampler.cfg["batch_size"]))
    bar = tqdm(total=len(missing), desc=f"class images '{class_prompt}'", disable=not progress or None)
    for start in range(0, len(missing), chunk):
        idx = missing[start:start + chunk]
        for i, image in zip(idx, sampler.generate([class_prompt] * len(idx), seeds=[CLASS_SEED + i for i in idx])):
            tmp = folder / f".{i:05d}.png.{os.getpid()}.tmp"  # per process: two may fill the same cache at once
            image.save(tmp, format="PNG")
            os.replace(tmp, folder / f"{i:05d}.png")
        bar.update(len(idx))
    bar.close()


def class_images(prior_cfg, class_noun: str, backbone, make_sampler, cache_dir: Path, sampling: dict,
                 progress: bool = True) -> tuple[list[Image.Image], list[str]]:
    """The class images and captions for a run (generating and caching them if needed)."""
    class_prompt = prior_cfg["class_prompt"].format(class_noun=class_noun)
    if prior_cfg.get("class_images_dir"):
        return user_class_images(Path(prior_cfg["class_images_dir"]), class_prompt)
    count = int(prior_cfg["num_class_images"])
    folder = generated_folder(cache_dir, backbone.identity, class_prompt, count, sampling)
    if any(not (folder / f"{i:05d}.png").exists() for i in range(count)):
        generate_class_images(make_sampler(), folder, class_prompt, count, progress)
    return [decode_image(folder / f"{i:05d}.png") for i in range(count)], [class_prompt] * count
