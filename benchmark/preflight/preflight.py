"""Run every check of a sweep on the login node, offline, and price it: one listing of all failures,
then the GPU-hours per method x strategy and the Slurm time limit each job will request."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from benchmark.concepts.manifest import get_concept
from benchmark.core.errors import ConfigError
from benchmark.core.provenance import project_path
from benchmark.preflight import checks
from benchmark.preflight.estimate import (
    PAPER_NAMES,
    RunCost,
    TrajectoryCost,
    class_image_seconds,
    load_profile,
    paper_table1,
    run_cost,
    time_limit_min,
    trajectory_cost,
)
from benchmark.protocol.config import trajectory_id
from benchmark.protocol.strategies import REFERENCE, strategy_class
from benchmark.weights.files import required


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)     # what was checked, for the listing
    costs: list[RunCost] = field(default_factory=list)               # each run on its own
    trajectories: list[TrajectoryCost] = field(default_factory=list)  # as the sweep trains them
    class_images_s: float = 0.0
    time_limit_min: int | None = None                   # what each Slurm job requests
    profile: object = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _check(pf: Preflight, label: str, problems: list[str]) -> None:
    pf.problems += problems
    pf.lines.append(f"  {'ok  ' if not problems else 'FAIL'}  {label}")


def job_configs(jobs) -> list[tuple[object, dict, int | None]]:
    """(job, config, derived steps) for every job: a derived Few-iters job borrows its CLIP-s
    sibling's config and, until its CLIP-s runs finish, the paper's step count of the method (at most
    the CLIP-s cap)."""
    siblings = {(j.strategy, j.method, j.concept, j.seed): j.cfg for j in jobs if j.cfg}
    out = []
    for job in jobs:
        if job.cfg is not None:
            out.append((job, job.cfg, None))
            continue
        derived = strategy_class(job.strategy)
        cfg, steps = derived.derived_config(siblings[(derived.derived_from, job.method, job.concept, job.seed)])
        out.append((job, cfg, steps))
    return out


def estimate(jobs, launcher: dict, missing_class_images: int, runs_per_job: int | None = None):
    """(the cost of each run on its own, of each trajectory as the sweep trains it, of the class
    images, the profile), or empty costs when the launcher's profile does not cover the model."""
    if not launcher.get("timing"):
        return [], [], 0.0, None
    profile = load_profile(project_path(launcher["timing"]))
    triples = job_configs(jobs)
    if not triples or not all(profile.covers(cfg) for _, cfg, _ in triples):
        return [], [], 0.0, profile
    paper = paper_table1()
    costs, groups = [], {}
    for job, cfg, derived in triples:
        n_val = len(get_concept(job.concept).val_prompts)
        cost = run_cost(cfg, job.strategy, profile, paper, n_val, derived)
        costs.append(cost)
        groups.setdefault(trajectory_id(cfg), ([], n_val))[0].append((cfg, cost, derived is not None))
    size = runs_per_job or max(len(m) for m, _ in groups.values())
    trajectories = [trajectory_cost(members[i:i + size], profile, n_val)  # the sweep's jobs: at most size runs
                    for members, n_val in groups.values() for i in range(0, len(members), size)]
    steps = triples[0][1]["sampling"]["steps"]
    return costs, trajectories, class_image_seconds(missing_class_images, steps, profile), profile


def run_preflight(jobs, env: dict, overrides: list[str], runs_per_job: int | None = None,
                  load_weights: bool = True) -> Preflight:
    pf = Preflight()
    cfgs = [c for _, c, _ in job_configs(jobs)]
    bad_configs = checks.configs(jobs)
    _check(pf, f"{len(jobs)} run configs validate", bad_configs)
    concepts = sorted({j.concept for j in jobs})
    _check(pf, f"{len(concepts)} concepts: every image decodes", checks.concepts(jobs, env["data"]))
    files = required(cfgs)
    missing = checks.weights_present(files, overrides)
    loads, skipped = [], []
    if not missing and load_weights and not bad_configs:  # every model, whatever its source: one fresh process
        # (it validates the configs first: a bad one would only be listed twice)
        loads, skipped = checks.weights_load(overrides)
    _check(pf, weights_label(sum(not f.local for f in files), load_weights and not missing and not bad_configs, skipped),
           missing + loads)
    problems, missing_images = checks.class_images(cfgs)
    _check(pf, "class images: " + (f"{missing_images} to generate" if missing_images else "cached or none needed"),
           problems)
    _check(pf, f"results folder {env['results']} is writable", checks.results_folder(env["results"]))
    try:
        pf.costs, pf.trajectories, pf.class_images_s, pf.profile = estimate(jobs, env["launcher"], missing_images,
                                                                            runs_per_job)
    except ConfigError as err:  # a broken profile is a problem of its own, listed with the rest
        pf.problems.append(str(err))
    if pf.trajectories:
        pf.time_limit_min = time_limit_min(max(max(t.worst_s, t.branch_worst_s) for t in pf.trajectories))
    launcher = dict(env["launcher"])
    if launcher.get("timeout_min") not in (None, "auto"):
        pf.time_limit_min = int(launcher["timeout_min"])
    if launcher.get("name") == "slurm":
        _check(pf, f"Slurm partition {launcher.get('partition') or '(default)'} can hold the jobs",
               checks.slurm_profile(launcher, pf.time_limit_min))
    return pf


