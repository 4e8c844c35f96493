"""The one training loop, shared by all methods and strategies: a trajectory trained once and
observed by every run that shares it.

Step convention (DESIGN.md §5): step k is the state after k optimizer updates. L_det(θ_0) is
recorded at step 0, then after every update (or every `ldet.every` updates). The runs of one
trajectory (same concept, method, seed, model and training config; benchmark.protocol.config.trajectory_id)
differ only in their strategy and L_det evaluation batch, so the loop trains once, computes each
L_det variant and each in-loop evaluation once per step, and lets every run stop on its own; a run
that stops is evaluated and saved with the weights of its own stop step while the others go on.
A standalone run is a trajectory with one observer.

Every `checkpoint_every` updates the loop flushes the runs' records and stores a snapshot: the
training state, each active run's state and the trace of shared per-step values (benchmark.engine.snapshots:
their files and lifetime); every `records.flush_every` updates it flushes the records alone, so
running runs can be watched. A launch resumes from the latest snapshot it can; a Few-iters run whose
budget is known only later (derived from CLIP-s) branches from the latest snapshot at or before its
budget, its earlier rows taken from the trace. The records come out identical to an uninterrupted
standalone run either way (tested).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.concepts.images import load_concept_images, read_captions
from benchmark.concepts.manifest import concept_folder
from benchmark.core.errors import ConfigError
from benchmark.engine.observer import Observer
from benchmark.engine.snapshots import Snapshots
from benchmark.engine.steps import LdetPass, Step
from benchmark.engine.trajectory import Trajectory, pick_device
from benchmark.protocol.config import (
    resolve,
    results_root,
    run_id,
    trajectory_id,
    validate,
)
from benchmark.store import records
from benchmark.store.runs import (
    RunPaths,
    clean_leftovers,
    close_log,
    completed_record,
    open_log,
    owning,
    read_row,
    record_failure,
    set_aside,
    write_run_files,
)

log = logging.getLogger("dvar")


def run(cfg, share_models: bool = False, force: bool = False) -> dict:
    """Run (or resume) one configuration; a completed run is not repeated unless `force`."""
    return run_trajectory([cfg], share_models=share_models, force=force)[0]


def run_trajectory(cfgs: list, share_models: bool = False, force: bool = False,
                   keep_snapshots: bool | None = None) -> list[dict]:
    """Run the runs of one trajectory together; returns their `runs` rows in order.

    Bad input fails before anything is written. The process then owns the runs (a lock each; a
    launch that meets one held elsewhere gets `Busy`, naming the run and its owner) before it reads
    or moves any record. Completed, intact runs are skipped; `force` moves their records aside to
    <results>/replaced/ and runs them again, as does a completed run whose records are damaged.
    `keep_snapshots` is what the sweep knows of runs that will branch from this trajectory later
    (derived Few-iters): True holds its snapshots for them, False releases them (they are done);
    None, a launch by hand, leaves a hold as it is. The snapshots no run is left to resume or branch
    from are removed at the end (benchmark.engine.snapshots)."""
    cfgs = [resolve(c) for c in cfgs]
    for cfg in cfgs:
        validate(cfg)
    if len({trajectory_id(c) for c in cfgs}) != 1:
        raise ValueError("run_trajectory: the configs belong to different trajectories")
    check_inputs(cfgs[0])
    with owning(cfgs):
        snapshots = Snapshots(cfgs[0])
        if keep_snapshots:
            snapshots.hold()
        for cfg in cfgs:
            clean_leftovers(cfg, snapshots.folder)
        rows, observers = {}, []
        for cfg in cfgs:
            done = None if force else completed_record(cfg)
            if done is not None:
                log.info("run %s already completed; skipping (--force reruns it)", done["run_id"])
                rows[done["run_id"]] = done
                continue
            row = read_row(cfg)
            if force or (row is not None and row["status"] == "completed") or damaged_parts(cfg):
                set_aside(cfg)  # a forced rerun, or records found damaged: kept, out of the way
            observers.append(Observer(cfg))
        if observers:
            Session(observers, share_models).run()
            rows.update({o.rid: o.row for o in observers})
        if keep_snapshots is False:
            snapshots.release()
        snapshots.prune()
    return [rows[run_id(c)] for c in cfgs]


def damaged_parts(cfg: dict) -> bool:
    """Whether a record file of the run is unreadable, its runs file included."""
    paths = RunPaths(cfg)
    runs_file = paths.runs_file()
    return bool(records.unreadable_parts(paths.results, paths.keys, paths.rid)
                or (runs_file.exists() and records.part_problem(runs_file)))


def check_inputs(cfg: dict) -> None:
    """What can be wrong before anything is written: the concept's images and captions decode, the
    device exists, the results folder can be written."""
    folder = concept_folder(cfg["concept"], Path(cfg["paths"]["data"]))
    read_captions(folder, len(load_concept_images(folder)), with_subject=True)
    pick_device(cfg)  # device=cuda where there is none: refused before the results folder and the lock
    root = results_root(cfg)
    try:  # the one real test of writability (permissions, read-only mounts, /proc): create and remove a file
        root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as err:
        raise ConfigError(f"paths.results={root}: not writable ({err.strerror}); choose a folder you can write "
                          "(it is created if missing).") from err


class Session:
    """The runs of one trajectory in this process: set the trajectory up once, then train it in as
    few passes as the stored snapshots allow; each run's files, log and failure record."""

    def __init__(self, observers: list[Observer], share_models: bool):
        self.observers = observers
        self.cfg = observers[0].cfg  # the training-relevant parts are the same for every observer
        self.trajectory = Trajectory(self.cfg, share_models)
        self.snapshots = Snapshots(self.cfg)
        self.logs = {}

    def run(self) -> None:
        setup_error = None
        try:
            self.trajectory.setup()
        except Exception as err:  # a failed setup (a broken model, out of memory) is a failed run; bad
            setup_error = err     # input was refused before the lock (run_trajectory), nothing written
        for o in self.observers:
            write_run_files(o.cfg, o.paths)
            self.logs[o.rid] = open_log(o.paths)
        try:
            if setup_error is not None:
                raise setup_error
            for observers, meta in self.plan():
                Pass(self, observers, meta).fit()
        except Exception as err:
            for o in self.observers:
                if o.row is None:  # the traceback goes to the run's own log, which `sweep status` names
                    self.logs[o.rid].stream.write(traceback.format_exc())
                    record_failure(o.cfg, o.paths, err, o.started_at)
            raise
        finally:
            for o in self.observers:
                self.release(o)

    def release(self, o: Observer) -> None:
        if o.rid in self.logs:
            close_log(self.logs.pop(o.rid))
        o.logger.close()  # a failed run's curves up to its failure stay readable

    def plan(self) -> list[tuple[list[Observer], dict | None]]:
        """(observers, snapshot meta or None for step 0) per pass. A run that decides as it goes
        resumes from the latest snapshot that holds it and whose records it still has intact (else
        from step 0); a run that decides nothing before its budget (Few-iters) rides along with a
        pass it can join, else branches from the latest snapshot at or before its budget. One pass
        per starting snapshot."""
        metas = self.snapshots.metas()
        passes: dict[int, tuple[dict | None, list[Observer]]] = {}
        for o in self.observers:
            if not o.fixed_budget:
                meta = next((m for m in metas if o.rid in m["observers"] and o.records_reach(m["step"])), None)
                passes.setdefault(meta["step"] if meta else 0, (meta, []))[1].append(o)
        for o in self.observers:
            if o.fixed_budget:
                ride = [step for step, (meta, riders) in passes.items()
                        if any(not r.fixed_budget for r in riders) and o.can_join(meta["trace"] if meta else [], step)]
                if ride:
                    passes[max(ride)][1].append(o)
                    continue
                meta = next((m for m in metas if o.can_join(m["trace"], m["step"])), None)
                passes.setdefault(meta["step"] if meta else 0, (meta, []))[1].append(o)
        return [(observers, meta) for _, (meta, observers) in sorted(passes.items())]


