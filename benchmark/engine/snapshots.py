"""The stored states of one trajectory, shared by every job that trains it.

Every `checkpoint_every` updates a pass stores a snapshot (benchmark.engine.train): the training state and
each active run's state in `step<N>.<key>.pt`, then `step<N>.<key>.meta.pt` (the step, the runs it
holds, their runs files and the trace of shared per-step values), which makes it count. The key is
the first id among the runs it holds: only the owner of that run's lock writes files of that name, so
jobs of one trajectory that train at the same time never write each other's files. A launch resumes
or branches from whichever job's snapshot holds what it needs.

Lifetime: snapshots are removed once no run of the trajectory is left to branch from them. A snapshot
stays while a run it holds has not completed (that run resumes from it), and all of them stay while
the trajectory is held: the sweep holds a trajectory whose derived Few-iters will branch from it
later and releases it once they are done. A launch by hand leaves a hold as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.core.errors import ConfigError
from benchmark.protocol.config import results_root, trajectory_id
from benchmark.store.records import atomic_file
from benchmark.store.runs import read_runs_file


def trajectory_dir(cfg: dict) -> Path:
    return results_root(cfg) / "work" / str(cfg["experiment"]) / "trajectories" / trajectory_id(cfg)


class Snapshots:
    """The snapshot files of one trajectory and its hold."""

    def __init__(self, cfg: dict):
        self.results = results_root(cfg)
        self.folder = trajectory_dir(cfg) / "snapshots"
        self.hold_file = trajectory_dir(cfg) / "hold"

    def metas(self) -> list[dict]:
        """The meta of every stored snapshot, whichever job wrote it, latest step first; each with
        its `path`."""
        metas = []
        for path in self.folder.glob("step*.meta.pt"):
            try:
                metas.append({**load(path), "path": path})
            except FileNotFoundError:  # removed by a job that just ended
                continue
        return sorted(metas, key=lambda m: m["step"], reverse=True)

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Store a snapshot: the full state first, then the meta that makes it count. A relaunch that
        writes the same names removes the old meta first, so a meta never describes another state."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"step{step:07d}.{min(meta['observers'])}"
        (self.folder / f"{name}.meta.pt").unlink(missing_ok=True)
        save(state, self.folder / f"{name}.pt")
        runs_files = {rid: str(Path(f).relative_to(self.results)) for rid, f in meta["runs_files"].items()}
        save({**meta, "step": step, "state": f"{name}.pt", "runs_files": runs_files}, self.folder / f"{name}.meta.pt")

    def load(self, meta: dict) -> dict | None:
        """The snapshot's full state; None when the job that wrote it removed it since `meta` was read
        (its runs all completed: only a branch plans from such a snapshot, and it starts over)."""
        try:
            return load(self.folder / meta["state"])
        except FileNotFoundError:
            return None

    def hold(self) -> None:
        """Keep every snapshot for runs that will branch later (derived Few-iters)."""
        self.hold_file.parent.mkdir(parents=True, exist_ok=True)
        self.hold_file.touch()

    def release(self) -> None:
        self.hold_file.unlink(missing_ok=True)

    def prune(self) -> None:
        """Unless the trajectory is held, remove the snapshots whose runs have all completed (no run
        resumes from them), then the trajectory's folder once it is empty."""
        if self.hold_file.exists():
            return
        for meta in self.metas():
            if all(completed(self.results / f) for f in meta["runs_files"].values()):
                meta["path"].unlink(missing_ok=True)  # the meta first: a state without one never counts
                (self.folder / meta["state"]).unlink(missing_ok=True)
        for folder in (self.folder, self.folder.parent):
            try:
                folder.rmdir()
            except OSError:  # not empty: another job's snapshots, or one it is writing
                pass


def completed(runs_file: Path) -> bool:
    row = read_runs_file(runs_file)
    return row is not None and row["status"] == "completed"


def save(obj, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # snapshots are replaced atomically, so this means outside damage
        raise ConfigError(f"{path}: unreadable snapshot ({err}). Delete {path.parent} to restart this "
                          "trajectory from scratch.") from err


def release_snapshots(cfg: dict) -> None:
    """The sweep's word that no derived run will branch from the trajectory any more."""
    snapshots = Snapshots(cfg)
    snapshots.release()
    snapshots.prune()
