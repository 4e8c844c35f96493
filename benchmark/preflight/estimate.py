"""What a sweep will cost on the target GPU, from a recorded step-time profile.

A timing profile (`slurm/a100.timing.yaml`, next to the Slurm launcher profile that names it) holds
per method the seconds of one update, of one L_det pass over 8 items, and of sampling and scoring
one evaluation image at 50 steps, measured by `python -m benchmark.measure.bench --record FILE` on that GPU.
A run's time on its own is then

    setup + updates x update + L_det passes x ldet + evaluated images x image (+ its class images)

Expected updates: the budget for Baseline and Few-iters (derived Few-iters: the paper's values
until this sweep's CLIP-s runs have finished), the paper's Table 1 mean for CLIP-s and DVAR, capped
by the budget. The sweep trains each trajectory once for the runs that share it: one setup, the
updates of its longest run, each L_det variant while a run watches it, one evaluation per evaluated
step, a final evaluation per run that reports its stop step, and derived Few-iters as branches from
the nearest snapshot. The worst case (every run to its cap) sets the Slurm time limit of each job.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.core.errors import ConfigError, read_yaml
from benchmark.protocol.config import ldet_variant, logs_ldet
from benchmark.protocol.strategies import display_names, make_strategy

PAPER_TABLES = Path(__file__).resolve().parents[2] / "analysis" / "paper_tables.csv"
# The paper's names of the strategies (their display names); a method's is its conf's `paper_name` (none: no
# paper values).
PAPER_NAMES = display_names()
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
    fallbacks: set[str] = field(default_factory=set)  # methods priced as the slowest profiled one

    def covers(self, cfg: dict) -> bool:
        return cfg["model"]["name"] in self.models

    def method(self, name: str) -> dict[str, float]:
        """The method's step costs; a method the profile lacks is priced as the slowest profiled
        method, key by key (an upper bound for a plugin of the same base model), and listed."""
        if name in self.methods:
            return self.methods[name]
        self.fallbacks.add(name)
        return {k: max(m[k] for m in self.methods.values()) for k in METHOD_KEYS}

    def fallback_note(self) -> str | None:
        if not self.fallbacks:
            return None
        return (f"warning: {', '.join(sorted(self.fallbacks))} not in {self.path}; priced as its slowest method, "
                f"key by key. Record it: `python -m benchmark.measure.bench --record {self.path} --methods "
                f"{' '.join(sorted(self.fallbacks))}`.")


def load_profile(path: Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"timing profile {path} does not exist; record one on the target GPU with "
                          f"`python -m benchmark.measure.bench model=sd15 metrics=real --record {path}`.")
    raw = read_yaml(path, "a timing profile") or {}
    try:
        methods = {m: {k: float(v[k]) for k in METHOD_KEYS} for m, v in raw["methods"].items()}
        if not methods:
            raise ValueError("no methods")
        return Profile(path, str(raw["gpu"]), list(raw["models"]), float(raw["setup_s"]),
                       float(raw["class_image_s"]), methods, str(raw.get("source", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
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
    paper_method: str | None = None  # the method's name in the paper's tables (`method.paper_name`)


def strategy_of(cfg: dict):
    """The run's strategy object, which prices its schedule."""
    return make_strategy(cfg["strategy"], cfg["ldet"]["every"])


def ldet_steps(cfg: dict, updates: float, start: int = 0) -> set[int]:
    """The steps after `start` (and step 0 itself for a pass from 0) at which a run computes L_det
    (benchmark.protocol.config.logs_ldet: what its criterion watches and what `ldet.log` adds)."""
    watched = strategy_of(cfg).needs_ldet
    first = start + 1 if start else 0
    return {s for s in range(first, int(updates) + 1) if logs_ldet(cfg["ldet"], watched, s)}


def ldet_items(ldet: dict) -> float:
    """Items of one L_det evaluation in units of the profile's 8-item pass (intervals: 4 timesteps each)."""
    return ldet["batch_size"] * ldet["accumulation"] * (4 if ldet.get("intervals") else 1) / 8


