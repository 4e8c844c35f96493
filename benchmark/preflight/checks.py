"""The checks a sweep must pass before anything is submitted; each returns its problems, one line
each, so that one listing shows every failure at once. None of them writes anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmark.concepts.images import image_files, load_concept_images
from benchmark.concepts.manifest import concept_folder, get_concept
from benchmark.core.errors import ConfigError
from benchmark.core.fs import writable
from benchmark.engine.class_images import generated_folder
from benchmark.protocol.config import cache_root, validate
from benchmark.weights.fetch import missing_listing


def configs(jobs) -> list[str]:
    failing: dict[str, list[str]] = {}
    for job in jobs:
        if job.cfg is not None:
            try:
                validate(job.cfg)
            except ConfigError as err:
                failing.setdefault(str(err), []).append(job.name)
    return [f"{names[0]}{f' and {len(names) - 1} more runs' if len(names) > 1 else ''}: {err}"
            for err, names in failing.items()]


def concepts(jobs, data: Path) -> list[str]:
    """Every concept of the grid is there and every image decodes."""
    problems, absent = [], []
    for concept in sorted({j.concept for j in jobs}):
        try:
            folder = concept_folder(concept, data)
        except ConfigError:
            absent.append(concept)
            continue
        try:
            load_concept_images(folder)
        except ConfigError as err:
            problems.append(str(err))
    if absent:
        names = " ".join(absent) + " " if len(absent) <= 5 else ""
        problems.insert(0, f"{len(absent)} concepts have no folder under paths.data={data}: {', '.join(absent)}. "
                           f"Fetch them with `python -m benchmark.concepts fetch {names}data={data}` or set "
                           "paths.data (env DVAR_DATA) to where the concepts live.")
    return problems


def weights_present(files, overrides: list[str]) -> list[str]:
    missing = [f for f in files if not f.local and f.cached() is None]  # local files: the load check names them
    if not missing:
        return []
    return [f"{len(missing)} weight files are not in the cache; fetch them once on a machine with network: "
            f"`python -m benchmark.weights fetch {' '.join(overrides)}`\n{missing_listing(missing)}"]


def weights_load(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Load every model the runs use (base model and metric models, whatever their source), in one
    fresh process with the network off (HF_HUB_OFFLINE=1), as a compute node without internet would.
    Returns (problems, one line per broken file; models it left alone, e.g. not built yet)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "benchmark.weights", "check", *overrides], env=env,
                          capture_output=True, text=True)
    skipped = [ln.removeprefix("skip").strip() for ln in proc.stdout.splitlines() if ln.startswith("skip")]
    if proc.returncode == 0:
        return [], skipped
    lines = [ln.removeprefix("error: ") for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    return ([f"with the network off, {ln}" for ln in lines]
            or [f"the offline weight check failed:\n{proc.stderr[-2000:]}"]), skipped


def class_images(cfgs: list[dict]) -> tuple[list[str], int]:
    """Custom Diffusion's class images: a given folder must hold them; generated ones must be in the
    cache or the cache writable. Returns (problems, images still to generate)."""
    # torch (the engine): only for grids with class images
    from benchmark.engine.backbone import built_folder, resolve_pretrained

    problems, missing = [], {}
    for cfg in cfgs:
        prior = cfg["method"].get("prior")  # a method with prior preservation (its conf has `prior`)
        if not prior:
            continue
        class_prompt = prior["class_prompt"].format(class_noun=get_concept(cfg["concept"]).class_noun)
        if prior.get("class_images_dir"):
            folder = Path(prior["class_images_dir"]).expanduser()
            if not folder.is_dir() or not image_files(folder):
                problems.append(f"method.prior.class_images_dir: {folder} holds no images; give a folder of class "
                                "images or set it to null to generate them with the base model.")
            continue
        model = cfg["model"]
        try:  # the base model's identity names the cache folder (a built model is not built here)
            ident = (built_folder if model.get("build") else resolve_pretrained)(model, cache_root(cfg))[1]
        except ConfigError:
            continue  # a model that cannot be found is reported by the weight checks
        folder = generated_folder(cache_root(cfg), ident, class_prompt, int(prior["num_class_images"]), cfg["sampling"])
        have = sum((folder / f"{i:05d}.png").exists() for i in range(int(prior["num_class_images"])))
        missing[str(folder)] = int(prior["num_class_images"]) - have
        if missing[str(folder)] and not writable(folder):
            problems.append(f"{folder}: {missing[str(folder)]} class images must be generated there, but the folder is "
                            "not writable; set paths.cache (env DVAR_CACHE) to a writable place.")
    return problems, sum(missing.values())


def results_folder(results: Path) -> list[str]:
    if writable(results):
        return []
    return [f"paths.results={results}: not writable by this user; choose a folder you can write (it is created "
            "if missing)."]


def _minutes(limit: str) -> float:
    """Slurm's time format ([days-]hours:minutes:seconds, or minutes) in minutes; inf for no limit."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return float("inf")
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def slurm_profile(launcher: dict, time_limit_min: float | None) -> list[str]:
    """The partition exists and is up, and can hold the job: time limit, GPUs, memory, CPUs.
    Checked only where `sinfo` answers (the login node of the cluster)."""
    if launcher.get("name") != "slurm" or not shutil.which("sinfo"):
        return []
    out = subprocess.run(["sinfo", "-h", "-o", "%P|%a|%l|%G|%m|%c"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return [f"sinfo failed ({out.stderr.strip()}); is this the cluster's login node?"]
    parts = {}
    for line in out.stdout.split():
        name, state, limit, gres, mem, cpus = line.split("|")
        parts.setdefault(name.rstrip("*"), (name.endswith("*"), state, limit, gres, mem, cpus))
    want = launcher.get("partition") or next((p for p, v in parts.items() if v[0]), None)
    if want not in parts:
        return [f"launcher.partition={want}: no such partition here; sinfo lists {', '.join(parts)}."]
    _, state, limit, gres, mem, cpus = parts[want]
    problems = []
    if state != "up":
        problems.append(f"partition {want} is {state}.")
    if time_limit_min and time_limit_min > _minutes(limit):
        problems.append(f"partition {want} allows {limit} per job, the sweep needs {time_limit_min:.0f} min "
                        "(launcher.timeout_min); use a longer partition.")
    if (launcher.get("gpus_per_node") or 0) > 0 and "gpu" not in gres:
        problems.append(f"partition {want} has no GPUs (gres {gres}) but launcher.gpus_per_node="
                        f"{launcher['gpus_per_node']}; choose a GPU partition.")
    if launcher.get("mem_gb") and float(launcher["mem_gb"]) * 1024 > float(mem.rstrip("+")):
        problems.append(f"launcher.mem_gb={launcher['mem_gb']} exceeds the {mem} MB of a node in {want}.")
    if launcher.get("cpus_per_task") and int(launcher["cpus_per_task"]) > int(cpus.rstrip("+")):
        problems.append(f"launcher.cpus_per_task={launcher['cpus_per_task']} exceeds the {cpus} CPUs of a node in {want}.")
    return problems
