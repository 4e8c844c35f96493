"""`python -m benchmark.bench`: per method, the cost of L_det monitoring, measured in one process.

For each method it builds the real run (tiny backbone by default; any override works, e.g.
`model=sd15 metrics=real` on a GPU machine), then alternates blocks of plain training updates with
blocks of updates followed by an L_det evaluation, and prints the median times and their ratio.
Alternating blocks keeps slow drifts of a noisy machine out of the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.provenance import device_name, versions

METHODS = ("textual_inversion", "dreambooth_lora", "custom_diffusion")


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.config import resolve
    from benchmark.run import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return resolve(hydra_compose(config_name="run", overrides=overrides))


def timed(trainer, fn) -> float:
    trainer._sync()
    t0 = time.perf_counter()
    fn()
    trainer._sync()
    return time.perf_counter() - t0


def measure(method: str, overrides: list[str], steps: int, blocks: int, warmup: int) -> dict:
    from benchmark.train import Trainer

    extra = ["method.prior.num_class_images=4"] if method == "custom_diffusion" else []
    cfg = compose([f"method={method}", "strategy=few_iters", "strategy.steps=1000000", "progress=false",
                   *extra, *overrides])
    trainer = Trainer(cfg, share_models=True)
    trainer.setup()
    for _ in range(warmup):
        trainer.train_update()
        trainer.ldet()
    plain, monitored = [], []
    for _ in range(blocks):
        plain += [timed(trainer, trainer.train_update) for _ in range(steps)]
        monitored += [timed(trainer, lambda: (trainer.train_update(), trainer.ldet())) for _ in range(steps)]
    return {"method": method, "plain_ms": 1e3 * statistics.median(plain),
            "monitored_ms": 1e3 * statistics.median(monitored), "device": device_name(trainer.device),
            "batch": cfg["train_batch_size"], "ldet_batch": cfg["ldet"]["batch_size"],
            "resolution": cfg["model"]["resolution"], "model": cfg["model"]["name"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny ldet.batch_size=8")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=10, help="updates per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per variant")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    v = versions()
    print(f"machine: {device_name(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))}; "
          f"torch {v['torch']}, diffusers {v['diffusers']}, python {v['python']}")
    print(f"settings: {' '.join(args.overrides) or '(defaults: model=tiny)'}; {args.blocks} x {args.steps} "
          f"updates per variant, medians")
    print(f"{'method':<20}{'no L_det ms':>12}{'L_det/step ms':>15}{'ratio':>8}")
    for method in args.methods:
        r = measure(method, args.overrides, args.steps, args.blocks, args.warmup)
        print(f"{method:<20}{r['plain_ms']:>12.1f}{r['monitored_ms']:>15.1f}{r['monitored_ms'] / r['plain_ms']:>8.2f}"
              f"   ({r['model']}, {r['resolution']} px, batch {r['batch']}, L_det batch {r['ldet_batch']})")


if __name__ == "__main__":
    main()
