"""The one training loop shared by all methods and strategies.

Step convention (DESIGN.md §3): step k is the state after k optimizer updates. L_det(θ_0) is
recorded at step 0, then after every update (or every `ldet.every` updates). A run stopped at step k
keeps θ_k. Every random draw of training comes from one CPU generator seeded with the run seed; the
evaluation batch and the samplers have their own, so monitoring never changes the trajectory.

The loop checkpoints everything it needs to continue bit-for-bit (weights, optimizer, generator
states, criterion, best checkpoint, timers) every `checkpoint_every` updates, together with the
record parts up to that step; launching the same config again resumes from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmark import records
from benchmark.backbone import load_backbone
from benchmark.class_images import class_images
from benchmark.concepts.images import load_concept_images, read_captions
from benchmark.concepts.manifest import concept_folder, get_concept
from benchmark.config import cache_root, resolve, results_root, run_id, validate
from benchmark.data import ClassData, ConceptData
from benchmark.errors import ConfigError
from benchmark.methods import METHODS
from benchmark.metrics import get_metric_models, score, text_for_clip
from benchmark.objective import EvalBatch, LatentEncoder, diffusion_target, tokenize
from benchmark.provenance import device_name, git_state, hostname, slurm_job_id, versions
from benchmark.sampling import Sampler
from benchmark.strategies import make_strategy
from benchmark.templates import TRAIN_EVAL_TEMPLATES

log = logging.getLogger("dvar")
METRICS = ("train_clip_img", "train_clip_txt", "val_clip_img", "val_clip_txt", "dino", "div")


def now() -> datetime:
    return datetime.now(timezone.utc)


class RunPaths:
    """Where one run keeps its files: <results>/work/<experiment>/<run_id>/."""

    def __init__(self, cfg: dict, rid: str):
        self.results = results_root(cfg)
        self.work = self.results / "work" / str(cfg["experiment"]) / rid
        self.running = self.work / "RUNNING"  # present while a process works on the run
        self.checkpoint = self.work / "checkpoint"
        self.weights = self.work / "weights"
        self.samples = self.work / "samples"
        self.keys = {"experiment": cfg["experiment"], "method": cfg["method"]["name"],
                     "strategy": cfg["strategy"].get("label") or cfg["strategy"]["name"]}


def completed_record(cfg: dict) -> dict | None:
    """The `runs` row of this exact config if it completed, else None ("done" is decided on disk)."""
    rid = run_id(cfg)
    paths = RunPaths(cfg, rid)
    f = records.partition_dir(paths.results, "runs", paths.keys) / f"{rid}.parquet"
    if not f.exists():
        return None
    import pyarrow.parquet as pq

    row = pq.read_table(f).to_pylist()[0]
    return row if row["status"] == "completed" else None


def pick_device(cfg: dict) -> torch.device:
    want = str(cfg.get("device", "auto"))
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={want} but CUDA is not available here; use device=cpu or device=auto.")
    return torch.device(want)


def precision(cfg: dict, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the frozen weights, autocast dtype or None). Trainable weights always stay fp32."""
    mode = cfg.get("mixed_precision", "auto")
    if device.type != "cuda":
        if mode in ("fp16", "bf16"):
            log.warning("mixed_precision=%s ignored on %s: running fp32", mode, device)
        return torch.float32, None
    mode = "fp16" if mode == "auto" else mode
    if mode == "no":
        return torch.float32, None
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    return dtype, dtype


