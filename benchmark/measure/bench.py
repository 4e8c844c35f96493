"""`python -m benchmark.measure.bench`: what monitoring and the harness cost, measured in one process.

Per method: the time of a training update without L_det, with L_det after every update, and with
L_det every k updates (the strided DVAR variant), and their ratios. Then the step-cost levers the
harness uses, each timed on and off, and the harness overhead of a smoke run (setup, records,
checkpoints) as a share of its wall time. `--peers DIR` also times the diffusers training examples
(textual_inversion.py, train_dreambooth_lora.py, fetched by you into DIR) on the same tiny pipeline.

Timings alternate blocks of the variants being compared, so slow drifts of a noisy machine stay
out of the ratios; medians are printed. Defaults: the tiny backbone on this machine's device; any
override works (e.g. `model=sd15` on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark.core.provenance import device_name, versions
from benchmark.engine.backbone import load_backbone
from benchmark.engine.objective import EvalBatch
from benchmark.engine.train import run_trajectory
from benchmark.engine.trajectory import Trajectory
from benchmark.measure import timing_profile
from benchmark.measure.peers import compare
from benchmark.measure.timing_profile import monitoring_cost, timed
from benchmark.preflight.preflight import Preflight, estimate, format_estimate
from benchmark.protocol.config import cache_root, group_options
from benchmark.protocol.experiments import expand, load_experiment
from benchmark.protocol.strategies import PROPOSED

METHODS = group_options("method")  # every method conf, as the sweep knows them


def alternate(a, b, rounds: int) -> tuple[float, float]:
    """Median seconds of two callables, timed alternately."""
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def levers(trainer, overrides: list[str], rounds: int) -> list[tuple[str, float, float]]:
    """(lever, seconds without, seconds with) for the levers that can be switched off here."""
    out = []
    cache = trainer.encoder.cache

    def uncached():
        trainer.encoder.cache = None
        trainer.train_update()
        trainer.encoder.cache = cache

    out.append(("cached VAE encodings (per update)", *alternate(uncached, trainer.train_update, rounds)))

    sampler = trainer.sampler()
    prompts = trainer.evaluator.train_prompts + trainer.evaluator.val_prompts
    one = dict(sampler.cfg, batch_size=1)
    many = dict(sampler.cfg, batch_size=len(prompts))

    def sample_with(cfg):
        def go():
            sampler.cfg = cfg
            sampler.generate(prompts)
        return go

    out.append((f"batched sampling ({len(prompts)} images per evaluation)",
                *alternate(sample_with(one), sample_with(many), max(2, rounds // 4))))
    sampler.cfg = trainer.cfg["sampling"]

    def big_eval(forward_batch):
        cfg = dict(trainer.cfg["ldet"], batch_size=8, accumulation=16, forward_batch=forward_batch)
        batch = EvalBatch(cfg, trainer.data, trainer.encoder, trainer.forward, 0, trainer.latent_shape)
        return batch.loss

    out.append(("grouped passes for L_det at 8 x 16 (forward_batch 32)",
                *alternate(big_eval(0), big_eval(32), max(2, rounds // 4))))

    model_cfg = trainer.cfg["model"]
    fresh = lambda: load_backbone(model_cfg, cache_root(trainer.cfg))  # noqa: E731
    shared = lambda: load_backbone(model_cfg, cache_root(trainer.cfg), share=True)  # noqa: E731
    out.append(("one backbone load shared by a sweep's runs (per run)", *alternate(fresh, shared, 3)))
    return out


def components(experiment: str, overrides: list[str], rounds: int) -> list[tuple[str, dict[str, float]]]:
    """Per method of `experiment` (its DVAR run's config, models loaded once): the median seconds of
    an update, of the prior batch inside it (Custom Diffusion: class images drawn and VAE-encoded),
    of an L_det evaluation and of an in-loop evaluation, each timed alone."""
    out = []
    for job in expand(load_experiment(experiment), ["progress=false", *overrides]):
        if job.cfg is None or job.strategy != PROPOSED:
            continue
        t = Trajectory(job.cfg, share_models=True)
        t.setup()
        g, size = torch.Generator().manual_seed(0), int(job.cfg["train_batch_size"])
        parts = {"update": t.train_update, "prior batch": lambda: t.method.extra_examples(g, size, t.encoder),
                 "L_det": t.ldet, "evaluation": lambda: t.evaluator.evaluate(1, "in_loop")}
        medians = {}
        for name, fn in parts.items():
            n = max(2, rounds // 5) if name == "evaluation" else rounds
            fn()  # warm-up
            medians[name] = statistics.median(timed(t, fn) for _ in range(n))
        out.append((job.method, medians))
    return out


def harness_overhead(overrides: list[str], tmp: str) -> dict:
    """The smoke experiment's Textual Inversion runs that decide as they go (Baseline, CLIP-s,
    DVAR), trained as one trajectory the way a sweep does, models already loaded: which share of
    the wall time is not updates, L_det or evaluation (setup, records, snapshots)."""
    jobs = [j for j in expand(load_experiment("smoke"), [f"paths.results={tmp}", *overrides], {"method": [METHODS[0]]})
            if j.cfg is not None]
    cfgs = [dict(j.cfg, progress=False) for j in jobs]
    run_trajectory([dict(c, paths=dict(c["paths"], results=f"{tmp}/warm")) for c in cfgs], share_models=True)
    t0 = time.perf_counter()
    rows = run_trajectory(cfgs, share_models=True)
    wall = time.perf_counter() - t0
    passes = [json.loads(line) for line in (Path(tmp) / "work" / "smoke" / "passes.jsonl").read_text().splitlines()]
    compute = sum(p["compute_s"] for p in passes)
    return {"wall": wall, "work": compute, "setup": rows[0]["setup_s"], "runs": len(rows),
            "loop_other": sum(p["wall_s"] for p in passes) - compute, "rest": wall - compute - rows[0]["setup_s"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny ldet.batch_size=8")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=20, help="updates per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per variant")
    parser.add_argument("--every", type=int, default=10, help="k of the strided variant (L_det every k updates)")
    parser.add_argument("--peers", help="folder holding the diffusers example scripts to time beside ours")
    parser.add_argument("--peer-steps", type=int, nargs=2, default=(20, 220), metavar=("N1", "N2"))
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="measure the timing profile the preflight prices sweeps with (ms per update, per L_det "
                             "pass, per evaluation image, peak memory), write it to FILE, print the forecasts")
    parser.add_argument("--components", metavar="EXPERIMENT",
                        help="per method of EXPERIMENT (e.g. toy_smoke): an update, the prior batch inside it, "
                             "an L_det evaluation and an in-loop evaluation, each timed alone")
    args = parser.parse_args(argv)
    v = versions()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {device_name(device)}; torch {v['torch']}, diffusers {v['diffusers']}, "
          f"transformers {v['transformers']}, peft {v['peft']}, python {v['python']}")
    if args.components:
        print(f"settings: the DVAR run of each method of experiment={args.components}"
              f"{' with ' + ' '.join(args.overrides) if args.overrides else ''}; medians of {args.steps} calls\n")
    else:
        print(f"settings: {' '.join(args.overrides) or '(defaults: model=tiny, 64 px)'}; train batch, L_det batch "
              f"and precision from conf/run.yaml; {args.blocks} alternating blocks of {args.steps} updates, medians\n")
    if args.record:
        return record(args)
    if args.components:
        rows = components(args.components, args.overrides, args.steps)
        reference = rows[0][1] if rows else None  # the ratios: against the first method (the default, TI)
        print(f"{'step components, ' + args.components:<28}{'update ms':>10}{'prior ms':>9}{'L_det ms':>9}"
              f"{'eval s':>8}{'update / 1st':>13}{'L_det / 1st':>12}")
        for method, m in rows:
            ratio = (lambda k: f"{m[k] / reference[k]:.2f}") if reference else (lambda k: "-")
            print(f"{method:<28}{1e3 * m['update']:>10.1f}{1e3 * m['prior batch']:>9.1f}{1e3 * m['L_det']:>9.1f}"
                  f"{m['evaluation']:>8.2f}{ratio('update'):>12}{ratio('L_det'):>11}")
        return None
    print(f"{'L_det monitoring':<20}{'none ms':>9}{'every step':>12}{'ratio':>7}{f'every {args.every}':>11}{'ratio':>7}")
    trainer = None
    for method in args.methods:
        r = monitoring_cost(method, args.overrides, args.steps, args.blocks, args.every)
        trainer = trainer or r["trainer"]
        print(f"{method:<20}{1e3 * r['plain']:>9.1f}{1e3 * r['every']:>12.1f}{r['every'] / r['plain']:>7.2f}"
              f"{1e3 * r['strided']:>11.1f}{r['strided'] / r['plain']:>7.2f}")
    print(f"\n{'lever (textual_inversion)':<56}{'without':>10}{'with':>10}{'speed-up':>10}")
    for name, without, with_ in levers(trainer, args.overrides, 2 * args.steps):
        print(f"{name:<56}{1e3 * without:>8.1f}ms{1e3 * with_:>8.1f}ms{without / with_:>9.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        h = harness_overhead(args.overrides, tmp)
    print(f"\nharness overhead of the smoke experiment's {h['runs']} TI runs as one trajectory (models loaded): "
          f"wall {h['wall']:.2f} s, of which "
          f"training + L_det + evaluation {h['work']:.2f} s, setup {h['setup']:.2f} s, records and "
          f"checkpoints in the loop {h['loop_other']:.3f} s, other {h['rest']:.2f} s -> overhead "
          f"{100 * (h['wall'] - h['work']) / h['wall']:.1f} % (setup {100 * h['setup'] / h['wall']:.1f} %, "
          f"loop bookkeeping {100 * h['loop_other'] / h['wall']:.1f} %)")
    if args.peers:
        compare(args.peers, args.overrides, args.peer_steps)


def record(args) -> None:
    """Measure the timing profile per method, write it, and price the paper's experiments with it."""
    print(f"{'method':<20}{'update ms':>10}{'+L_det ms':>10}{'ratio':>7}{f'every {args.every}':>9}{'ratio':>7}"
          f"{'eval s':>8}{'image s@50':>11}{'peak GB':>9}")
    results = {}
    for method in args.methods:
        r = results[method] = timing_profile.measure(method, args.overrides, args.steps, args.blocks, args.every)
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        print(f"{method:<20}{1e3 * r['update_s']:>10.1f}{1e3 * r['every_s']:>10.1f}{r['every_s'] / r['update_s']:>7.2f}"
              f"{1e3 * r['strided_s']:>9.1f}{r['strided_s'] / r['update_s']:>7.2f}{r['eval_s']:>8.1f}"
              f"{r['image_s']:>11.2f}{peak:>9}")
    model = next(iter(results.values()))["trainer"].cfg["model"]["name"]
    timing_profile.write(args.record, results, model, args.overrides)
    print(f"\nwrote {args.record}")
    for name in ("table1", "ablation_stochasticity", "ablation_eval_batch", "ablation_timesteps"):
        exp = load_experiment(name)
        pf = Preflight()
        pf.costs, pf.trajectories, pf.class_images_s, pf.profile = estimate(expand(exp, []), {"timing": str(args.record)},
                                                                            0, exp.get("runs_per_job"))
        print(f"\nforecast of {name}:")
        print("\n".join(format_estimate(pf, {}, explain_missing=True)))


if __name__ == "__main__":
    main()
