"""Concept images → training examples: preprocessing, augmentation and captions.

Every random choice is drawn from a `torch.Generator` passed in by the caller, so the training
stream and the evaluation-batch stream never share state (DESIGN.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as tv_functional

from benchmark.engine.templates import (
    CLOSE_PREFIXES,
    FAR_PREFIXES,
    OBJECT_TEMPLATES,
    TRAIN_EVAL_TEMPLATES,
)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB → float (3, H, W) in [-1, 1]."""
    return tv_functional.pil_to_tensor(image).float() / 127.5 - 1.0


def center_crop_resize(image: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """Not torchvision's center_crop: that rounds an odd margin half to even (a margin of 3 starts
    the crop at 2, not 1), which would change the pixels, and so the records, of such images."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), resample)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive) from the generator."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _choice(g: torch.Generator, seq):
    return seq[_randint(g, 0, len(seq) - 1)]


@dataclass
class Batch:
    image_index: torch.Tensor   # (B,) which concept image
    flipped: torch.Tensor       # (B,) bool
    pixels: torch.Tensor        # (B, 3, R, R) in [-1, 1]
    captions: list[str]
    mask: torch.Tensor | None   # (B, 1, R/f, R/f) loss mask at latent resolution, or None


class ConceptData:
    """The concept's images, preprocessed once, and a sampler of augmented, captioned batches.

    `cacheable` is True when an example is fully determined by (image, flip): then VAE encodings
    can be computed once per variant instead of at every step.
    """

    def __init__(self, images: list[Image.Image], resolution: int, subject: str, *, center_crop: bool,
                 flip_p: float, random_rescale: bool, captions: str, instance_prompt: str | None,
                 latent_factor: int, image_captions: list[str] | None = None):
        self.resolution = resolution
        self.subject = subject
        self.flip_p = flip_p
        self.random_rescale = random_rescale
        self.caption_mode = captions
        self.instance_prompt = instance_prompt
        self.latent_factor = latent_factor
        # Concepts that come with their own captions (captions.txt) train on them, image by image.
        self.image_captions = [c.format(subject) for c in image_captions] if image_captions else None
        if random_rescale:
            # Keep enough pixels for the largest zoom (1.4 R); Custom Diffusion squashes to a square.
            big = int(1.4 * resolution) + 2
            self.sources = [pil_to_tensor(im.resize((big, big), Image.BILINEAR)) for im in images]
            self.pixels = torch.stack([pil_to_tensor(im.resize((resolution, resolution), Image.BILINEAR))
                                       for im in images])
        else:
            resize = (lambda im: center_crop_resize(im, resolution)) if center_crop else \
                (lambda im: im.resize((resolution, resolution), Image.BICUBIC))
            self.pixels = torch.stack([pil_to_tensor(resize(im)) for im in images])

    @property
    def cacheable(self) -> bool:
        return not self.random_rescale

    def __len__(self) -> int:
        return len(self.pixels)

    def caption(self, g: torch.Generator, index: int | None = None) -> str:
        if self.image_captions:
            return self.image_captions[index if index is not None else _randint(g, 0, len(self) - 1)]
        if self.caption_mode == "templates":
            return _choice(g, OBJECT_TEMPLATES).format(self.subject)
        return self.instance_prompt.format(subject=self.subject)

    def eval_prompts(self, n: int) -> list[str]:
        """The train prompts of evaluations: the concept's own captions when it brings them (in
        image order, so index pairing meets each caption's image), else the fixed templates."""
        if self.image_captions:
            return [self.image_captions[i % len(self.image_captions)] for i in range(n)]
        return [TRAIN_EVAL_TEMPLATES[i % len(TRAIN_EVAL_TEMPLATES)].format(self.subject) for i in range(n)]

    def example(self, index: int, flip: bool, g: torch.Generator) -> tuple[torch.Tensor, str, torch.Tensor | None]:
        caption = self.caption(g, index)
        if not self.random_rescale:
            pixels = self.pixels[index]
            return (pixels.flip(-1) if flip else pixels), caption, None
        pixels, prefix, mask = self._rescale(self.sources[index], g)
        return (pixels.flip(-1) if flip else pixels), prefix + caption, (mask.flip(-1) if flip else mask)

    def sample(self, g: torch.Generator, batch_size: int) -> Batch:
        index = torch.randint(0, len(self), (batch_size,), generator=g)
        flipped = torch.rand(batch_size, generator=g) < self.flip_p
        examples = [self.example(int(i), bool(f), g) for i, f in zip(index, flipped)]
        masks = [m for _, _, m in examples]
        return Batch(
            image_index=index, flipped=flipped, pixels=torch.stack([p for p, _, _ in examples]),
            captions=[c for _, c, _ in examples],
            mask=torch.stack(masks)[:, None] if masks[0] is not None else None,
        )

    def _rescale(self, source: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, str, torch.Tensor]:
        """Custom Diffusion's random rescale: small objects on a blank canvas or zoomed-in crops.

        Scales follow the original at 512 px (170..512 with prob 2/3, else 614..715), in proportion
        to the resolution. The blank canvas is 0 in [-1, 1] space (mid-grey), as in the original;
        the mask marks the pasted region at latent resolution, one latent pixel inside its border.
        """
        r, f = self.resolution, self.latent_factor
        if float(torch.rand(1, generator=g)) < 0.66:
            scale = _randint(g, r // 3, r)
        else:
            scale = _randint(g, int(1.2 * r), int(1.4 * r))
        scale += scale % 2
        mask = torch.ones(r // f, r // f)
        if scale < 0.6 * r:
            half = scale // 2
            cy, cx = _randint(g, half, r - half), _randint(g, half, r - half)
            pixels = torch.zeros(3, r, r)
            pixels[:, cy - half:cy + half, cx - half:cx + half] = _resize(source, scale)
            mask.zero_()
            y0, y1 = (cy - half) // f + 1, (cy + half) // f - 1
            x0, x1 = (cx - half) // f + 1, (cx + half) // f - 1
            if y1 <= y0 or x1 <= x0:  # tiny latents: keep at least the covered latent pixels
                y0, y1, x0, x1 = (cy - half) // f, max((cy + half) // f, (cy - half) // f + 1), \
                    (cx - half) // f, max((cx + half) // f, (cx - half) // f + 1)
            mask[y0:y1, x0:x1] = 1.0
            return pixels, _choice(g, FAR_PREFIXES), mask
        if scale > r:
            half = r // 2
            cy, cx = _randint(g, half, scale - half), _randint(g, half, scale - half)
            big = _resize(source, scale)
            return big[:, cy - half:cy + half, cx - half:cx + half], _choice(g, CLOSE_PREFIXES), mask
        return _resize(source, r), "", mask


def _resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(pixels[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


class ClassData:
    """Class-prior images for prior preservation: shorter side resized to R, random crop, flip."""

    def __init__(self, images: list[Image.Image], captions: list[str], resolution: int):
        def shorter_side(im: Image.Image) -> Image.Image:
            w, h = im.size
            s = resolution / min(w, h)
            return im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)

        self.images = [pil_to_tensor(shorter_side(im)) for im in images]
        self.captions = captions
        self.resolution = resolution

    def sample(self, g: torch.Generator, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        pixels, captions = [], []
        for _ in range(batch_size):
            i = _randint(g, 0, len(self.images) - 1)
            im = self.images[i]
            y = _randint(g, 0, im.shape[1] - self.resolution)
            x = _randint(g, 0, im.shape[2] - self.resolution)
            crop = im[:, y:y + self.resolution, x:x + self.resolution]
            pixels.append(crop.flip(-1) if float(torch.rand(1, generator=g)) < 0.5 else crop)
            captions.append(self.captions[i])
        return torch.stack(pixels), captions
