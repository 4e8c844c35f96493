"""Run configs: resolution to plain dicts, validation before any training, and run identity."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

from benchmark.errors import ConfigError
from benchmark.registry import did_you_mean, unknown_name_error

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Keys that do not change what a run computes: excluded from its identity (Dora's signature idea).
NON_SEMANTIC = (
    "experiment", "paths", "device", "deterministic", "progress", "log_every", "checkpoint_every", "num_workers",
    "launcher", "sweep", "sampling.batch_size", "sampling.save_images", "ldet.forward_batch",
    "model.sampler",  # only the default of sampling.scheduler, which is hashed
)
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


def resolve(cfg) -> dict:
    """A Hydra/OmegaConf config → a plain, fully resolved dict; missing values become ConfigErrors."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

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
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = resolve(hydra_compose(config_name="run", overrides=list(overrides)))
        except HydraException as err:
            first = str(err).splitlines()[0]
            raise ConfigError(f"bad override: {first} (`python -m benchmark.run --help` lists the groups and keys).") \
                from err
    refuse_new_keys(overrides, [o for o in overrides if not o.startswith("+")])
    return cfg


# The only places where a config may gain keys (`+key=value`): free-form dicts passed on as they are.
OPEN_KEYS = ("launcher.additional_parameters", "metrics.dino.kwargs", "metrics.clip.config")


def refuse_new_keys(overrides: list[str], known: list[str]) -> None:
    """A `+key=value` that adds a key nothing reads would change the run id and do nothing."""
    added = [o.lstrip("+").split("=", 1)[0] for o in overrides if o.startswith("+")]
    added = [k for k in added if not any(k == p or k.startswith(p + ".") for p in OPEN_KEYS)]
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
    the concept's images (new images make a new run, not one skipped as done)."""
    out = copy.deepcopy(cfg)
    for key in NON_SEMANTIC:
        _drop(out, key)
    out.pop("hydra", None)
    if "concept" in cfg and "paths" in cfg:
        out["concept_images"] = concept_images(str(cfg["concept"]), str(cfg["paths"]["data"]))
    return out


def concept_images(concept: str, data: str) -> str | None:
    """A digest of the concept's image files, or None while they are not there (not fetched yet)."""
    from benchmark.concepts.images import images_digest
    from benchmark.concepts.manifest import load_manifest

    known = load_manifest().get(concept)
    folder = known.folder(Path(data)) if known else None
    if folder is None or not folder.is_dir():
        return None
    try:
        stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()))
    except OSError:
        return None
    return _digest(str(folder), stamp)


@functools.lru_cache(maxsize=4096)
def _digest(folder: str, stamp: tuple) -> str | None:
    """Cached per folder state (names, sizes, modification times): each image is hashed once."""
    from benchmark.concepts.images import images_digest

    try:
        return images_digest(Path(folder))
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


def _check_can_act(strategy) -> None:
    """Settings under which a strategy could never stop before its budget are refused."""
    s = strategy.cfg
    if strategy.name == "dvar":
        _check(s["window"] <= strategy.max_steps,
               f"strategy.window={s['window']} exceeds strategy.max_steps={strategy.max_steps}: DVAR could never stop "
               "before its budget. Lower strategy.window or raise strategy.max_steps.")
    if strategy.name == "clip_s":
        earliest = s["eval_every"] * (s["patience"] + 2)
        _check(earliest <= strategy.max_steps,
               f"CLIP-s evaluates every {s['eval_every']} steps with patience {s['patience']}, so it could stop at step "
               f"{earliest} at the earliest, beyond strategy.max_steps={strategy.max_steps}. Lower strategy.eval_every "
               "or strategy.patience, or raise strategy.max_steps.")


def validate(cfg: dict) -> None:
    """Every check that can fail before loading a model; errors name the key and the fix."""
    from benchmark.concepts.manifest import get_concept
    from benchmark.methods import METHODS
    from benchmark.sampling import SCHEDULERS
    from benchmark.strategies import make_strategy

    for key in ("method", "strategy", "model", "ldet", "sampling", "metrics", "concept", "seed"):
        _check(key in cfg, f"Config has no `{key}` section; run through `python -m benchmark.run` "
                           "or compose conf/run.yaml.")
    METHODS.get(cfg["method"]["name"])
    every = cfg["ldet"].get("every")
    _check(isinstance(every, int) and not isinstance(every, bool) and every >= 1,
           f"ldet.every must be a positive integer (got {every!r}).")
    strategy = make_strategy(cfg["strategy"], every)
    _check_can_act(strategy)
    get_concept(cfg["concept"])
    model_name = cfg["model"].get("name")
    _check(bool(cfg["model"].get("pretrained") or cfg["model"].get("build")),
           f"model '{model_name}': set model.pretrained (hub id or folder) or model.build.")
    res = cfg["model"].get("resolution")
    _check(isinstance(res, int) and res >= 16 and res % 8 == 0,
           f"model.resolution must be a multiple of 8 >= 16 (got {res!r}).")
    _check(isinstance(cfg["seed"], int), f"seed must be an integer (got {cfg['seed']!r}).")
    _check(cfg.get("mixed_precision", "auto") in MIXED_PRECISION,
           f"mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got {cfg.get('mixed_precision')!r}).")
    _check(isinstance(cfg.get("train_batch_size"), int) and cfg["train_batch_size"] >= 1,
           f"train_batch_size must be a positive integer (got {cfg.get('train_batch_size')!r}).")
    method = cfg["method"]
    lr = method["learning_rate"]
    _check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0,
           f"method.learning_rate must be a number > 0 (got {lr!r}).")

    ldet = cfg["ldet"]
    for key in ("every", "batch_size", "accumulation"):
        v = ldet.get(key)
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               f"ldet.{key} must be a positive integer (got {v!r}).")
    logged = ldet.get("log", "watched")
    _check(logged in ("watched", "always") or (isinstance(logged, int) and not isinstance(logged, bool) and logged >= 1
                                                and logged % ldet["every"] == 0),
           f"ldet.log must be watched, always or a positive multiple of ldet.every={ldet['every']} (got {logged!r}).")
    _check(isinstance(cfg.get("deterministic", False), bool),
           f"deterministic must be true or false (got {cfg.get('deterministic')!r}).")
    lo, hi = ldet["timestep_range"]
    _check(0 <= lo < hi <= 1000, f"ldet.timestep_range must satisfy 0 <= lo < hi <= 1000 (got {[lo, hi]}).")
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
    _check(sampling["steps"] >= 1 and sampling["n_train_prompts"] >= 1,
           "sampling.steps and sampling.n_train_prompts must be >= 1.")
    n_val = sampling.get("n_val_prompts")
    _check(n_val is None or (isinstance(n_val, int) and not isinstance(n_val, bool) and n_val >= 1),
           f"sampling.n_val_prompts must be null (all) or a positive integer (got {n_val!r}).")
    _check(sampling.get("save_images") in ("none", "final", "all"),
           f"sampling.save_images must be none, final or all (got {sampling.get('save_images')!r}).")
    metrics = cfg["metrics"]
    _check(metrics["pairing"] in ("all_pairs", "index"),
           f"metrics.pairing must be all_pairs or index (got {metrics['pairing']!r}).")
    _check(metrics["text_subject"] in ("remove", "class_noun"),
           f"metrics.text_subject must be remove or class_noun (got {metrics['text_subject']!r}).")


def results_root(cfg: dict) -> Path:
    return Path(cfg["paths"]["results"]).expanduser()


def cache_root(cfg: dict) -> Path:
    return Path(cfg["paths"]["cache"]).expanduser()
