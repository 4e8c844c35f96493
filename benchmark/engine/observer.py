"""One run as an observer of a shared trajectory.

The run's strategy decides when it stops; the observer turns the trajectory's steps into the run's
own records — the `steps` rows (its L_det variant, its criterion), its `evals` rows (the evaluations
on its schedule, and its final one at its own stop step), its best checkpoint, its weights and its
`runs` row — exactly the rows its standalone run writes. Its time is its own protocol's cost, summed
from the per-step timers: its updates, its L_det passes, its in-loop evaluations.
"""

from __future__ import annotations

import json
import logging

from benchmark.core.provenance import (
    device_name,
    git_state,
    hostname,
    slurm_job_id,
    versions,
)
from benchmark.engine.evaluation import METRICS, keep_grid, save_grid
from benchmark.engine.loggers import open_logger
from benchmark.engine.steps import Step
from benchmark.protocol.config import ldet_variant, logs_ldet
from benchmark.protocol.strategies import make_strategy
from benchmark.store import records
from benchmark.store.runs import RunPaths, now

log = logging.getLogger("dvar")


class Observer:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.paths = RunPaths(cfg)
        self.rid = self.paths.rid
        self.every = int(cfg["ldet"]["every"])
        self.strategy = make_strategy(cfg["strategy"], self.every)
        self.ldet_cfg = cfg["ldet"] if cfg["ldet"]["enabled"] else None
        self.variant = ldet_variant(self.ldet_cfg) if self.ldet_cfg else None
        self.started_at = now()
        self.step_rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self.best = {"step": None, "value": None, "weights": None, "metrics": None}
        self.timers = {"train_s": 0.0, "ldet_s": 0.0, "sampling_s": 0.0}
        self.stopped: tuple[int, str] | None = None  # (step, reason) once decided
        self.row: dict | None = None                 # the runs row, once finished
        self.logger = open_logger(cfg, self.rid)     # logger=tensorboard|wandb: a live view of the rows

    @property
    def label(self) -> str:
        return self.strategy.name

    @property
    def needs_final_evaluation(self) -> bool:
        """Runs that report their stop step are evaluated there; best-checkpoint runs reuse that one's."""
        return not (self.strategy.reports_best and self.best["step"] is not None)

    def wants_ldet(self, step: int) -> bool:
        return self.variant is not None and logs_ldet(self.ldet_cfg, self.strategy.needs_ldet, step)

    # ----------------------------------------------------------------------------------- steps --
    def observe(self, t: Step, evaluation: tuple[dict, list] | None, trajectory) -> None:
        """Step `t` of the trajectory (its shared values), and the evaluation of that step when any
        observer asked for one."""
        step = t.step
        row = {"run_id": self.rid, **t.columns(), "ldet_s": 0.0, "sampling_s": 0.0}
        if self.wants_ldet(step):
            row.update(t.ldet[self.variant].values)
            row["ldet_s"] = t.ldet[self.variant].seconds
        if self.strategy.after_update(step, row):
            self.stopped = (step, "criterion")
        if step > 0 and self.strategy.eval_due(step):
            scores, images = evaluation
            ev = {"run_id": self.rid, **scores}
            self.eval_rows.append(ev)
            self.logger.evaluation(ev, images)
            row["sampling_s"] = ev["sampling_s"] + ev["scoring_s"]
            new_best = self.strategy.reports_best and (self.best["value"] is None or
                                                        ev["train_clip_img"] > self.best["value"])
            save = self.cfg["sampling"]["save_images"]
            if save == "all" or (save == "final" and new_best):  # a best-checkpoint run reports this one
                save_grid(images, self.paths.samples, step)
            if new_best:
                self.best = {"step": step, "value": ev["train_clip_img"],
                             "weights": trajectory.method.trainable_state(), "metrics": ev}
            if self.strategy.after_evaluation(step, ev):
                self.stopped = (step, "criterion")
        row["criterion"] = self.strategy.criterion.value
        for key in self.timers:
            self.timers[key] += row[key]
        row["wall_s"] = sum(self.timers.values())
        self.step_rows.append(row)
        self.logger.step(row)
        if self.stopped is None and step >= self.strategy.max_steps:
            self.stopped = (step, self.strategy.stop_reason_at_budget)

    # ----------------------------------------------------------------------- joining a trajectory --
    @property
    def fixed_budget(self) -> bool:
        """A run that decides nothing before its budget (Few-iters): no in-loop evaluation, no criterion."""
        return not (self.strategy.evaluates_in_loop or self.strategy.needs_ldet)

    def can_join(self, trace: list[Step], step: int) -> bool:
        """Whether this run can start from a stored state at `step` with its earlier steps taken from
        the trace: a fixed-budget run, on an L_det variant the trace holds."""
        if not self.fixed_budget or step > self.strategy.max_steps:
            return False
        return self.variant is None or all(self.variant in t.ldet for t in trace if self.wants_ldet(t.step))

    def join(self, trace: list[Step]) -> None:
        for t in trace:
            self.observe(t, None, None)

    # ------------------------------------------------------------------------------ resumption --
    def state(self) -> dict:
        return {"criterion": self.strategy.criterion.state_dict(), "best": self.best, "timers": self.timers,
                "stopped": self.stopped, "started_at": self.started_at}

    def load_state(self, state: dict) -> None:
        self.strategy.criterion.load_state_dict(state["criterion"])
        self.best, self.timers, self.stopped = state["best"], state["timers"], state["stopped"]
        self.started_at = state["started_at"]

    def records_reach(self, step: int) -> bool:
        """Whether the run's flushed steps parts are intact and cover steps 0..`step` (it can resume
        from a snapshot at `step`)."""
        if any(records.part_problem(p) for p in self.paths.parts("evals")):
            return False
        reached = -1
        for part in self.paths.parts("steps"):
            first, last = records.part_range(part)
            if first != reached + 1 or records.part_problem(part):
                return False
            reached = last
            if reached >= step:
                return True
        return reached >= step

    def drop_parts(self, after: int = -1) -> None:
        """Delete record parts that reach past step `after` (all of them by default): they are
        recomputed, so parts of an interrupted attempt never mix in."""
        for table in ("steps", "evals"):
            for part in self.paths.parts(table):
                if records.part_range(part)[1] > after:
                    part.unlink()

    def flush(self) -> None:
        for table, rows in (("steps", self.step_rows), ("evals", self.eval_rows)):
            if rows:
                name = records.part_name(self.rid, rows[0]["step"], rows[-1]["step"])
                records.write_part(self.paths.results, table, self.paths.keys, name, rows)
        self.step_rows, self.eval_rows = [], []
        self.logger.flush()

    # ---------------------------------------------------------------------------------- finish --
    def weights_provenance(self, trajectory, step: int) -> dict:
        """What the saved weights files state in their metadata besides the method and token."""
        model = self.cfg["model"]
        return {"run_id": self.rid, "step": step, "model_config": model["name"],
                "base_model": model.get("pretrained") or trajectory.backbone.identity,
                "base_model_revision": model.get("revision") or ("main" if model.get("pretrained") else ""),
                "model_identity": trajectory.backbone.identity}

    def finish(self, trajectory, evaluation: tuple[dict, list] | None, setup_s: float) -> dict:
        """Save the weights of the stop step (and the best checkpoint), evaluate the stop step where
        the strategy reports it (reusing the step's evaluation when there was one), write the row."""
        cfg, method = self.cfg, trajectory.method
        final_step, reason = self.stopped
        method.save(self.paths.weights / "final", self.weights_provenance(trajectory, final_step))
        if not self.needs_final_evaluation:
            current = method.trainable_state()
            method.load_trainable_state(self.best["weights"])
            method.save(self.paths.weights / "best", self.weights_provenance(trajectory, self.best["step"]))
            method.load_trainable_state(current)
            reported, weights_dir, metrics = self.best["step"], self.paths.weights / "best", self.best["metrics"]
            final_eval_s = 0.0
            if cfg["sampling"]["save_images"] == "final":  # the grid of each best as it came; keep the last
                keep_grid(self.paths.samples, reported)
        else:
            scores, images = evaluation
            metrics = {"run_id": self.rid, **scores, "phase": "final"}
            self.eval_rows.append(metrics)
            self.logger.evaluation(metrics, images)
            if cfg["sampling"]["save_images"] in ("final", "all"):
                save_grid(images, self.paths.samples, final_step)
            reported, weights_dir = final_step, self.paths.weights / "final"
            final_eval_s = scores["sampling_s"] + scores["scoring_s"]
        self.flush()
        sha, dirty = git_state()
        t = self.timers
        self.row = {
            "run_id": self.rid, "concept": cfg["concept"], "seed": cfg["seed"], "model": cfg["model"]["name"],
            "model_identity": trajectory.backbone.identity, "status": "completed", "iterations": final_step,
            "reported_step": reported, "max_steps": self.strategy.max_steps, "stop_reason": reason,
            **{m: metrics.get(m) for m in METRICS},
            "train_s": t["train_s"], "ldet_s": t["ldet_s"], "sampling_s": t["sampling_s"],
            "total_s": sum(t.values()), "time_s": self.strategy.protocol_time(t["train_s"], t["ldet_s"], t["sampling_s"]),
            "setup_s": setup_s, "final_eval_s": final_eval_s, "clip_pairing": cfg["metrics"]["pairing"],
            "weights_dir": str(weights_dir.relative_to(self.paths.results)), "error": None,
            "config_json": json.dumps(cfg, sort_keys=True, default=str), "git_sha": sha, "git_dirty": dirty,
            "versions_json": json.dumps(versions(), sort_keys=True), "device": device_name(trajectory.device),
            "hostname": hostname(), "slurm_job_id": slurm_job_id(), "started_at": self.started_at,
            "finished_at": now(),
        }
        records.write_part(self.paths.results, "runs", self.paths.keys, f"{self.rid}.parquet", [self.row])
        self.logger.close()
        log.info("run %s (%s) done: %s at step %d (reported step %d), train CLIP img %.4f", self.rid, self.label,
                 reason, final_step, reported, self.row["train_clip_img"] or float("nan"))
        return self.row
