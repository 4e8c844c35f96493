"""concepts/manifest.csv: the 48 concepts of the paper (plus bundled samples), one row each."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmark.core.errors import ConfigError
from benchmark.core.registry import unknown_name_error

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONCEPTS_DIR = PROJECT_ROOT / "concepts"
MANIFEST = CONCEPTS_DIR / "manifest.csv"
SOURCES = ("textual_inversion", "custom_diffusion", "dreambooth", "bundled")


@dataclass(frozen=True)
class Concept:
    name: str
    source: str
    source_folder: str
    class_noun: str
    kind: str                    # object | live
    initializer_token: str
    n_images: int | None         # expected count, when known
    license: str
    attribution: str
    host_url: str
    host_path: str
    val_prompts: tuple[str, ...]  # "{}" marks the subject

    def folder(self, data_root: Path) -> Path:
        """Where the images live: bundled samples in the repository, the rest under the data root."""
        if self.source == "bundled":
            return CONCEPTS_DIR / self.source_folder
        return Path(data_root).expanduser() / self.name


def _row_to_concept(row: dict) -> Concept:
    return Concept(
        name=row["name"], source=row["source"], source_folder=row["source_folder"],
        class_noun=row["class_noun"], kind=row["kind"], initializer_token=row["initializer_token"],
        n_images=int(row["n_images"]) if row["n_images"] else None, license=row["license"],
        attribution=row["attribution"], host_url=row["host_url"], host_path=row["host_path"],
        val_prompts=tuple(p.strip() for p in row["val_prompts"].split(" | ") if p.strip()),
    )


@lru_cache(maxsize=4)
def load_manifest(path: Path = MANIFEST) -> dict[str, Concept]:
    with open(path, newline="") as f:
        concepts = [_row_to_concept(row) for row in csv.DictReader(f)]
    return {c.name: c for c in concepts}


def get_concept(name: str, path: Path = MANIFEST) -> Concept:
    concepts = load_manifest(path)
    if name not in concepts:
        raise unknown_name_error("concept", name, concepts, key="concept")
    return concepts[name]


def concept_folder(name: str, data_root: Path) -> Path:
    """The concept's image folder, checked to exist and hold files (the fix is named on failure)."""
    concept = get_concept(name)
    folder = concept.folder(data_root)
    if not folder.is_dir():
        raise ConfigError(
            f"Concept '{name}': folder {folder} does not exist. Fetch it with "
            f"`python -m benchmark.concepts fetch {name} data={data_root}` or set paths.data "
            "(env DVAR_DATA) to where the concepts live."
        )
    return folder
