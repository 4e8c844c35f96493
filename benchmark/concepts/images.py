"""Decode concept images robustly: EXIF orientation applied, every mode converted to 8-bit RGB.

A file that does not decode raises ConfigError naming the file, so a run fails before training.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from benchmark.core.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
CAPTIONS = "captions.txt"  # optional: one caption per image (read_captions)
MIN_SIDE = 32  # smaller images cannot be meaningfully resized to the training resolution


def image_files(folder: Path) -> list[Path]:
    """Image-like files of a concept folder in sorted order (hidden files and sidecars skipped). An
    entry named like an image that is not a readable file (a broken link, a folder) is an error."""
    named = sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    for p in named:
        if not p.is_file():
            what = "a broken link" if p.is_symlink() and not p.exists() else "not a file"
            raise ConfigError(f"{p}: {what}, named like an image. Remove it or put the image there.")
    return named


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without the usual traps.

    16-bit and 32-bit integer images are rescaled (PIL's convert would clip them to white); images
    with transparency are composited on white (convert would turn transparent pixels black).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        image = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


def decode_image(path: Path) -> Image.Image:
    """Open, fully decode, orient and convert one image; raise ConfigError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not mid-training
            image = ImageOps.exif_transpose(im)
            image = to_rgb(image)
    except UnidentifiedImageError as err:
        raise ConfigError(f"{path}: not an image file ({err}). Remove it from the concept folder.") from err
    except Image.DecompressionBombError as err:
        raise ConfigError(f"{path}: the image declares more pixels than PIL decodes safely ({err}). A photo of a "
                          "concept is far smaller: replace the file with the original photo.") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(
            f"{path}: cannot decode the image ({err}). Re-fetch or replace the file "
            "(`python -m benchmark.concepts validate` lists every problem)."
        ) from err
    if min(image.size) < MIN_SIDE:
        raise ConfigError(
            f"{path}: image is {image.size[0]}x{image.size[1]} px, smaller than {MIN_SIDE} px on a side. "
            "Replace it with the original photo."
        )
    return image


def load_concept_images(folder: Path) -> list[tuple[Path, Image.Image]]:
    files = image_files(folder)
    if not files:
        raise ConfigError(
            f"Concept folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). "
            "Fetch the concept again or point paths.data at the right folder."
        )
    seen: dict[str, Path] = {}
    for p in files:  # a duplicate would count twice in training and in CLIP img
        digest = file_sha256(p)
        if digest in seen:
            raise ConfigError(f"{p}: an exact duplicate of {seen[digest].name}. Remove one of the two.")
        seen[digest] = p
    return [(p, decode_image(p)) for p in files]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def input_files(folder: Path) -> list[Path]:
    """The files of a concept folder a run reads: its images and, when there, its captions."""
    captions = Path(folder) / CAPTIONS
    return image_files(folder) + ([captions] if captions.is_file() else [])


def concept_digest(folder: Path) -> str:
    """One hash of the files a run reads from its concept folder (names and bytes): part of what
    identifies a run, so new or changed images or captions make a new run instead of one skipped as
    done. A folder without captions hashes as its images alone did before captions counted."""
    h = hashlib.sha256()
    for p in input_files(folder):
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()[:16]


def read_captions(folder: Path, n_images: int, with_subject: bool = False) -> list[str] | None:
    """The lines of `folder/captions.txt`, one per image in sorted file order, or None without the
    file. `with_subject`: each line is a template with "{}" where the concept goes."""
    f = Path(folder) / CAPTIONS
    if not f.exists():
        return None
    lines = [line.strip() for line in f.read_text().splitlines() if line.strip()]
    if len(lines) != n_images or (with_subject and not all("{}" in line for line in lines)):
        subject = ', each with {} where the concept goes' if with_subject else ''
        raise ConfigError(f"{f}: needs one caption per image ({n_images}), in sorted file-name order{subject}; "
                          f"found {len(lines)} captions for {n_images} images.")
    return lines