def weights_label(cached: int, loaded: bool, skipped: list[str]) -> str:
    """What the weight check covered, in the listing's words: files in the libraries' caches, models
    loaded offline, models left alone (a model built from config that is not built yet)."""
    parts = [f"{cached} weight files in the cache"] if cached else []
    if loaded:
        parts.append("every model loads with the network off" + (f", except {'; '.join(skipped)}" if skipped else ""))
    return ", ".join(parts) or "no weight files to fetch (models built from config)"


def paper_minutes(paper: dict, paper_method: str | None, strategy: str, cap: int) -> float | None:
    """The paper's Table 1 minutes for this cell, where the budget is the paper's (else None)."""
    m, s = paper_method, PAPER_NAMES.get(strategy)
    if not m or not s:
        return None
    # a strategy with the method's whole budget as its cap is priced against the reference's iterations
    own = strategy_class(strategy)
    budget = paper.get((m, PAPER_NAMES[REFERENCE] if own.budget_key == "max_steps" else s, "Iterations"))
    return paper.get((m, s, "Time, min")) if budget == cap else None


def format_estimate(pf: Preflight, launcher: dict, explain_missing: bool = False) -> list[str]:
    if pf.profile is None or (not pf.costs and not explain_missing):
        return []
    if not pf.costs:
        return [f"no estimate: {pf.profile.path} is a profile of {', '.join(pf.profile.models)} on {pf.profile.gpu}, "
                "not of this sweep's model."]
    paper = paper_table1()
    groups: dict[tuple[str, str], list[RunCost]] = defaultdict(list)
    for c in pf.costs:
        groups[(c.method, c.strategy)].append(c)
    out = [f"estimate on {pf.profile.gpu} ({pf.profile.path}):",
           f"  {'method':<19}{'strategy':<16}{'runs':>5}{'updates':>9}{'min/run':>9}{'GPU-h':>8}{'worst min':>10}"
           f"{'paper min':>10}"]
    for (method, strategy), cs in groups.items():
        n = len(cs)
        paper_min = paper_minutes(paper, cs[0].paper_method, strategy, max(c.worst_updates for c in cs))
        out.append(f"  {method:<19}{strategy:<16}{n:>5}{sum(c.expected_updates for c in cs) / n:>9.0f}"
                   f"{sum(c.expected_s for c in cs) / n / 60:>9.1f}{sum(c.expected_s for c in cs) / 3600:>8.1f}"
                   f"{max(c.worst_s for c in cs) / 60:>10.1f}{f'{paper_min:.1f}' if paper_min else '-':>10}")
    alone = sum(c.expected_s for c in pf.costs) / 3600
    shared = sum(t.expected_s for t in pf.trajectories) / 3600
    worst = sum(t.worst_s + t.branch_worst_s for t in pf.trajectories) / 3600
    out.append(f"  total: {len(pf.costs)} runs as {len(pf.trajectories)} trajectory jobs: {shared:.1f} GPU-h expected "
               f"({worst:.1f} if every run goes to its cap)"
               + (f" + {pf.class_images_s / 3600:.1f} GPU-h of class images" if pf.class_images_s else "")
               + f"; {alone:.1f} GPU-h if every run trained on its own ({alone / shared:.2f}x)")
    if pf.profile.fallback_note():
        out.append("  " + pf.profile.fallback_note())
    out.append("  min/run: a run on its own, L_det and evaluations included; 'paper min' is the paper's Table 1 time "
               "(its protocol's cost, no L_det where a strategy does not use it).")
    if pf.time_limit_min:
        given = launcher.get("timeout_min") not in (None, "auto")
        out.append(f"  Slurm time limit per job: {pf.time_limit_min} min" + (" (launcher.timeout_min)" if given else
                   " (the longest trajectory's worst case x 1.25 + 10 min; set launcher.timeout_min to choose)"))
    return out


def format_problems(pf: Preflight) -> list[str]:
    return [f"the sweep cannot start: {len(pf.problems)} problems, nothing was submitted:",
            *(f"  - {p}" for p in pf.problems)]
