"""What a sweep will cost on the target GPU, from a recorded step-time profile.

A timing profile (`slurm/a100.timing.yaml`, next to the Slurm launcher profile that names it) holds
per method the seconds of one update, of one L_det pass over 8 items, and of sampling and scoring
one evaluation image at 50 steps, measured by `python -m benchmark.bench --record FILE` on that GPU.
A run's time is then

    setup + updates x update + L_det passes x ldet + evaluated images x image (+ its class images)

Expected updates: the budget for Baseline and Few-iters (derived Few-iters: the paper's values
until this sweep's CLIP-s runs have finished), the paper's Table 1 mean for CLIP-s and DVAR, capped
by the budget. The worst case (every run to its cap) sets the Slurm time limit of each job.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmark.errors import ConfigError

PAPER_TABLES = Path(__file__).resolve().parents[2] / "analysis" / "paper_tables.csv"
PAPER_NAMES = {"textual_inversion": "Textual Inversion", "dreambooth_lora": "DreamBooth-LoRA",
               "custom_diffusion": "Custom Diffusion", "baseline": "Baseline", "clip_s": "CLIP-s", "dvar": "DVAR",
               "few_iters_mean": "Few iters (mean)", "few_iters_max": "Few iters (max)"}
METHOD_KEYS = ("update_s", "ldet_s", "image_s")
MARGIN, SLACK_MIN = 1.25, 10  # time limit = worst case x MARGIN + SLACK_MIN, rounded up to 10 minutes


@dataclass
class Profile:
    path: Path
    gpu: str
    models: list[str]
    setup_s: float
    class_image_s: float
    methods: dict[str, dict[str, float]]
    source: str

    def covers(self, cfg: dict) -> bool:
        return cfg["model"]["name"] in self.models


def load_profile(path: Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"timing profile {path} does not exist; record one on the target GPU with "
                          f"`python -m benchmark.bench model=sd15 metrics=real --record {path}`.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        methods = {m: {k: float(v[k]) for k in METHOD_KEYS} for m, v in raw["methods"].items()}
        return Profile(path, str(raw["gpu"]), list(raw["models"]), float(raw["setup_s"]),
                       float(raw["class_image_s"]), methods, str(raw.get("source", "")))
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a timing profile ({type(err).__name__}: {err}); it needs gpu, models, "
                          f"setup_s, class_image_s and methods.<method>.{{{', '.join(METHOD_KEYS)}}}.") from err


def paper_table1() -> dict[tuple[str, str, str], float]:
    """(method, strategy, "Iterations" | "Time, min") -> the paper's Table 1 mean."""
    with open(PAPER_TABLES, newline="") as f:
        return {(r["method"], r["strategy"], r["metric"]): float(r["mean"]) for r in csv.DictReader(f)
                if r["table"] == "1" and r["metric"] in ("Iterations", "Time, min")}


@dataclass
class RunCost:
    method: str
    strategy: str              # the label (few_iters_mean, ...)
    expected_updates: float
    worst_updates: int
    expected_s: float
    worst_s: float


def _evaluations(strategy: dict, updates: float) -> float:
    """In-loop evaluations plus the final one (strategies that report their last step sample it)."""
    name, every = strategy["name"], strategy.get("eval_every") or 0
    if name == "baseline":
        return math.ceil(updates / every)
    if name == "clip_s":
        return math.floor(updates / every)
    return 1.0


def run_seconds(cfg: dict, profile: Profile, updates: float, n_val_prompts: int) -> float:
    m = profile.methods[cfg["method"]["name"]]
    ldet = cfg["ldet"]
    passes = 0.0
    if ldet["enabled"]:
        items = ldet["batch_size"] * ldet["accumulation"] * (4 if ldet.get("intervals") else 1)
        passes = (updates // ldet["every"] + 1) * items / 8
    sampling = cfg["sampling"]
    n_val = sampling.get("n_val_prompts") or n_val_prompts
    images = sampling["n_train_prompts"] + n_val * sampling["images_per_val_prompt"]
    image_s = m["image_s"] * sampling["steps"] / 50
    evals = _evaluations(cfg["strategy"], updates)
    return profile.setup_s + updates * m["update_s"] + passes * m["ldet_s"] + evals * images * image_s


def run_cost(cfg: dict, label: str, profile: Profile, paper: dict, n_val_prompts: int,
             derived_steps: int | None = None) -> RunCost:
    strategy = cfg["strategy"]
    cap = int(strategy.get("steps") or strategy.get("max_steps"))
    if derived_steps is not None:
        cap = derived_steps
    expected = float(cap)
    if strategy["name"] in ("clip_s", "dvar"):
        mean = paper.get((PAPER_NAMES[cfg["method"]["name"]], PAPER_NAMES[label], "Iterations"))
        expected = min(float(cap), mean) if mean else float(cap)
    return RunCost(cfg["method"]["name"], label, expected, cap, run_seconds(cfg, profile, expected, n_val_prompts),
                   run_seconds(cfg, profile, cap, n_val_prompts))


def time_limit_min(worst_s: float) -> int:
    return int(math.ceil((worst_s * MARGIN / 60 + SLACK_MIN) / 10) * 10)


def class_image_seconds(missing_images: int, steps: int, profile: Profile) -> float:
    """Generating the Custom Diffusion class images still missing (each once, then cached)."""
    return missing_images * profile.class_image_s * steps / 50
