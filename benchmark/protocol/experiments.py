"""Experiments (committed grids) → the runs they contain (one composed config per run).

An experiment file (conf/experiments/<name>.yaml) is data, reviewed like code:

    # python -m benchmark.sweep experiment=smoke        <- the first comment: the command
    overrides: [model=tiny, ...]      # for every run (Hydra override syntax)
    grid:                             # crossed: one run per combination
      method: [textual_inversion, dreambooth_lora, custom_diffusion]
      strategy: [baseline, clip_s, few_iters_mean, few_iters_max, dvar]
      concept: [sample_duck_toy]      # or "all": the 48 concepts of the manifest
      seed: [59]
    variants: [[ldet.batch_size=1], [ldet.batch_size=8]]   # optional, crossed with the grid
    per_method: {custom_diffusion: [method.prior.num_class_images=4]}
    per_strategy: {custom: [strategy.criterion=examples/plateau_criterion.py:Plateau]}   # optional
    few_iters: derive                 # derive (from this sweep's CLIP-s stop steps) | pinned
    base: toy_table1                  # optional: start from that experiment's keys; these replace them,
                                      # except `overrides`, which come after the base's

"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.concepts.manifest import load_manifest
from benchmark.core.errors import ConfigError, read_yaml
from benchmark.core.registry import unknown_name_error
from benchmark.protocol.config import compose, run_id, trajectory_id
from benchmark.protocol.strategies import (
    DERIVED_KEY,
    derivation_sources,
    strategy_class,
)

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "conf" / "experiments"
GRID_KEYS = ("method", "strategy", "concept", "seed")


def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def load_experiment(name: str) -> dict:
    """An experiment by name (conf/experiments/<name>.yaml) or by path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.exists():
        raise unknown_name_error("experiment", name, available_experiments(), key="experiment")
    exp = read_yaml(path, "an experiment") or {}
    if not isinstance(exp, dict):
        raise ConfigError(f"{path}: holds a {type(exp).__name__}, not an experiment; see benchmark/sweep/plan.py for "
                          "the format.")
    if "base" in exp:  # the same runs' settings as another experiment, on another grid (e.g. tuning concepts)
        base = load_experiment(str(exp.pop("base")))
        own = list(exp.pop("overrides", None) or [])
        exp = {**{k: v for k, v in base.items() if k not in ("name", "path")}, **exp}
        exp["overrides"] = list(base.get("overrides") or []) + own
    unknown = set(exp) - {"description", "overrides", "grid", "variants", "per_method", "per_strategy", DERIVED_KEY,
                        "runs_per_job"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; see benchmark/sweep/plan.py for the format.")
    missing = [k for k in GRID_KEYS if not isinstance(exp.get("grid"), dict) or k not in exp["grid"]]
    if missing:
        raise ConfigError(f"{path}: grid must list {', '.join(missing)}.")
    check_lists(path, exp)
    per_job = exp.get("runs_per_job")
    if per_job is not None and (isinstance(per_job, bool) or not isinstance(per_job, int) or per_job < 1):
        raise ConfigError(f"{path}: runs_per_job must be a positive integer (got {per_job!r}).")
    if exp.get(DERIVED_KEY, "derive") not in ("derive", "pinned"):
        raise ConfigError(f"{path}: {DERIVED_KEY} must be derive or pinned (got {exp[DERIVED_KEY]!r}).")
    exp["name"] = path.stem
    exp["path"] = str(path)
    return exp


def check_lists(path: Path, exp: dict) -> None:
    """The grid's axes, overrides and variants are lists (a scalar would be crossed letter by letter)."""
    def is_list(value, kind=str) -> bool:
        return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)

    examples = {"method": "NAME", "strategy": "NAME", "concept": "cat, dog", "seed": "59"}
    for key in GRID_KEYS:
        value = exp["grid"][key]
        if not (value and is_list(value, int if key == "seed" else str)) and not (key == "concept" and value == "all"):
            raise ConfigError(f"{path}: grid.{key} must be a list, e.g. {key}: [{examples[key]}] (got {value!r}).")
    variants, per_method = exp.get("variants") or [], exp.get("per_method") or {}
    per_strategy = exp.get("per_strategy") or {}
    if not isinstance(variants, list) or not isinstance(per_method, dict) or not isinstance(per_strategy, dict):
        raise ConfigError(f"{path}: variants must be a list of override lists, per_method and per_strategy "
                          "maps from a method or a strategy to its overrides (see benchmark/protocol/experiments.py).")
    for key, value in [("overrides", exp.get("overrides") or []), *((f"variants[{i}]", v) for i, v in enumerate(variants)),
                       *((f"per_method.{m}", v) for m, v in per_method.items()),
                       *((f"per_strategy.{m}", v) for m, v in per_strategy.items())]:
        if not is_list(value):
            raise ConfigError(f"{path}: {key} must be a list of key=value overrides, e.g. [model=tiny] (got {value!r}).")


