"""Run configs: resolution to plain dicts, validation before any training, and run identity."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from benchmark.concepts.images import concept_digest
from benchmark.concepts.manifest import get_concept, load_manifest
from benchmark.core import plugins
from benchmark.core.errors import ConfigError, boolean, choice, integer, number
from benchmark.core.provenance import project_path
from benchmark.core.registry import did_you_mean, unknown_name_error
from benchmark.protocol.strategies import MAX_STEPS, check_protocol, make_strategy

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Keys that do not change what a run computes: excluded from its identity (Dora's signature idea).
NON_SEMANTIC = (
    "experiment", "paths", "device", "deterministic", "progress", "log_every", "checkpoint_every", "num_workers",
    "launcher", "sweep", "sampling.batch_size", "sampling.save_images", "ldet.forward_batch",
    "model.sampler",  # only the default of sampling.scheduler, which is hashed
    "method.plugin", "method.paper_name",  # where a method's code lives and its name in the paper; `method.name` is hashed
    "records", "logger",  # when the records are written and where else the rows go
)
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
# The samplers of evaluation images, by name (benchmark.engine.sampling builds them).
SCHEDULERS = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}


def resolve(cfg) -> dict:
    """A Hydra/OmegaConf config → a plain, fully resolved dict; missing values become ConfigErrors."""
    if not isinstance(cfg, DictConfig):
        return copy.deepcopy(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"Missing config value `{err.full_key}`: set it on the command line, "
                          f"e.g. `{err.full_key}=...`.") from err
    except InterpolationResolutionError as err:
        raise ConfigError(f"Config value `{getattr(err, 'full_key', '?')}` cannot be resolved: {err}") from err


def compose(overrides: list[str]) -> dict:
    """conf/run.yaml composed with Hydra overrides, resolved to the plain dict a run receives; a bad
    override is a one-line ConfigError."""
    GlobalHydra.instance().clear()
    search = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in extra_conf_dirs())}]"] if extra_conf_dirs() else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = resolve(hydra_compose(config_name="run", overrides=[*search, *overrides]))
        except HydraException as err:
            first = str(err).splitlines()[0]
            raise ConfigError(f"bad override: {first} (`python -m benchmark.run --help` lists the groups and keys).") \
                from err
    refuse_new_keys(overrides, [o for o in overrides if not o.startswith("+")])
    return cfg


# The only places where a config may gain keys (`+key=value`): free-form dicts passed on as they are.
OPEN_KEYS = ("launcher.additional_parameters", "metrics.dino.kwargs", "metrics.clip.config",
             "strategy.params")  # strategy=custom: its criterion's keyword arguments, which it checks itself
# Keys a conf reads only where they are set (`${oc.select:...}`): `+key=value` is how to set them.
OPTIONAL_KEYS = ("method.protocol.clip_s.max_steps",)  # conf/strategy/clip_s.yaml: CLIP-s's own cap


def refuse_new_keys(overrides: list[str], known: list[str]) -> None:
    """A `+key=value` that adds a key nothing reads would change the run id and do nothing."""
    added = [o.lstrip("+").split("=", 1)[0] for o in overrides if o.startswith("+")]
    added = [k for k in added if not any(k == p or k.startswith(p + ".") for p in (*OPEN_KEYS, *OPTIONAL_KEYS))]
    if not added:
        return
    base = compose(known)
    problems = []
    for key in added:
        parent, _, leaf = key.rpartition(".")
        node = base
        for part in parent.split(".") if parent else []:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and leaf in node:
            continue  # `+` on a key that exists: Hydra refuses it itself
        choices = [f"{parent}.{k}" if parent else k for k in (node if isinstance(node, dict) else {})]
        problems.append(f"unknown config key `{key}` (from `+{key}=...`): nothing reads it, so it would change the "
                        f"run id and do nothing.{did_you_mean(key, choices)}")
    raise ConfigError(" ".join(problems))


def _drop(cfg: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head in cfg:
        if rest:
            if isinstance(cfg[head], dict):
                _drop(cfg[head], rest)
        else:
            del cfg[head]


def semantic(cfg: dict) -> dict:
    """What a run computes from: the config without paths, devices and logging, plus the content of
    the concept's files (new images or captions make a new run, not one skipped as done)."""
    out = copy.deepcopy(cfg)
    for key in NON_SEMANTIC:
        _drop(out, key)
    out.pop("hydra", None)
    if "concept" in cfg and "paths" in cfg:
        out["concept_images"] = concept_images(str(cfg["concept"]), str(cfg["paths"]["data"]))
    return out


