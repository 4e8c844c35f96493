"""The toy concepts: the held-out objects of the toy world, 4 images each, with their captions.

`python -m benchmark.toy.concepts` (re)writes concepts/toy/<name>/ deterministically; the files
are shipped, and a test checks that they regenerate bit for bit. Validation prompts put the
object in places and sizes that its training images do not show, on the training background: the
toy CLIP encodes whole scenes, so a new background would dominate Val CLIP img and hide the object.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmark.toy import world

N_IMAGES = 4
# Training images: center (small and large), left, top; validation: right and bottom, both sizes.
TRAIN_PLACES = (("small", "center"), ("large", "center"), (None, "left"), (None, "top"))
VAL_PLACES = (("small", "right"), ("large", "bottom"), ("large", "right"), ("small", "bottom"))


def background(obj: tuple[str, str, str]) -> str:
    """Dark, so the object stands out; navy where black would hide the dots."""
    return "navy" if obj[2] == "dotted" else "black"


def val_prompts(obj: tuple[str, str, str]) -> list[str]:
    return [f"a {size} {{}} on a {background(obj)} background at the {pos}" for size, pos in VAL_PLACES]


def name(obj: tuple[str, str, str]) -> str:
    shape, color, pattern = obj
    return f"toy_{color}_{pattern}_{shape}"


def concept_scenes(obj: tuple[str, str, str], seed: int) -> list[world.Scene]:
    rng = np.random.default_rng(seed)
    return [world.Scene(*obj, size=size or str(rng.choice(list(world.SIZES))), position=pos, background=background(obj))
            for size, pos in TRAIN_PLACES][:N_IMAGES]


def write(root: Path, seed: int = 7) -> list[Path]:
    folders = []
    for k, obj in enumerate(world.HELD_OUT):
        folder = root / name(obj)
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + k)
        scenes = concept_scenes(obj, seed + k)
        for i, scene in enumerate(scenes):
            world.render(scene, 32, rng).save(folder / f"{i:02d}.png", optimize=False)
        (folder / "captions.txt").write_text("\n".join(s.caption("{}") for s in scenes) + "\n")
        folders.append(folder)
    return folders


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "concepts" / "toy"
    for f in write(root):
        print(f)
