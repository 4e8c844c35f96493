"""`python -m benchmark.measure.gpu_check [out=DIR] [methods=A,B] [precisions=fp16,bf16] [key=value ...]`: the
path a GPU takes, measured on one GPU in a few minutes (`make gpu-check`), with no downloads.

On SD v1.5's real-shape twin and the paper's metric models' twins (built offline; timing does not
depend on weight values), per method and per mixed precision (fp16 and bf16):

- ms per update without L_det and with an L_det pass after it, seconds per evaluation image at the
  model's sampling steps, peak GPU memory (benchmark.measure.timing_profile);
- L_det determinism: the same weights evaluated twice, max absolute difference (0 = identical);
- resume identity: short DVAR runs of every method and precision trained uninterrupted, then trained
  again in a process SIGKILLed right after each snapshot and relaunched, records compared
  (benchmark.measure.kill_trials.difference): identical, or the largest relative difference.

Writes DIR/summary.json and DIR/timing.yaml (a timing profile of the fp16 path, what the preflight
prices sweeps with) and prints a table. `device=cpu model=tiny metrics=tiny` runs the same logic on a
CPU (the tests do), where every comparison must come out identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmark.core.cli_args import Spec, UsageError, as_list, as_number, fail, progress
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError
from benchmark.core.provenance import device_name
from benchmark.measure.kill_trials import MOMENTS, difference
from benchmark.protocol.config import (
    class_image_overrides,
    compose,
    group_options,
    validate,
)
from benchmark.sweep.local import die_with_parent

PROG = "python -m benchmark.measure.gpu_check"
SPECS = {None: Spec(keys=("out", "methods", "precisions", "tolerance"), overrides=True)}
METHODS = group_options("method")
PRECISIONS = ("fp16", "bf16")
DEFAULTS = ["model=sd15_twin", "metrics=real_twin", "device=cuda", "deterministic=true"]
# Short DVAR runs for the kill check: a snapshot at step 3 to kill after, a budget of 5.
KILL_RUN = ["strategy=dvar", "strategy.max_steps=5", "strategy.window=2", "strategy.threshold=1e-9",
            "checkpoint_every=3", "ldet.batch_size=2", "sampling.steps=2", "sampling.n_train_prompts=1",
            "sampling.n_val_prompts=1", "sampling.images_per_val_prompt=1", "sampling.save_images=none",
            "progress=false", "log_every=1000"]
# One evaluation of 6 images at 10 steps (image_s is scaled to 50 steps, as the profile states it).
TIMING_SAMPLING = ["sampling.steps=10", "sampling.n_train_prompts=4", "sampling.n_val_prompts=1",
                   "sampling.images_per_val_prompt=2"]
HELP = f"""\
usage: {PROG} [out=DIR] [methods=A,B] [precisions=fp16,bf16] [tolerance=REL] [key=value ...]

{__doc__.split(chr(10) + chr(10), 1)[1]}
keys:
  out=DIR            where summary.json and timing.yaml go (default results/gpu_check)
  methods=A,B        the methods to check (default: all three)
  precisions=P,Q     fp16, bf16 (default: both)
  tolerance=REL      largest relative difference a resumed run may show and still pass (default 0:
                     identical; kernels without a deterministic variant may need e.g. 1e-3 on a GPU)
  KEY=VALUE          run config overrides (defaults: {' '.join(DEFAULTS)})

examples:
  {PROG}                                           # on a GPU machine (make gpu-check)
  {PROG} device=cpu model=tiny metrics=tiny        # the same logic on a CPU
