"""Run a sweep on this machine: trajectory by trajectory, phase 1 then the derived Few-iters;
past failures.

Each job is one trajectory: the runs that share it are trained together (benchmark.engine.train). With
`launcher.workers=1` (default) jobs go one after another in this process and share the loaded
backbone and metric models. More workers run in parallel processes (each shares within itself);
torch threads are divided among them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm.auto import tqdm

from benchmark.core.cli_args import setup_logging
from benchmark.store.runs import Busy

log = logging.getLogger("dvar")


def _run(cfgs: list[dict], keep_snapshots: bool | None) -> list[dict]:
    from benchmark.engine.train import (
        run_trajectory,  # torch: the sweep's status and --dry-run stay torch-free
    )

    return run_trajectory([{**cfg, "progress": False} for cfg in cfgs], share_models=True,
                          keep_snapshots=keep_snapshots)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the sweep that started it dies (prctl PDEATHSIG): a
    killed sweep leaves no worker behind to start the runs queued to it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:  # not Linux: workers outlive a SIGKILLed sweep there (a clean exit still stops them)
        return
    if os.getppid() == 1:  # the sweep died before the request took effect
        os._exit(1)


def _init_worker(threads: int) -> None:
    import torch  # in the worker only: the sweep's status and --dry-run stay torch-free

    die_with_parent()
    torch.set_num_threads(threads)
    setup_logging()


def describe(cfgs: list[dict]) -> str:
    c = cfgs[0]
    return f"{c['method']['name']} {c['concept']} seed {c['seed']} [{', '.join(x['strategy']['name'] for x in cfgs)}]"


def run_trajectories(groups: list[tuple[list[dict], bool | None]], workers: int = 1,
                     progress: bool = True) -> list[tuple[list[dict], str | None]]:
    """Run each trajectory (its run configs, and train.run_trajectory's keep_snapshots);
    returns (configs, error text or None) per trajectory, failures included."""
    results: list[tuple[list[dict], str | None]] = []
    bar = tqdm(total=sum(len(g) for g, _ in groups), desc="runs", unit="run", disable=not progress or None)
    if workers <= 1:
        for cfgs, keep in groups:
            try:
                _run(cfgs, keep)
                results.append((cfgs, None))
            except Busy as err:  # another process trains it: not a failure of this sweep
                log.warning("%s", err)
                results.append((cfgs, None))
            except Exception as err:  # a sweep continues past failures and lists them at the end
                log.error("trajectory failed: %s: %s", describe(cfgs), err)
                log.debug(traceback.format_exc())
                results.append((cfgs, f"{type(err).__name__}: {err}"))
            bar.update(len(cfgs))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_run, cfgs, keep): cfgs for cfgs, keep in groups}
            for future in as_completed(futures):
                err = future.exception()
                if isinstance(err, Busy):
                    log.warning("%s", err)
                    err = None
                results.append((futures[future], None if err is None else f"{type(err).__name__}: {err}"))
                bar.update(len(futures[future]))
    bar.close()
    return results
