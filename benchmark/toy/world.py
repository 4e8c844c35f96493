"""The toy world: small images of one object on a background, with captions from a small grammar.

An object is (shape, colour, pattern); a scene places it with a size and a position on a background
colour. Everything is drawn with numpy from a seed, so the same seed gives the same images on every
machine. Captions read like "a small red striped circle on a blue background at the left".

Held out from pretraining: the combinations listed in HELD_OUT (every part of them is seen, never
together), which become the toy concepts that personalization must learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (240, 220, 40),
          "purple": (150, 60, 200), "orange": (250, 140, 30), "white": (245, 245, 245), "cyan": (40, 210, 220)}
PATTERNS = ("plain", "striped", "dotted")
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "pink": (240, 170, 200), "navy": (20, 30, 90),
               "beige": (225, 210, 170)}
SIZES = {"small": 0.28, "large": 0.46}          # object half-extent as a fraction of the image
POSITIONS = {"center": (0.5, 0.5), "left": (0.33, 0.5), "right": (0.67, 0.5), "top": (0.5, 0.33),
             "bottom": (0.5, 0.67)}
# (shape, colour, pattern) never shown in pretraining: the toy concepts.
# Eight, so that the criteria can be tuned on four and reported on the other four (paper, Sec. 5).
HELD_OUT = (("diamond", "purple", "striped"), ("ring", "orange", "dotted"), ("cross", "cyan", "striped"),
            ("triangle", "white", "dotted"), ("circle", "green", "dotted"), ("square", "yellow", "striped"),
            ("triangle", "blue", "plain"), ("ring", "red", "striped"))


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    pattern: str
    size: str
    position: str
    background: str

    @property
    def object(self) -> tuple[str, str, str]:
        return self.shape, self.color, self.pattern

    def object_words(self) -> str:
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return f"{self.color} {pattern}{self.shape}"

    def caption(self, subject: str | None = None) -> str:
        """The full caption; `subject` replaces the object words (e.g. a concept token)."""
        return f"a {self.size} {subject or self.object_words()} on a {self.background} background at the {self.position}"


def _mask(shape: str, n: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] + 0.5
    dx, dy = (x - cx * n) / (r * n), (y - cy * n) / (r * n)
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= 1
    if shape == "ring":
        d = dx ** 2 + dy ** 2
        return (d <= 1) & (d >= 0.36)
    if shape == "square":
        return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1
    if shape == "cross":
        return ((np.abs(dx) <= 1) & (np.abs(dy) <= 0.33)) | ((np.abs(dy) <= 1) & (np.abs(dx) <= 0.33))
    if shape == "triangle":
        return (dy <= 0.8) & (dy >= -1 + 2 * np.abs(dx) - 0.2)
    raise ValueError(shape)


def render(scene: Scene, size: int = 32, jitter: np.random.Generator | None = None) -> Image.Image:
    """Draw the scene; `jitter` adds small random offsets and shade changes (a new photo of it)."""
    cx, cy = POSITIONS[scene.position]
    r = SIZES[scene.size]
    shade = 1.0
    if jitter is not None:
        cx, cy = cx + jitter.uniform(-0.04, 0.04), cy + jitter.uniform(-0.04, 0.04)
        r *= jitter.uniform(0.9, 1.1)
        shade = jitter.uniform(0.85, 1.0)
    r = min(r, cx, 1 - cx, cy, 1 - cy) * 0.98 if scene.size == "large" else r * 0.98
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUNDS[scene.background]
    inside = _mask(scene.shape, size, cx, cy, r)
    color = np.array(COLORS[scene.color], dtype=np.float32) * shade
    y, x = np.mgrid[0:size, 0:size]
    if scene.pattern == "striped":
        paint = inside & ((x + y) // 3 % 2 == 0)
        img[inside & ~paint] = color * 0.35
    elif scene.pattern == "dotted":
        paint = inside & ~((x % 4 == 1) & (y % 4 == 1))
        img[inside & ~paint] = (15, 15, 15)
    else:
        paint = inside
    img[paint] = color
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def random_scene(rng: np.random.Generator, allow_held_out: bool = False, obj: tuple | None = None) -> Scene:
    while True:
        shape, color, pattern = obj or (rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(PATTERNS))
        if not allow_held_out and (shape, color, pattern) in HELD_OUT:
            continue
        background = rng.choice([b for b in BACKGROUNDS if not (b == "black" and pattern == "dotted")])
        return Scene(str(shape), str(color), str(pattern), str(rng.choice(list(SIZES))),
                     str(rng.choice(list(POSITIONS))), str(background))


def dataset(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` pretraining examples (uint8 images N x H x W x 3, captions, scenes), held-out objects excluded."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([np.asarray(render(s, size, rng)) for s in scenes])
    return images, [s.caption() for s in scenes], scenes