@dataclass
class Job:
    """One run of a sweep. `cfg` is None for a Few-iters run whose step count is derived from
    CLIP-s runs that have not finished yet."""

    method: str
    strategy: str               # the strategy's name (its config file, registry key and records partition)
    concept: str
    seed: int
    overrides: list[str]
    cfg: dict | None = None
    derive: str | None = None   # "mean" | "max" for derived Few-iters
    clip_s_ids: list[str] = field(default_factory=list)  # the CLIP-s runs the derivation reads

    @property
    def run_id(self) -> str | None:
        return run_id(self.cfg) if self.cfg else None

    @property
    def trajectory(self) -> str | None:
        return trajectory_id(self.cfg) if self.cfg else None

    @property
    def name(self) -> str:
        return f"{self.method}/{self.strategy}/{self.concept}/seed{self.seed}"


class Composer:
    """Hydra composition is slow (~0.1 s), so compose once per override set and set concept and
    seed directly (no config interpolates them)."""

    def __init__(self):
        self._cache: dict[tuple, dict] = {}

    def __call__(self, overrides: list[str], concept: str, seed: int) -> dict:
        key = tuple(overrides)
        if key not in self._cache:
            self._cache[key] = compose(list(overrides))
        cfg = copy.deepcopy(self._cache[key])
        cfg["concept"], cfg["seed"] = concept, int(seed)
        return cfg


def _concepts(value) -> list[str]:
    if value == "all":
        return [c.name for c in load_manifest().values() if c.source != "bundled"]
    return list(value)


def expand(exp: dict, cli_overrides: list[str], narrow: dict | None = None, composer: Composer | None = None) -> list[Job]:
    """All runs of the experiment, CLIP-s-derived Few-iters left undecided (cfg None)."""
    composer = composer or Composer()
    grid = {k: list(exp["grid"][k]) if k != "concept" else _concepts(exp["grid"][k]) for k in GRID_KEYS}
    for key, values in (narrow or {}).items():
        if values:
            grid[key] = list(values)
    jobs: list[Job] = []
    for variant in exp.get("variants") or [[]]:
        for method, strategy, concept, seed in itertools.product(*(grid[k] for k in GRID_KEYS)):
            overrides = [*exp.get("overrides", []), f"experiment={exp['name']}", f"method={method}",
                         f"strategy={strategy}", *exp.get("per_method", {}).get(method, []),
                         *exp.get("per_strategy", {}).get(strategy, []), *variant,
                         *cli_overrides]
            job = Job(method, strategy, concept, int(seed), overrides)
            derive = strategy_class(strategy).derive
            if derive and exp.get(DERIVED_KEY, "derive") == "derive":
                job.derive = derive
            else:
                job.cfg = composer(overrides, concept, seed)
            jobs.append(job)
    sources = derivation_sources()  # the strategies whose runs derived budgets come from (CLIP-s for Few-iters)
    by_method = {}
    for job in (j for j in jobs if j.strategy in sources):
        by_method.setdefault((job.strategy, job.method, tuple(job.overrides)), []).append(job.run_id)
    for job in jobs:
        if job.derive:
            source = strategy_class(job.strategy).derived_from
            key = (source, job.method, tuple(o.replace(f"strategy={job.strategy}", f"strategy={source}")
                                             for o in job.overrides))
            job.clip_s_ids = by_method.get(key, [])
            if not job.clip_s_ids:
                raise ConfigError(f"{exp['path']}: {job.strategy} for {job.method} derives its steps from {source} "
                                  f"runs, but the grid has none; add {source} to grid.strategy or set "
                                  f"{DERIVED_KEY}: pinned.")
    return jobs


# --- reading the records ------------------------------------------------------------------------
