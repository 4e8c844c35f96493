"""Run a sweep on this machine: phase 1, then the derived Few-iters runs; past failures.

With `launcher.workers=1` (default) runs go one after another in this process and share the loaded
backbone and metric models. More workers run in parallel processes (each shares within itself);
torch threads are divided among them.
"""

from __future__ import annotations

import logging
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm.auto import tqdm

log = logging.getLogger("dvar")


def _run(cfg: dict) -> dict:
    from benchmark.train import run

    return run({**cfg, "progress": False}, share_models=True)


def _init_worker(threads: int) -> None:
    import torch

    from benchmark.run import setup_logging

    torch.set_num_threads(threads)
    setup_logging()


def execute(cfgs: list[dict], workers: int = 1, progress: bool = True) -> list[tuple[dict, str | None]]:
    """Run each config; returns (cfg, error text or None) per config, failures included."""
    results: list[tuple[dict, str | None]] = []
    bar = tqdm(total=len(cfgs), desc="runs", unit="run", disable=not progress or None)
    if workers <= 1:
        for cfg in cfgs:
            try:
                _run(cfg)
                results.append((cfg, None))
            except Exception as err:  # a sweep continues past failures and lists them at the end
                log.error("run failed: %s/%s %s: %s", cfg["method"]["name"], cfg["strategy"]["label"],
                          cfg["concept"], err)
                log.debug(traceback.format_exc())
                results.append((cfg, f"{type(err).__name__}: {err}"))
            bar.update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_run, cfg): cfg for cfg in cfgs}
            for future in as_completed(futures):
                err = future.exception()
                results.append((futures[future], None if err is None else f"{type(err).__name__}: {err}"))
                bar.update(1)
    bar.close()
    return results
