"""Live views of a run besides its records (`logger=tensorboard|wandb`): every step row and every
evaluation, its scores and its image grid, as the run goes, under

    <results>/<logger>/<experiment>/<method>-<concept>-seed<seed>/<strategy>-<run id>/

so the runs of one trajectory sit side by side. Tags are the records' own names, `steps/<column>`
and `evals/<column>` (plus `evals/samples`, the grid), so a curve is a column of the Parquet
records, which stay the reference: analysis reads only them. A logger is opened at the first step
a process logs; a run resumed from a snapshot logs again from there, and TensorBoard hides what
the killed attempt logged after it (purge_step); wandb keeps the first value it saw for a step.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmark.engine.evaluation import grid_image
from benchmark.protocol.config import results_root, trajectory_id

NOT_LOGGED = ("run_id", "step", "phase")
GRID_MAX_PX = 2048  # a real-scale grid (24 images of 512 px) is scaled down to this, not stored in full


def run_folder(cfg: dict, rid: str) -> Path:
    return (results_root(cfg) / cfg["logger"] / str(cfg["experiment"])
            / f"{cfg['method']['name']}-{cfg['concept']}-seed{cfg['seed']}" / f"{cfg['strategy']['name']}-{rid}")


def scalars(table: str, row: dict) -> dict[str, float]:
    """The numbers of a records row by tag (switches as 0 / 1; nulls left out)."""
    return {f"{table}/{k}": float(v) for k, v in row.items()
            if k not in NOT_LOGGED and isinstance(v, (int, float))}


def grid(images):
    image = grid_image(images)
    image.thumbnail((GRID_MAX_PX, GRID_MAX_PX))
    return image


class NoLogger:
    """logger=none: the records only."""

    def step(self, row: dict) -> None:
        pass

    def evaluation(self, row: dict, images: list) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(NoLogger):
    """torch's SummaryWriter; `tensorboard --logdir <results>/tensorboard` shows it."""

    def __init__(self, folder: Path):
        self.folder, self.writer = folder, None

    def _writer(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # needs the optional tensorboard extra
            )

            # Events an earlier, killed attempt wrote from this step on are hidden: this attempt rewrites them.
            self.writer = SummaryWriter(str(self.folder), purge_step=step)
        return self.writer

    def step(self, row: dict) -> None:
        w = self._writer(row["step"])
        for tag, value in scalars("steps", row).items():
            w.add_scalar(tag, value, row["step"])

    def evaluation(self, row: dict, images: list) -> None:
        w = self._writer(row["step"])
        for tag, value in scalars("evals", row).items():
            w.add_scalar(tag, value, row["step"])
        w.add_image("evals/samples", np.asarray(grid(images)), row["step"], dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Wandb(NoLogger):
    """A wandb run per run, offline unless WANDB_MODE says otherwise (`wandb sync` uploads it later)."""

    def __init__(self, cfg: dict, folder: Path, rid: str):
        self.cfg, self.folder, self.rid, self.run = cfg, folder, rid, None

    def _run(self):
        if self.run is None:
            import wandb  # the optional wandb extra: only runs with logger=wandb need it

            cfg = self.cfg
            self.folder.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                dir=str(self.folder), mode=os.environ.get("WANDB_MODE", "offline"), id=self.rid, resume="allow",
                project=f"dvar-bench-{cfg['experiment']}", group=trajectory_id(cfg),
                name=f"{cfg['method']['name']}-{cfg['concept']}-seed{cfg['seed']}-{cfg['strategy']['name']}",
                config=cfg, reinit="create_new")  # one wandb run per observer, several in one process
        return self.run

    def step(self, row: dict) -> None:
        self._run().log(scalars("steps", row), step=row["step"])

    def evaluation(self, row: dict, images: list) -> None:
        import wandb  # the optional wandb extra: only runs with logger=wandb need it

        self._run().log({**scalars("evals", row), "evals/samples": wandb.Image(grid(images))}, step=row["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def open_logger(cfg: dict, rid: str) -> NoLogger:
    name = cfg.get("logger", "none")  # a config written before the key had none
    if name == "tensorboard":
        return TensorBoard(run_folder(cfg, rid))
    if name == "wandb":
        return Wandb(cfg, run_folder(cfg, rid), rid)
    return NoLogger()