class Pass:
    """One pass along a trajectory, from a stored state (or step 0) until its observers stopped."""

    def __init__(self, session: Session, observers: list[Observer], meta: dict | None):
        self.session, self.observers, self.meta = session, observers, meta
        self.cfg, self.trajectory = session.cfg, session.trajectory
        self.trace: list[Step] = []  # the steps of this pass (and the stored ones it started from)
        self.compute_s = 0.0  # updates, L_det and evaluations: the work itself, without bookkeeping

    def fit(self) -> None:
        t0 = time.perf_counter()
        start = self.start()
        end = self.loop(start)
        record_pass(self.cfg, {"trajectory": trajectory_id(self.cfg), "start": start, "end": end, "updates": end - start,
                               "runs": [o.rid for o in self.observers], "strategies": [o.label for o in self.observers],
                               "wall_s": round(time.perf_counter() - t0, 3), "compute_s": round(self.compute_s, 3)})

    # ----------------------------------------------------------------------------------- start --
    def start(self) -> int:
        """Resume or branch from the pass's snapshot, or start at step 0; returns the step."""
        t = self.trajectory
        state = self.session.snapshots.load(self.meta) if self.meta else None
        if state is None:
            t.reset()
            for o in self.observers:  # a fresh start: parts of an earlier, deleted attempt must not mix in
                o.drop_parts()
            self.step(Step(0))
            return 0
        step = self.meta["step"]
        t.reset()
        t.load_state(state["trajectory"])
        self.trace = list(self.meta["trace"])
        for o in self.observers:
            if o.rid in state["observers"] and o.records_reach(step):
                o.load_state(state["observers"][o.rid])
                o.drop_parts(after=step)
            else:  # a fixed-budget run (Session.plan): its earlier rows come from the trace
                o.drop_parts()
                o.join(self.trace)
        log.info("trajectory %s resumed from step %d for %s", trajectory_id(self.cfg), step,
                 ", ".join(o.label for o in self.observers))
        return step

    # ------------------------------------------------------------------------------------ loop --
    def active(self) -> list[Observer]:
        return [o for o in self.observers if o.row is None]

    def loop(self, start: int) -> int:
        """Train until every observer of the pass stopped; returns the last step."""
        cfg, t = self.cfg, self.trajectory
        self.finish_stopped(start, None)
        ckpt_every = int(cfg.get("checkpoint_every") or 0)
        log_every = max(1, int(cfg.get("log_every") or 1))
        flush_every = int((cfg.get("records") or {}).get("flush_every") or 0)  # 0: a config from before the key
        budget = max([o.strategy.max_steps for o in self.active()], default=start)
        names = ", ".join(o.label for o in self.observers)
        bar = tqdm(total=budget, initial=start, desc=f"{cfg['method']['name']} {cfg['concept']} [{names}]",
                   disable=None if cfg["progress"] else True, file=sys.stderr, dynamic_ncols=True)
        loop_t0, step = time.perf_counter(), start
        while self.active():
            step += 1
            t.sync()
            t0 = time.perf_counter()
            lr = t.lr
            update = t.train_update()
            t.sync()
            evaluation = self.step(Step.after(step, update, lr, time.perf_counter() - t0))
            bar.update(1)
            if step % log_every == 0 or not self.active():
                bar.write(self.log_line(step, budget, loop_t0, start), file=sys.stderr)  # stdout keeps the result
            self.finish_stopped(step, evaluation)
            if ckpt_every and step % ckpt_every == 0 and self.active():
                self.save_snapshot(step)
            elif flush_every and step % flush_every == 0:
                # Live records of the running runs. Each snapshot flushes too, so no part spans one: a
                # resume deletes the parts after its snapshot whole and recomputes them.
                for o in self.active():
                    o.flush()
        bar.close()
        return step

    def step(self, row: Step) -> tuple[dict, list] | None:
        """L_det of every variant an active run watches at this step, the step's evaluation when a run
        asks for one, then every active run's view of the step; returns the evaluation."""
        t, step = self.trajectory, row.step
        for o in self.active():
            if o.wants_ldet(step) and o.variant not in row.ldet:
                t.sync()
                t0 = time.perf_counter()
                values = t.ldet(o.ldet_cfg)
                t.sync()
                row.ldet[o.variant] = LdetPass(values, time.perf_counter() - t0)
                self.compute_s += row.ldet[o.variant].seconds
        evaluation = None
        if step > 0 and any(o.strategy.eval_due(step) for o in self.active()):
            evaluation = t.evaluator.evaluate(step, "in_loop")
            self.compute_s += evaluation[0]["sampling_s"] + evaluation[0]["scoring_s"]
        self.compute_s += row.train_s
        self.trace.append(row)
        for o in self.active():
            o.observe(row, evaluation, t)
        return evaluation

    def finish_stopped(self, step: int, evaluation) -> None:
        """Finish the runs that stopped at `step`; one evaluation of the step serves all of them."""
        for o in self.active():
            if o.stopped is not None:
                if evaluation is None and o.needs_final_evaluation:
                    evaluation = self.trajectory.evaluator.evaluate(step, "final")
                    self.compute_s += evaluation[0]["sampling_s"] + evaluation[0]["scoring_s"]
                o.finish(self.trajectory, evaluation, self.trajectory.setup_s)
                self.session.release(o)

    def log_line(self, step: int, budget: int, loop_t0: float, start: int) -> str:
        row = self.trace[-1]
        det = next(iter(row.ldet.values()), None)
        det = f" det {det.values['l_det']:.5f}" if det else ""
        crits = " ".join(f"{o.label} {o.strategy.criterion.value:.3f}" for o in self.observers
                         if o.strategy.criterion.value is not None and o.row is None)
        rate = (step - start) / max(time.perf_counter() - loop_t0, 1e-9)
        skipped = " (fp16 overflow: update skipped)" if row.update_skipped else ""
        return f"step {step}/{budget} loss {row.train_loss:.4f}{skipped}{det}{' ' + crits if crits else ''} {rate:.2f} it/s"

    # ------------------------------------------------------------------------------- snapshots --
    def save_snapshot(self, step: int) -> None:
        """Flush the active runs' records up to `step`, then store the state (benchmark.engine.snapshots)."""
        active = self.active()
        for o in active:
            o.flush()
        state = {"step": step, "trajectory": self.trajectory.state(), "observers": {o.rid: o.state() for o in active}}
        self.session.snapshots.save(step, state, {"observers": sorted(state["observers"]), "trace": self.trace,
                                                  "runs_files": {o.rid: o.paths.runs_file() for o in active}})


def record_pass(cfg: dict, entry: dict) -> None:
    """One line per pass in <results>/work/<experiment>/passes.jsonl: which trajectory, which runs,
    how many updates it trained (what sharing saves, measured)."""
    path = results_root(cfg) / "work" / str(cfg["experiment"]) / "passes.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
