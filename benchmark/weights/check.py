"""Load every model a set of run configs uses, as a run would (`python -m benchmark.weights check`).

The preflight runs it in a fresh process with HF_HUB_OFFLINE=1, as a compute node without internet
would load them: the base model whatever its source (hub, folder, the shipped toy files, a model
built from config once it is built) and the metric models. Each problem is one line naming the file
and the fix; `ok` and `skip` lines on stdout say what was loaded."""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

from benchmark.core.checksums import shipped_problems
from benchmark.core.provenance import project_path
from benchmark.protocol.config import cache_root
from benchmark.weights.files import _looks_like_path, distinct


def one_line(err: BaseException) -> str:
    """An error as one line of the listing (library messages span several)."""
    text = " ".join(str(err).split())
    return text if type(err).__name__ == "ConfigError" else f"{type(err).__name__}: {text}"


def check_loads(cfgs: list[dict]) -> list[str]:
    """Load every distinct base model and set of metric models on the CPU; the problems, one line each."""
    problems = []
    for cfg in distinct(cfgs, "model"):
        problems += model_problems(cfg)
    for cfg in distinct(cfgs, "metrics"):
        problems += metrics_problems(cfg)
    return problems


def model_problems(cfg: dict) -> list[str]:
    """The base model loaded as a run loads it. A model built from config is loaded once it is built;
    the check builds nothing."""
    # torch: `weights list` and `fetch` run without it
    from benchmark.engine.backbone import built_folder, load_backbone

    model, name = cfg["model"], f"model {cfg['model']['name']}"
    if model.get("build"):
        folder = built_folder(model, cache_root(cfg))[0]
        if not (folder / "model_index.json").exists():
            print(f"skip  {name}: not built yet, its first run builds it")
            return []
        source, fix = str(folder), f"Delete {folder}; the next run builds it again."
    else:
        source = str(model["pretrained"]) if model.get("pretrained") else ""
        local = project_path(source) if source else None
        if local is not None and local.is_dir():
            broken = shipped_problems(local)  # the shipped toy files: every broken one, by its checksum
            if broken:
                return [f"{name}: {p}" for p in broken]
            source, fix = str(local), "Put its files back, or point model.pretrained at a complete diffusers folder."
        else:
            fix = "Fetch it again: `python -m benchmark.weights fetch` with the sweep's keys."
    try:
        load_backbone(model, cache_root(cfg))
    except Exception as err:  # every broken component is listed, not only the first
        broken = component_problems(source, model) if source else []
        return [f"{name}: {p} {fix}" for p in broken] or [f"{name}: {one_line(err)} {fix}"]
    print(f"ok    {name} ({source or 'no weights'})")
    return []


def component_problems(source: str, model: dict) -> list[str]:
    """Which components of an SD folder or hub repository fail to load, each on its own (the libraries'
    messages do not always say which subfolder they read)."""
    from benchmark.engine.backbone import (
        backbone_class,  # torch: `weights list` and `fetch` run without it
    )

    kw = dict(revision=model.get("revision"), local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    problems = []
    for sub, (module, cls) in backbone_class(model).COMPONENTS.items():  # the model family's components
        if sub == "tokenizer" and Path(source).is_dir() and not (Path(source) / "tokenizer").is_dir():
            continue  # toy weights without tokenizer files: the run builds CLIP's own BPE
        args = kw if sub == "tokenizer" else dict(kw, variant=model.get("variant"))
        try:
            getattr(importlib.import_module(module), cls).from_pretrained(source, subfolder=sub, **args)
        except Exception as err:
            problems.append(f"{source}/{sub}: {one_line(err).rstrip('.')}.")
    return problems


def metric_files(metrics: dict) -> list[tuple[str, Path]]:
    """(config key, path) of every local file the metric models read."""
    clip, dino = metrics["clip"], metrics["dino"]
    out = []
    tag = clip.get("pretrained")
    if tag and (_looks_like_path(str(tag)) or project_path(str(tag)).exists()):
        out.append(("metrics.clip.pretrained", project_path(str(tag))))
    if clip.get("config_file"):
        out.append(("metrics.clip.config_file", project_path(clip["config_file"])))
    if dino.get("checkpoint"):
        out.append(("metrics.dino.checkpoint", project_path(dino["checkpoint"])))
    return out


def file_problems(key: str, path: Path) -> list[str]:
    """A local file named by `key`: missing, or changed from the checksums it ships with."""
    broken = shipped_problems(path)
    if broken:
        return [f"{key}: {p}" for p in broken]
    if not path.is_file():
        return [f"{key}={path}: no such file; copy the file there or set {key} to where it is."]
    return []


def metrics_problems(cfg: dict) -> list[str]:
    """The metric models loaded as a run loads them (CLIP, DINO, LPIPS), after their local files."""
    import torch  # torch: `weights list` and `fetch` run without it

    from benchmark.engine.metrics import (
        MetricModels,  # torch: `weights list` and `fetch` run without it
    )

    metrics = cfg["metrics"]
    label = f"metrics {metrics['clip']['arch']} / {metrics['dino']['arch']} / lpips-{metrics['lpips']['net']}"
    broken = [p for key, path in metric_files(metrics) for p in file_problems(key, path)]
    if broken:
        return broken
    try:
        with tempfile.TemporaryDirectory() as scratch:  # open_clip's config file: the check leaves nothing behind
            MetricModels(metrics, Path(scratch), torch.device("cpu"))
    except Exception as err:
        return [f"{label}: {one_line(err)}"]
    print(f"ok    {label}")
    return []
