"""Load every model a set of run configs uses, as a run would (`python -m benchmark.weights check`).

The preflight runs it in a fresh process with HF_HUB_OFFLINE=1, as a compute node without internet
would load them."""

from __future__ import annotations

from benchmark.weights.files import distinct


def check_loads(cfgs: list[dict]) -> list[str]:
    """Load every distinct backbone and set of metric models on the CPU; the problems, one line each.
    Models built from config are left to the run that builds them."""
    import torch

    from benchmark.backbone import load_backbone
    from benchmark.config import cache_root
    from benchmark.metrics import MetricModels

    problems = []
    for cfg in distinct(cfgs, "model"):
        if cfg["model"].get("build"):
            continue
        try:
            load_backbone(cfg["model"], cache_root(cfg))
            print(f"ok    model {cfg['model']['name']} ({cfg['model']['pretrained']})")
        except Exception as err:  # every failure is listed, not only the first
            problems.append(f"model {cfg['model']['name']}: {type(err).__name__}: {err}")
    for cfg in distinct(cfgs, "metrics"):
        try:
            MetricModels(cfg["metrics"], cache_root(cfg), torch.device("cpu"))
            print(f"ok    metrics {cfg['metrics']['clip']['arch']} / {cfg['metrics']['dino']['arch']} / "
                  f"lpips-{cfg['metrics']['lpips']['net']}")
        except Exception as err:
            problems.append(f"metrics ({cfg['metrics']['clip']['arch']}): {type(err).__name__}: {err}")
    return problems
