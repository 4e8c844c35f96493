"""The toy concepts: the held-out objects of the toy world, 4 images each, with their captions.

`python -m benchmark.toy.concepts` (re)writes concepts/toy/<name>/ deterministically; the files
are shipped, and a test checks that they regenerate bit for bit. Validation prompts put the
object in contexts (sizes, backgrounds, positions) that its training images do not show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmark.toy import world

N_IMAGES = 4
VAL_PROMPTS = ("a small {} on a pink background at the top", "a large {} on a beige background at the left",
               "a small {} on a gray background at the bottom", "a large {} on a pink background at the right")


def name(obj: tuple[str, str, str]) -> str:
    shape, color, pattern = obj
    return f"toy_{color}_{pattern}_{shape}"


def concept_scenes(obj: tuple[str, str, str], seed: int) -> list[world.Scene]:
    """Training scenes on a dark background (navy where black would hide the dots), so that the
    validation prompts' backgrounds are new contexts."""
    rng = np.random.default_rng(seed)
    background = "navy" if obj[2] == "dotted" else "black"
    return [world.Scene(*obj, size=str(rng.choice(list(world.SIZES))), position=pos, background=background)
            for pos in ("center", "left", "right", "top")][:N_IMAGES]


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