def run_seconds(cfg: dict, profile: Profile, updates: float, n_val_prompts: int) -> float:
    m = profile.method(cfg["method"]["name"])
    passes = len(ldet_steps(cfg, updates)) * ldet_items(cfg["ldet"])
    sampling = cfg["sampling"]
    n_val = sampling.get("n_val_prompts") or n_val_prompts
    images = sampling["n_train_prompts"] + n_val * sampling["images_per_val_prompt"]
    image_s = m["image_s"] * sampling["steps"] / 50
    evals = strategy_of(cfg).evaluations(updates)
    return profile.setup_s + updates * m["update_s"] + passes * m["ldet_s"] + evals * images * image_s


def run_cost(cfg: dict, label: str, profile: Profile, paper: dict, n_val_prompts: int,
             derived_steps: int | None = None) -> RunCost:
    strategy = cfg["strategy"]
    cap = int(strategy.get("steps") or strategy.get("max_steps"))
    if derived_steps is not None:
        cap = derived_steps
    mean = paper.get((cfg["method"].get("paper_name"), PAPER_NAMES.get(label), "Iterations"))
    expected = strategy_of(cfg).expected_updates(cap, mean)
    return RunCost(cfg["method"]["name"], label, expected, cap, run_seconds(cfg, profile, expected, n_val_prompts),
                   run_seconds(cfg, profile, cap, n_val_prompts), cfg["method"].get("paper_name"))


@dataclass
class TrajectoryCost:
    expected_s: float
    worst_s: float          # the first pass (one Slurm job)
    branch_worst_s: float   # the derived Few-iters pass, a job of its own (0 when none)


def _pass_seconds(members: list[tuple[dict, float, int]], profile: Profile, n_val_prompts: int) -> float:
    """One pass along a trajectory observed by `members` = (config, expected updates, start step),
    setup aside."""
    cfg0 = members[0][0]
    m = profile.method(cfg0["method"]["name"])
    start = min(s for _, _, s in members)
    updates = max(u for _, u, _ in members) - start
    variants: dict[str, tuple[dict, set[int]]] = {}  # each variant once per step any member computes it
    for cfg, u, _ in members:
        if cfg["ldet"]["enabled"]:
            ldet, steps = variants.setdefault(ldet_variant(cfg["ldet"]), (cfg["ldet"], set()))
            steps |= ldet_steps(cfg, u, start)
    passes = sum(len(steps) * ldet_items(ldet) for ldet, steps in variants.values())
    eval_steps: set[int] = set()
    finals = 0
    for cfg, u, _ in members:
        strategy = strategy_of(cfg)
        if strategy.evaluates_in_loop:
            eval_steps |= strategy.eval_steps(u)
        else:
            finals += 1
    sampling = cfg0["sampling"]
    n_val = sampling.get("n_val_prompts") or n_val_prompts
    images = sampling["n_train_prompts"] + n_val * sampling["images_per_val_prompt"]
    image_s = m["image_s"] * sampling["steps"] / 50
    return updates * m["update_s"] + passes * m["ldet_s"] + (len(eval_steps) + finals) * images * image_s


def trajectory_cost(members: list[tuple[dict, RunCost, bool]], profile: Profile, n_val_prompts: int) -> TrajectoryCost:
    """The cost of training one trajectory once for its runs: (config, the run's cost, derived?).
    Derived Few-iters branch later (a job of their own) from the latest snapshot at or before their
    budget, one pass per starting snapshot."""
    out = []
    for worst in (False, True):
        first = [(cfg, c.worst_updates if worst else c.expected_updates, 0) for cfg, c, derived in members if not derived]
        branches: dict[int, list] = {}
        for cfg, c, derived in members:
            if derived:
                every = int(cfg.get("checkpoint_every") or 0)
                start = (c.worst_updates // every) * every if every else 0
                branches.setdefault(start, []).append((cfg, c.worst_updates, start))
        first_s = profile.setup_s + _pass_seconds(first, profile, n_val_prompts) if first else 0.0
        branch_s = profile.setup_s + sum(_pass_seconds(b, profile, n_val_prompts) for b in branches.values()) \
            if branches else 0.0
        out.append((first_s, branch_s))
    (e_first, e_branch), (w_first, w_branch) = out
    return TrajectoryCost(e_first + e_branch, w_first, w_branch)


def time_limit_min(worst_s: float) -> int:
    return int(math.ceil((worst_s * MARGIN / 60 + SLACK_MIN) / 10) * 10)


def class_image_seconds(missing_images: int, steps: int, profile: Profile) -> float:
    """Generating the Custom Diffusion class images still missing (each once, then cached)."""
    return missing_images * profile.class_image_s * steps / 50