"""


def measure(methods: list[str], precisions: list[str], overrides: list[str]) -> dict:
    """Timings, memory and L_det determinism per precision and method, in this process."""
    import torch  # torch: --help and bad arguments answer without it

    from benchmark.measure import (
        timing_profile,  # torch: --help and bad arguments answer without it
    )

    overrides = [*overrides, *TIMING_SAMPLING]
    out: dict = {}
    for precision in precisions:
        for method in methods:
            progress(f"[gpu_check] timing {method} at {precision}")
            r = timing_profile.measure(method, [*overrides, f"mixed_precision={precision}"], steps=5, blocks=2,
                                       every=5)
            trainer = r["trainer"]
            first, second = trainer.ldet()["l_det"], trainer.ldet()["l_det"]
            out.setdefault(precision, {})[method] = {
                "update_ms": 1e3 * r["update_s"], "update_with_ldet_ms": 1e3 * r["every_s"],
                "ldet_pass_8_ms": 1e3 * r["ldet_s"], "image_s": r["image_s"], "peak_gb": r["peak_gb"],
                "setup_s": r["setup_s"], "ldet_repeat_abs_diff": abs(first - second), "l_det": first,
                "results": r,
            }
            trainer.evaluator = trainer._sampler = None  # keep what the profile reads, free the rest
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return out


def kill_check(folder: Path, methods: list[str], precisions: list[str], overrides: list[str],
               tolerance: float) -> dict:
    """Uninterrupted short runs, then the same runs in a process killed after every snapshot and
    relaunched until done; the records compared."""
    shutil.rmtree(folder, ignore_errors=True)  # a check of its own, never a resumed one
    folder.mkdir(parents=True)
    runs = [[*overrides, *KILL_RUN, f"method={m}", *class_image_overrides(m, 2), f"mixed_precision={p}"]
            for p in precisions for m in methods]
    spec = folder / "runs.json"
    spec.write_text(json.dumps(runs))
    clean, killed = folder / "clean", folder / "killed"
    progress("[gpu_check] resume identity: uninterrupted runs")
    t0 = time.perf_counter()
    _child(spec, clean, kill_after_snapshot=False)
    clean_s = time.perf_counter() - t0
    launches, kills = 0, 0
    while True:
        launches += 1
        progress(f"[gpu_check] resume identity: launch {launches}, killed after the next snapshot")
        if not _child(spec, killed, kill_after_snapshot=True):
            break
        kills += 1
        if launches > 2 * len(runs) + 2:
            raise RuntimeError(f"the killed runs in {killed} did not finish after {launches} launches")
    diff = difference(clean, killed, tolerance)
    return {"runs": len(runs), "kills": kills, "launches": launches, "clean_s": clean_s,
            "identical": diff == "", "difference": diff, "tolerance": tolerance}


def _child(spec: Path, results: Path, kill_after_snapshot: bool) -> bool:
    """Run the runs of `spec` in a fresh process; with `kill_after_snapshot`, SIGKILL it once a new
    snapshot appears. True if it was killed."""
    cmd = [sys.executable, "-m", "benchmark.measure.gpu_check", "--child", str(spec), str(results)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=die_with_parent, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seen = set(results.glob(MOMENTS["snapshot"]))
    while proc.poll() is None:
        if kill_after_snapshot and set(results.glob(MOMENTS["snapshot"])) - seen:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f"a run of the resume check failed:\n{proc.stderr.read().decode()[-3000:]}")
    return False


def child(spec: Path, results: Path) -> None:
    """The runs of `spec`, one after another in this process, sharing the loaded models."""
    from benchmark.engine.train import (
        run,  # torch: --help and bad arguments answer without it
    )

    for overrides in json.loads(spec.read_text()):
        run(compose([*overrides, f"paths.results={results}", "experiment=gpu_check"]), share_models=True)


def profile_of(timings: dict, out: Path, overrides: list[str]) -> Path | None:
    """The fp16 timings (what `mixed_precision=auto` runs on CUDA) as the preflight's timing profile."""
    from benchmark.measure import (
        timing_profile,  # torch: --help and bad arguments answer without it
    )

    fp16 = timings.get("fp16")
    if not fp16:
        return None
    path = out / "timing.yaml"
    model = next(iter(fp16.values()))["results"]["trainer"].cfg["model"]["name"]
    timing_profile.write(path, {m: r["results"] for m, r in fp16.items()}, model, overrides,
                         command=f"{PROG} {{overrides}}" + " (its fp16 timings, one 6-image evaluation at 10 steps)")
    return path


def report(summary: dict) -> str:
    lines = [f"gpu_check on {summary['device']} ({summary['wall_s']:.0f} s)",
             f"{'precision':<10}{'method':<20}{'update ms':>10}{'+L_det ms':>10}{'image s':>9}{'peak GB':>9}"
             f"{'L_det repeat':>14}"]
    for precision, methods in summary["timings"].items():
        for method, r in methods.items():
            peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
            lines.append(f"{precision:<10}{method:<20}{r['update_ms']:>10.1f}{r['update_with_ldet_ms']:>10.1f}"
                         f"{r['image_s']:>9.2f}{peak:>9}{r['ldet_repeat_abs_diff']:>14.3g}")
    k = summary["resume"]
    lines.append(f"resume after SIGKILL: {k['runs']} runs, {k['kills']} kills -> "
                 + ("identical" if k["identical"] else f"DIFFERENT ({k['difference']})"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), Path(argv[2]))
        return 0
    try:
        args = parse_args(argv, PROG, SPECS)
        if args.help:
            print(HELP, end="")
            return 0
        methods = as_list(args.get("methods")) or list(METHODS)
        precisions = as_list(args.get("precisions")) or list(PRECISIONS)
        for name, given, known in (("methods", methods, METHODS), ("precisions", precisions, PRECISIONS)):
            unknown = [v for v in given if v not in known]
            if unknown:
                raise UsageError(f"{name}={','.join(given)}: unknown {', '.join(unknown)}; choose from {', '.join(known)}.")
        tolerance = as_number("tolerance", args.get("tolerance", "0"))
        out = Path(args.get("out", "results/gpu_check")).expanduser()
        given = {o.split("=", 1)[0] for o in args.overrides}
        overrides = [d for d in DEFAULTS if d.split("=", 1)[0] not in given] + args.overrides
        cfg = compose(overrides)  # a bad override fails here, before anything runs
        validate(cfg)
        from benchmark.engine.trajectory import (
            pick_device,  # torch: only once the command line holds
        )

        device = pick_device(cfg)
    except (UsageError, ConfigError) as err:
        return fail(err)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = measure(methods, precisions, overrides)
    resume = kill_check(out / "resume", methods, precisions, overrides, tolerance)
    summary = {"device": device_name(device), "overrides": overrides, "wall_s": time.perf_counter() - t0,
               "timings": {p: {m: {k: v for k, v in r.items() if k != "results"} for m, r in ms.items()}
                           for p, ms in timings.items()},
               "resume": resume}
    profile = profile_of(timings, out, overrides)
    summary["timing_profile"] = str(profile) if profile else None
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report(summary))
    print(f"wrote {out / 'summary.json'}" + (f" and {profile}" if profile else ""))
    return 0 if resume["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