def concept_images(concept: str, data: str) -> str | None:
    """A digest of the files a run reads from the concept's folder (images, captions.txt), or None
    while they are not there (not fetched yet). Named for the images alone, as it was first: a new
    name would change every run id."""
    known = load_manifest().get(concept)
    folder = known.folder(Path(data)) if known else None
    if folder is None or not folder.is_dir():
        return None
    try:
        stats = [(p.name, p.stat()) for p in sorted(folder.iterdir())]
    except OSError:
        return None
    # The folder's state: a rewrite changes a file's ctime, which no tool sets back (unlike its mtime),
    # a replacement its inode. Timestamps are coarse (a clock tick, or seconds on some filesystems), so a
    # file changed within RACY_NS could change again with the same state: such a folder is hashed
    # afresh (git's "racily clean" rule).
    stamp = tuple((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for name, st in stats)
    if time.time_ns() - max((st.st_ctime_ns for _, st in stats), default=0) < RACY_NS:
        return _digest.__wrapped__(str(folder), stamp)
    return _digest(str(folder), stamp)


RACY_NS = 2_000_000_000


@functools.lru_cache(maxsize=4096)
def _digest(folder: str, stamp: tuple) -> str | None:
    """Cached per folder state: each file is hashed once per process while it does not change."""
    try:
        return concept_digest(Path(folder))
    except (ConfigError, OSError):
        return None


# What a strategy and its L_det evaluation batch own: runs that differ only here follow the same
# parameter trajectory (monitoring never touches the training stream), so one training serves them.
OBSERVER_ONLY = ("strategy", "ldet", "method.protocol", "method.max_train_steps")


def trajectory_id(cfg: dict) -> str:
    """10 hex characters naming the parameter trajectory a run follows."""
    out = semantic(cfg)
    for key in OBSERVER_ONLY:
        _drop(out, key)
    return hashlib.sha1(json.dumps(out, sort_keys=True, default=str).encode()).hexdigest()[:10]


def ldet_variant(ldet_cfg: dict) -> str:
    """One L_det variant per distinct evaluation-batch config: runs of a trajectory on the same
    variant share its computation. While every source is fixed the batch never redraws, so its value
    at a step does not depend on which runs log it at which steps (`ldet.log`): runs that differ only
    there share the variant."""
    cfg = dict(ldet_cfg)
    if all(cfg["fixed"].values()):
        cfg.pop("log", None)
    return json.dumps(cfg, sort_keys=True)


def logs_ldet(ldet_cfg: dict, watched: bool, step: int) -> bool:
    """Whether a run computes L_det at `step`: a criterion that watches it (`watched`) reads it every
    `ldet.every` updates; other runs log it as `ldet.log` says (watched: never, always: every
    `ldet.every` updates, N: every N updates)."""
    if not ldet_cfg["enabled"] or step % int(ldet_cfg["every"]):
        return False
    logged = ldet_cfg.get("log", "watched")
    return watched or logged == "always" or (logged != "watched" and step % int(logged) == 0)


def run_id(cfg: dict) -> str:
    """10 hex characters of the SHA-1 of the semantic config: same config, same run."""
    blob = json.dumps(semantic(cfg), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


SEED_MAX = 2**31 - 1


def _seed(key, value):
    return integer(key, value, 0, SEED_MAX)


def _steps(lo: int = 1, note: str = ""):
    return lambda key, value: integer(key, value, lo, MAX_STEPS, note)


def _ints(lo: int, hi: int, note: str = ""):
    return lambda key, value: integer(key, value, lo, hi, note)


def _numbers(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False, note: str = ""):
    return lambda key, value: number(key, value, lo, hi, open_lo, open_hi, note)


def _optional(check, note: str):
    """null, or a value `check` accepts (its message then says what null means)."""
    def checked(key, value):
        if value is None:
            return None
        try:
            return check(key, value)
        except ConfigError as err:
            raise ConfigError(f"{str(err).rstrip('.')}; or null: {note}.") from None
    return checked


def _one_of(*choices):
    return lambda key, value: choice(key, value, choices)


def _device(key, value):
    _check(isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None,
           f"{key} must be auto, cpu, cuda, cuda:N or mps (got {value!r}).")


def _name(key, value):
    _check(isinstance(value, (str, int)) and not isinstance(value, bool)
           and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(value)) is not None,
           f"{key} must be a name of letters, digits, _ . - (it names folders and a records partition; got {value!r}).")


def _path(key, value):
    _check(isinstance(value, str) and value.strip() != "", f"{key} must be a folder path (got {value!r}).")


# Optional live views of the runs (benchmark.engine.loggers), each with its pip extra.
LOGGERS = ("none", "tensorboard", "wandb")


def _logger(key, value):
    """A known logger whose package is installed: a sweep must not find out at its first step."""
    choice(key, value, LOGGERS)
    _check(value == "none" or importlib.util.find_spec(value) is not None,
           f"{key}={value} needs the {value} package: pip install 'dvar-bench[{value}]' (or set {key}=none).")


def _guidance(key, value):
    return number(key, value, 1, 100, note="1: no classifier-free guidance")


# Every key of conf/ that holds a number, a switch or a word, with its type and range, by the dotted
# name the user sets (a key a config lacks is skipped: prior is Custom Diffusion's, lora
# DreamBooth-LoRA's). Strategy keys are checked by benchmark.protocol.strategies, launcher keys by the sweep
# that reads them; ldet.log, ldet.timestep_range, model.resolution and model.pretrained below. Not
# here: the component configs under model.build.<component>, metrics.clip.config and
# metrics.dino.kwargs, the libraries' own constructor arguments, passed on as they are.
KEYS = {
    "experiment": _name,
    "seed": _seed,
    "device": _device,
    "mixed_precision": _one_of(*MIXED_PRECISION),
    "deterministic": boolean,
    "train_batch_size": _ints(1, 1024),
    "num_workers": _ints(0, 64),
    "checkpoint_every": _steps(0, "0: a snapshot at the end only"),
    "log_every": _steps(),
    "records.flush_every": _steps(),
    "logger": _logger,
    "progress": boolean,
    "paths.results": _path,
    "paths.data": _path,
    "paths.cache": _path,
    "ldet.enabled": boolean,
    "ldet.every": _steps(),
    "ldet.batch_size": _ints(1, 1000),
    "ldet.accumulation": _ints(1, 1000),
    "ldet.forward_batch": _ints(0, 4096),
    "ldet.seed_offset": _seed,
    **{f"ldet.fixed.{source}": boolean for source in ("images", "captions", "latents", "noise", "timesteps")},
    "ldet.intervals": boolean,
    "model.sample_steps": _ints(1, 1000),
    "model.build.seed": _seed,
    "metrics.seed": _seed,
    "metrics.pairing": _one_of("all_pairs", "index"),
    "metrics.text_subject": _one_of("remove", "class_noun"),
    "metrics.lpips.net": _one_of("alex", "vgg", "squeeze"),
    "metrics.lpips.pretrained_backbone": boolean,
    "metrics.dino.pretrained": boolean,
    "method.learning_rate": _numbers(0, 1, open_lo=True),
    "method.adam.beta1": _numbers(0, 1, open_hi=True),
    "method.adam.beta2": _numbers(0, 1, open_hi=True),
    "method.adam.weight_decay": _numbers(0, 1),
    "method.adam.eps": _numbers(0, 1, open_lo=True),
    "method.max_grad_norm": _optional(_numbers(0, 1e6, open_lo=True), "no clipping"),
    "method.max_train_steps": _steps(),
    "method.guidance": _guidance,
    "method.captions": _one_of("templates", "instance"),
    "method.center_crop": boolean,
    "method.flip_p": _numbers(0, 1),
    "method.random_rescale": boolean,
    "method.prior.weight": _numbers(0, 100),
    "method.prior.num_class_images": _ints(1, 100_000),
    "method.lora.rank": _ints(1, 1024),
    "method.lora.alpha": _numbers(0, 10_000, open_lo=True),
    "sampling.steps": _ints(1, 1000),
    "sampling.guidance": _guidance,
    "sampling.seed": _seed,
    "sampling.n_train_prompts": _ints(1, 1000),
    "sampling.images_per_val_prompt": _ints(1, 100),
    "sampling.n_val_prompts": _optional(_ints(1, 1000), "all of the concept's val prompts"),
    "sampling.batch_size": _ints(1, 1024),
    "sampling.save_images": _one_of("none", "final", "all"),
}


def _check_keys(cfg: dict) -> None:
    for dotted, check in KEYS.items():
        node = cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            check(dotted, node)


def _check_model(model: dict) -> None:
    res = model.get("resolution")
    _check(isinstance(res, int) and not isinstance(res, bool) and 16 <= res <= 4096 and res % 8 == 0,
           f"model.resolution must be a multiple of 8 from 16 to 4096 (got {res!r}).")
    _check(bool(model.get("pretrained") or model.get("build")),
           f"model '{model.get('name')}': set model.pretrained (hub id or folder) or model.build.")
    source = model.get("pretrained")
    if source is not None:
        _check(isinstance(source, str), f"model.pretrained must be a hub id or a folder (got {source!r}).")
        _check(not source.startswith((".", "/", "~")) or project_path(source).is_dir(),
               f"model.pretrained={source}: folder does not exist. Give a diffusers Stable Diffusion folder (with "
               "unet/, vae/, text_encoder/, tokenizer/) or a hub id.")


def validate(cfg: dict) -> None:
    """Every check that can fail before loading a model; errors name the key and the fix."""
    for key in ("method", "strategy", "model", "ldet", "sampling", "metrics", "concept", "seed"):
        _check(key in cfg, f"Config has no `{key}` section; run through `python -m benchmark.run` "
                           "or compose conf/run.yaml.")
    plugins.check(cfg["method"].get("plugin"), "method.plugin")  # found, not imported: no torch here
    if cfg["model"].get("backbone"):
        plugins.check(cfg["model"]["backbone"], "model.backbone")
    _check_keys(cfg)
    ldet = cfg["ldet"]
    check_protocol(cfg["method"].get("protocol") or {})  # first: conf/strategy/ interpolates these values
    strategy = make_strategy(cfg["strategy"], ldet["every"])
    strategy.check_can_act()
    get_concept(cfg["concept"])
    _check_model(cfg["model"])

    logged = ldet.get("log", "watched")
    _check(logged in ("watched", "always") or (isinstance(logged, int) and not isinstance(logged, bool)
                                                and 1 <= logged <= MAX_STEPS and logged % ldet["every"] == 0),
           f"ldet.log must be watched, always or a positive multiple of ldet.every={ldet['every']} (got {logged!r}).")
    span = ldet["timestep_range"]
    _check(isinstance(span, list) and len(span) == 2 and all(isinstance(t, int) and not isinstance(t, bool) for t in span)
           and 0 <= span[0] < span[1] <= 1000,
           f"ldet.timestep_range must be [lo, hi] with integers 0 <= lo < hi <= 1000 (got {span!r}).")
    lo, hi = span
    _check(ldet["batch_size"] * ldet["accumulation"] <= hi - lo,
           f"ldet.batch_size x ldet.accumulation = {ldet['batch_size'] * ldet['accumulation']} distinct timesteps "
           f"do not fit in ldet.timestep_range {[lo, hi]}.")
    unknown = set(ldet["fixed"]) ^ {"images", "captions", "latents", "noise", "timesteps"}
    _check(not unknown, f"ldet.fixed must name exactly images, captions, latents, noise, timesteps "
                        f"(check {sorted(unknown)}).")
    _check(ldet["enabled"] or not strategy.needs_ldet,
           f"strategy {strategy.name} needs L_det; set ldet.enabled=true.")

    sampling = cfg["sampling"]
    if sampling["scheduler"] not in SCHEDULERS:
        raise unknown_name_error("sampling scheduler", sampling["scheduler"], SCHEDULERS, key="sampling.scheduler")


def results_root(cfg: dict) -> Path:
    return Path(cfg["paths"]["results"]).expanduser()


def cache_root(cfg: dict) -> Path:
    return Path(cfg["paths"]["cache"]).expanduser()


# --- config groups -------------------------------------------------------------------------------
GROUPS = ("model", "metrics", "method", "strategy", "launcher")


def extra_conf_dirs() -> list[Path]:
    """Folders of config files of your own, searched after conf/ (env DVAR_CONF_PATH, separated like
    PATH): a method kept outside the project is its module on PYTHONPATH plus <folder>/method/<name>.yaml."""
    return [Path(d).expanduser().resolve() for d in os.environ.get("DVAR_CONF_PATH", "").split(os.pathsep) if d]


def group_options(group: str) -> list[str]:
    default = default_option(group)
    names = sorted({p.stem for d in (CONF_DIR, *extra_conf_dirs()) for p in (d / group).glob("*.yaml")})
    return [default, *(n for n in names if n != default)] if default in names else names


def class_image_overrides(method: str, n: int) -> list[str]:
    """For a measurement: a method with prior preservation (a `prior` section in its conf) generates
    `n` class images instead of its own number; any other method needs nothing."""
    return [f"method.prior.num_class_images={n}"] if "prior" in compose([f"method={method}"])["method"] else []


def default_option(group: str) -> str | None:
    m = re.search(rf"^\s*-\s*{group}:\s*(\w+)", (CONF_DIR / "run.yaml").read_text(), re.M)
    return m[1] if m else None


def check_groups(overrides: list[str]) -> None:
    """`model=sd16` and the like: one line with the choices, before Hydra is asked."""
    for o in overrides:
        key, _, value = o.partition("=")
        if key in GROUPS and value and value not in group_options(key):
            raise unknown_name_error(key, value, group_options(key), key=key)