class Trainer:
    def __init__(self, cfg, share_models: bool = False):
        self.cfg = resolve(cfg)
        validate(self.cfg)
        self.rid = run_id(self.cfg)
        self.paths = RunPaths(self.cfg, self.rid)
        self.share_models = share_models
        self.started_at = now()
        self._sampler: Sampler | None = None

    # ------------------------------------------------------------------------------- setup --
    def setup(self) -> None:
        t0 = time.perf_counter()
        cfg = self.cfg
        self.device = pick_device(cfg)
        self.weight_dtype, amp_dtype = precision(cfg, self.device)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype else \
            contextlib.nullcontext
        self.strategy = make_strategy(cfg["strategy"], int(cfg["ldet"]["every"]))
        self.concept = get_concept(cfg["concept"])
        # Decode every image now: a bad file fails the run here, before any model is loaded.
        folder = concept_folder(cfg["concept"], Path(cfg["paths"]["data"]))
        self.references = [im for _, im in load_concept_images(folder)]
        self.image_captions = read_captions(folder, len(self.references), with_subject=True)

        backbone = load_backbone(cfg["model"], cache_root(cfg), share=self.share_models)
        for module in (backbone.vae, backbone.text_encoder, backbone.unet):
            module.to(self.device)
            if self.weight_dtype != torch.float32:  # frozen weights in half precision on CUDA
                module.to(self.weight_dtype)
        self.backbone = backbone
        method_cfg = cfg["method"]
        placeholder = method_cfg["placeholder_token"].format(concept=cfg["concept"])
        self.method = METHODS.get(method_cfg["name"])(method_cfg, backbone, self.concept, placeholder, cfg["seed"])
        class_data = None
        if self.method.uses_prior:  # class images come from the *base* model, before any change
            images, captions = class_images(
                method_cfg["prior"], self.concept.class_noun, backbone, self._make_sampler, cache_root(cfg),
                cfg["sampling"], progress=cfg["progress"])
            class_data = ClassData(images, captions, backbone.resolution)
        self.method.setup()
        for p in self.method.parameters():
            p.data = p.data.float()
        self.class_data = class_data

        self.data = ConceptData(
            self.references, backbone.resolution, self.method.subject,
            center_crop=method_cfg["center_crop"], flip_p=float(method_cfg["flip_p"]),
            random_rescale=method_cfg["random_rescale"], captions=method_cfg["captions"],
            instance_prompt=method_cfg.get("instance_prompt"), latent_factor=backbone.vae_scale,
            image_captions=self.image_captions,
        )
        self.encoder = LatentEncoder(backbone.vae, self.data, self.device, self.weight_dtype)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(backbone.scheduler_config)
        latent_shape = (backbone.unet.config.in_channels, backbone.resolution // backbone.vae_scale,
                        backbone.resolution // backbone.vae_scale)
        self.latent_shape = latent_shape
        self.eval_batch = None
        if cfg["ldet"]["enabled"]:
            self.eval_batch = EvalBatch(cfg["ldet"], self.data, self.encoder, backbone.tokenizer,
                                        self.noise_scheduler, cfg["seed"] + int(cfg["ldet"]["seed_offset"]),
                                        latent_shape)
        adam = method_cfg["adam"]
        self.optimizer = torch.optim.AdamW(
            self.method.parameters(), lr=float(method_cfg["learning_rate"]),
            betas=(float(adam["beta1"]), float(adam["beta2"])), weight_decay=float(adam["weight_decay"]),
            eps=float(adam["eps"]),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.weight_dtype == torch.float16)
        self.generator = torch.Generator().manual_seed(int(cfg["seed"]))
        self.criterion = self.strategy.make_criterion()

        n_train = int(cfg["sampling"]["n_train_prompts"])
        source = self.image_captions or TRAIN_EVAL_TEMPLATES  # a concept's own captions, when it has them
        templates = [source[i % len(source)] for i in range(n_train)]
        self.train_prompts = [t.format(self.method.subject) for t in templates]
        per_prompt = int(cfg["sampling"]["images_per_val_prompt"])
        n_val = cfg["sampling"].get("n_val_prompts") or len(self.concept.val_prompts)
        val = [p.format(self.method.subject) for p in self.concept.val_prompts[:n_val]]
        self.val_prompts = [p for _ in range(per_prompt) for p in val]
        self.val_groups = [i for _ in range(per_prompt) for i in range(len(val))]
        # Loaded here, not at the first evaluation, so that evaluation times hold no loading.
        self.metric_models = get_metric_models(cfg["metrics"], cache_root(cfg), self.device)
        self.setup_s = time.perf_counter() - t0

    def _make_sampler(self) -> Sampler:
        # The pipeline holds the live modules, so one sampler serves the base model (class images)
        # and every later checkpoint.
        if self._sampler is None:
            self._sampler = Sampler(self.backbone, self.cfg["sampling"], self.device, self.autocast)
        return self._sampler

    # ----------------------------------------------------------------------------- pieces --
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_update(self) -> tuple[float, float]:
        """One optimizer update on a fresh random batch; returns (loss, unscaled grad norm)."""
        g, bs = self.generator, int(self.cfg["train_batch_size"])
        batch = self.data.sample(g, bs)
        if self.encoder.cache is not None:
            mean, std = self.encoder.cached_posterior(batch.image_index, batch.flipped)
        else:
            mean, std = self.encoder.posterior(batch.pixels)
        latents = self.encoder.sample(mean, std, torch.randn(mean.shape, generator=g))
        captions = batch.captions
        if self.class_data is not None:
            class_pixels, class_captions = self.class_data.sample(g, bs)
            c_mean, c_std = self.encoder.posterior(class_pixels)
            latents = torch.cat([latents, self.encoder.sample(c_mean, c_std, torch.randn(c_mean.shape, generator=g))])
            captions = captions + class_captions
        noise = torch.randn(latents.shape, generator=g).to(self.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),), generator=g)
        t = t.to(self.device)
        ids = tokenize(self.backbone.tokenizer, captions).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        with self.autocast():
            hidden = self.backbone.text_encoder(ids)[0]
            pred = self.backbone.unet(noisy.to(self.weight_dtype), t, hidden).sample
        target = diffusion_target(self.noise_scheduler, latents, noise, t)
        mask = batch.mask.to(self.device) if batch.mask is not None else None
        loss = self.method.loss(pred, target, mask, bs)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad.detach().float().norm() for p in self.method.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
        clip = self.cfg["method"].get("max_grad_norm")
        if clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), float(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), grad_norm

    def ldet(self) -> dict[str, float]:
        return self.eval_batch.loss(self.backbone.unet, self.backbone.text_encoder, self.device, self.autocast)

    def evaluate(self, step: int, phase: str) -> dict:
        """Sample train and val prompts with the current weights and score them."""
        sampler = self._make_sampler()
        self._sync()
        t0 = time.perf_counter()
        images = sampler.generate(self.train_prompts + self.val_prompts)
        self._sync()
        t1 = time.perf_counter()
        n_train = len(self.train_prompts)
        models = self.metric_models
        mode, noun = self.cfg["metrics"]["text_subject"], self.concept.class_noun
        texts = [text_for_clip(p, self.method.placeholder, noun, mode) for p in self.train_prompts + self.val_prompts]
        scores = score(models, self.references, images[:n_train], texts[:n_train], images[n_train:],
                       texts[n_train:], self.val_groups, self.cfg["metrics"]["pairing"])
        t2 = time.perf_counter()
        save = self.cfg["sampling"]["save_images"]
        if save == "all" or (save == "final" and phase == "final"):
            self._save_grid(images, step)
        return {"run_id": self.rid, "step": step, "phase": phase, **scores, "n_train_images": n_train,
                "n_val_images": len(images) - n_train, "sampling_s": t1 - t0, "scoring_s": t2 - t1}

    def _save_grid(self, images, step: int) -> None:
        from PIL import Image

        self.paths.samples.mkdir(parents=True, exist_ok=True)
        w, h = images[0].size
        cols = min(8, len(images))
        grid = Image.new("RGB", (cols * w, -(-len(images) // cols) * h))
        for i, im in enumerate(images):
            grid.paste(im, ((i % cols) * w, (i // cols) * h))
        grid.save(self.paths.samples / f"step{step:06d}.png")

    # ---------------------------------------------------------------------- checkpointing --
    def _state(self, step: int) -> dict:
        return {
            "step": step, "weights": self.method.trainable_state(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
            "eval_generator": self.eval_batch.generator.get_state() if self.eval_batch else None,
            "criterion": self.criterion.state_dict(), "best": self.best, "timers": self.timers,
            "started_at": self.started_at, "stopped": self.stopped,
        }

    def save_checkpoint(self, step: int) -> None:
        """Flush the record parts up to `step`, then atomically replace the checkpoint."""
        self.flush_records()
        self.paths.checkpoint.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.checkpoint / "state.pt.tmp"
        torch.save(self._state(step), tmp)
        os.replace(tmp, self.paths.checkpoint / "state.pt")

    def try_resume(self) -> int:
        """Continue from the checkpoint if there is one; returns the step to continue after."""
        f = self.paths.checkpoint / "state.pt"
        if not f.exists():  # a fresh start: parts of an earlier, deleted attempt must not mix in
            for table in ("steps", "evals"):
                for part in records.run_parts(self.paths.results, table, self.paths.keys, self.rid):
                    part.unlink()
            return -1
        try:
            state = torch.load(f, map_location="cpu", weights_only=False)
        except Exception as err:  # a checkpoint is replaced atomically, so this means outside damage
            raise ConfigError(f"{f}: unreadable checkpoint ({err}). Delete {self.paths.checkpoint} "
                              "to restart this run from scratch.") from err
        step = int(state["step"])
        self.method.load_trainable_state(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        if self.eval_batch is not None and state["eval_generator"] is not None:
            self.eval_batch.generator.set_state(state["eval_generator"])
        self.criterion.load_state_dict(state["criterion"])
        self.best, self.timers, self.stopped = state["best"], state["timers"], state["stopped"]
        self.started_at = state["started_at"]
        # Parts written after the checkpoint (a kill between the two writes) are recomputed.
        for table in ("steps", "evals"):
            for part in records.run_parts(self.paths.results, table, self.paths.keys, self.rid):
                if records.part_range(part)[1] > step:
                    part.unlink()
        log.info("resumed %s from step %d", self.rid, step)
        return step

    def flush_records(self) -> None:
        for table, rows in (("steps", self.step_rows), ("evals", self.eval_rows)):
            if rows:
                name = records.part_name(self.rid, rows[0]["step"], rows[-1]["step"])
                records.write_part(self.paths.results, table, self.paths.keys, name, rows)
        self.step_rows, self.eval_rows = [], []

    # --------------------------------------------------------------------------------- fit --
    def fit(self) -> dict:
        self.setup()
        cfg, strategy = self.cfg, self.strategy
        self.step_rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self.best = {"step": None, "value": None, "weights": None, "metrics": None}
        self.timers = {"train_s": 0.0, "ldet_s": 0.0, "sampling_s": 0.0, "loop_s": 0.0}
        self.stopped = None  # (step, reason) once decided
        start = self.try_resume()
        ckpt_every = int(cfg.get("checkpoint_every") or 0)
        log_every = max(1, int(cfg.get("log_every") or 1))
        bar = tqdm(total=strategy.max_steps, initial=max(start, 0), desc=f"{self.paths.keys['method']}/"
                   f"{strategy.label} {cfg['concept']}", disable=None if cfg["progress"] else True,
                   file=sys.stderr, dynamic_ncols=True)
        loop_t0 = time.perf_counter() - self.timers["loop_s"]
        step = max(start, 0)
        if start < 0:  # step 0: the untrained weights
            self._record_step(0, None, None, 0.0, loop_t0)
        while self.stopped is None and step < strategy.max_steps:
            step += 1
            self._sync()
            t0 = time.perf_counter()
            loss, grad_norm = self.train_update()
            self._sync()
            train_s = time.perf_counter() - t0
            self._record_step(step, loss, grad_norm, train_s, loop_t0)
            bar.update(1)
            if step % log_every == 0 or self.stopped:
                row = self.step_rows[-1]
                det = f" det {row['l_det']:.5f}" if row.get("l_det") is not None else ""
                crit = f" crit {row['criterion']:.3f}" if row.get("criterion") is not None else ""
                bar.write(f"step {step}/{strategy.max_steps} loss {loss:.4f}{det}{crit} "
                          f"{step / max(time.perf_counter() - loop_t0, 1e-9):.2f} it/s")
            if self.stopped is None and step >= strategy.max_steps:
                self.stopped = (step, strategy.stop_reason_at_budget)
            if ckpt_every and step % ckpt_every == 0 and self.stopped is None:
                self.timers["loop_s"] = time.perf_counter() - loop_t0
                self.save_checkpoint(step)
        bar.close()
        self.timers["loop_s"] = time.perf_counter() - loop_t0
        return self.finish()

    def _record_step(self, step: int, loss, grad_norm, train_s: float, loop_t0: float) -> None:
        """L_det, criterion and in-loop evaluation after update `step`; appends the step row."""
        cfg, strategy = self.cfg, self.strategy
        row = {"run_id": self.rid, "step": step, "train_loss": loss, "grad_norm": grad_norm,
               "lr": self.optimizer.param_groups[0]["lr"] if step > 0 else None, "train_s": train_s,
               "ldet_s": 0.0, "sampling_s": 0.0}
        if self.eval_batch is not None and step % int(cfg["ldet"]["every"]) == 0:
            self._sync()
            t0 = time.perf_counter()
            row.update(self.ldet())
            self._sync()
            row["ldet_s"] = time.perf_counter() - t0
            if self.criterion.signal == "l_det" and self.criterion.update(step, row["l_det"]):
                self.stopped = (step, "criterion")
        if step > 0 and strategy.eval_due(step):
            ev = self.evaluate(step, "in_loop")
            self.eval_rows.append(ev)
            row["sampling_s"] = ev["sampling_s"] + ev["scoring_s"]
            if strategy.reports_best and (self.best["value"] is None or ev["train_clip_img"] > self.best["value"]):
                self.best = {"step": step, "value": ev["train_clip_img"],
                             "weights": self.method.trainable_state(), "metrics": ev}
            if self.criterion.signal == "train_clip_img" and self.criterion.update(step, ev["train_clip_img"]):
                self.stopped = (step, "criterion")
        row["criterion"] = self.criterion.value
        self.timers["train_s"] += train_s
        self.timers["ldet_s"] += row["ldet_s"]
        self.timers["sampling_s"] += row["sampling_s"]
        row["wall_s"] = time.perf_counter() - loop_t0
        self.step_rows.append(row)

    def finish(self) -> dict:
        """Save weights, run the final evaluation where needed, and write the `runs` row."""
        cfg = self.cfg
        final_step, reason = self.stopped
        self.method.save(self.paths.weights / "final")
        t0 = time.perf_counter()
        if self.strategy.reports_best and self.best["step"] is not None:
            self.method.load_trainable_state(self.best["weights"])
            self.method.save(self.paths.weights / "best")
            reported, weights_dir, metrics = self.best["step"], self.paths.weights / "best", self.best["metrics"]
        else:
            metrics = self.evaluate(final_step, "final")
            self.eval_rows.append(metrics)
            reported, weights_dir = final_step, self.paths.weights / "final"
        final_eval_s = time.perf_counter() - t0
        self.flush_records()
        sha, dirty = git_state()
        row = {
            "run_id": self.rid, "concept": cfg["concept"], "seed": cfg["seed"], "model": cfg["model"]["name"],
            "model_identity": self.backbone.identity, "status": "completed", "iterations": final_step,
            "reported_step": reported, "max_steps": self.strategy.max_steps, "stop_reason": reason,
            **{m: metrics.get(m) for m in METRICS},
            "train_s": self.timers["train_s"], "ldet_s": self.timers["ldet_s"],
            "sampling_s": self.timers["sampling_s"], "total_s": self.timers["loop_s"], "setup_s": self.setup_s,
            "final_eval_s": final_eval_s, "clip_pairing": cfg["metrics"]["pairing"],
            "weights_dir": str(weights_dir.relative_to(self.paths.results)), "error": None,
            "config_json": json.dumps(cfg, sort_keys=True, default=str), "git_sha": sha, "git_dirty": dirty,
            "versions_json": json.dumps(versions(), sort_keys=True), "device": device_name(self.device),
            "hostname": hostname(), "slurm_job_id": slurm_job_id(), "started_at": self.started_at,
            "finished_at": now(),
        }
        records.write_part(self.paths.results, "runs", self.paths.keys, f"{self.rid}.parquet", [row])
        shutil.rmtree(self.paths.checkpoint, ignore_errors=True)
        log.info("run %s done: %s at step %d (reported step %d), train CLIP img %.4f",
                 self.rid, reason, final_step, reported, row["train_clip_img"] or float("nan"))
        return row


def write_run_files(cfg: dict, paths: RunPaths) -> None:
    paths.work.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_state()
    (paths.work / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str))
    (paths.work / "provenance.json").write_text(json.dumps(
        {"git_sha": sha, "git_dirty": dirty, "versions": versions(), "hostname": hostname(),
         "slurm_job_id": slurm_job_id()}, indent=1))


def record_failure(trainer: Trainer, err: BaseException) -> None:
    """A `runs` row with status=failed, so `status` lists the run and its error."""
    cfg = trainer.cfg
    row = {"run_id": trainer.rid, "concept": cfg["concept"], "seed": cfg["seed"], "model": cfg["model"]["name"],
           "status": "failed", "error": f"{type(err).__name__}: {err}",
           "config_json": json.dumps(cfg, sort_keys=True, default=str), "started_at": trainer.started_at,
           "finished_at": now(), "hostname": hostname(), "slurm_job_id": slurm_job_id()}
    records.write_part(trainer.paths.results, "runs", trainer.paths.keys, f"{trainer.rid}.parquet", [row])


def run(cfg, share_models: bool = False, force: bool = False) -> dict:
    """Run (or resume) one configuration; a completed run is not repeated unless `force`."""
    trainer = Trainer(cfg, share_models=share_models)
    done = None if force else completed_record(trainer.cfg)
    if done is not None:
        log.info("run %s already completed; skipping (force=true reruns it)", trainer.rid)
        return done
    write_run_files(trainer.cfg, trainer.paths)
    trainer.paths.running.write_text(json.dumps({"host": hostname(), "pid": os.getpid(),
                                                 "slurm_job_id": slurm_job_id(), "since": now().isoformat()}))
    handler = logging.FileHandler(trainer.paths.work / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        return trainer.fit()
    except ConfigError:
        raise
    except Exception as err:
        # The traceback goes to the run's own log, which `sweep status` points to for failed runs.
        handler.stream.write(traceback.format_exc())
        record_failure(trainer, err)
        raise
    finally:
        trainer.paths.running.unlink(missing_ok=True)
        log.removeHandler(handler)
        handler.close()
