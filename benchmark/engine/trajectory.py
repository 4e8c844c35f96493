"""The shared training state of one trajectory: what every run observing it has in common.

A trajectory is fixed by everything that changes the parameters (concept, method, seed, model,
training config); the strategy, its budget and the L_det evaluation batch do not (benchmark.protocol.config.
trajectory_id). Every random draw of training comes from one CPU generator seeded with the run seed;
each L_det variant (a distinct `ldet` config) has its own evaluation batch and generator, and the
sampler re-seeds itself per evaluation, so observing never changes the trajectory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from benchmark.concepts.images import load_concept_images, read_captions
from benchmark.concepts.manifest import concept_folder, get_concept
from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import cast_frozen, load_backbone
from benchmark.engine.data import ConceptData
from benchmark.engine.evaluation import Evaluator
from benchmark.engine.methods.base import method_class
from benchmark.engine.metrics import get_metric_models
from benchmark.engine.objective import DiffusionForward, EvalBatch, LatentEncoder
from benchmark.engine.sampling import Sampler
from benchmark.engine.steps import Update
from benchmark.protocol.config import cache_root, ldet_variant

log = logging.getLogger("dvar")


def pick_device(cfg: dict) -> torch.device:
    want = str(cfg.get("device", "auto"))
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={want} but CUDA is not available here; use device=cpu or device=auto.")
    device = torch.device(want)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={want} but this machine has {torch.cuda.device_count()} CUDA devices; use "
                          "device=cuda or device=cuda:N below that.")
    return device


def precision(cfg: dict, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the frozen weights, autocast dtype or None). Trainable weights always stay fp32.

    fp16 and bf16 take the same path on every device (half frozen weights, autocast, a GradScaler
    for fp16), so the path a GPU takes runs on a CPU too; `auto` is fp16 on CUDA and fp32 elsewhere."""
    mode = cfg.get("mixed_precision", "auto")
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "no"
    if mode == "no":
        return torch.float32, None
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"mixed_precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                          "use mixed_precision=fp16.")
    return dtype, dtype


def set_determinism(enabled: bool) -> None:
    """`deterministic=true`: deterministic cuBLAS / cuDNN kernels and algorithms (slower on a GPU;
    README, "Reproducibility"). Ops with no deterministic kernel (upsample_nearest2d's backward on
    CUDA) warn instead of failing. A CPU is deterministic either way."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def rng_states(device: torch.device) -> dict:
    """The process-wide generators: nothing in training draws from them (every draw has its own
    generator), but a library call that does must not break resume or branch identity."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


class Trajectory:
    def __init__(self, cfg: dict, share_models: bool = False):
        self.cfg = cfg
        self.share_models = share_models
        self.eval_batches: dict[str, EvalBatch] = {}

    # ------------------------------------------------------------------------------------ setup --
    def setup(self) -> None:
        """Decode the images (a bad file fails here, before any model loads), load the models, set
        the method up and draw the initial state."""
        t0 = time.perf_counter()
        cfg = self.cfg
        self.device = pick_device(cfg)
        set_determinism(bool(cfg.get("deterministic", False)))
        self.weight_dtype, amp_dtype = precision(cfg, self.device)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype else \
            contextlib.nullcontext
        self.concept = get_concept(cfg["concept"])
        folder = concept_folder(cfg["concept"], Path(cfg["paths"]["data"]))
        self.references = [im for _, im in load_concept_images(folder)]
        image_captions = read_captions(folder, len(self.references), with_subject=True)

        method_cfg = cfg["method"]
        method_plugin = method_class(method_cfg)  # `method.plugin`, imported
        placeholder = method_cfg["placeholder_token"].format(concept=cfg["concept"])
        # The components the method changes come in fp32: its trainable weights start from the fp32
        # pretrained values; the frozen rest is lowered to the weight dtype once they are taken.
        backbone = load_backbone(cfg["model"], cache_root(cfg), share=self.share_models, device=self.device,
                                 dtype=self.weight_dtype, modifies=method_plugin.modifies, placeholder=placeholder)
        self.backbone = backbone
        self.method = method_plugin(method_cfg, backbone, self.concept, placeholder, cfg["seed"])
        self._sampler = None
        self.method.prepare(self.sampler, cache_root(cfg), cfg["sampling"], cfg["progress"])
        self.method.setup()
        cast_frozen(backbone, self.weight_dtype, self.method.parameters())

        self.data = ConceptData(
            self.references, backbone.resolution, self.method.subject,
            center_crop=method_cfg["center_crop"], flip_p=float(method_cfg["flip_p"]),
            random_rescale=method_cfg["random_rescale"], captions=method_cfg["captions"],
            instance_prompt=method_cfg.get("instance_prompt"), latent_factor=backbone.vae_scale,
            image_captions=image_captions,
        )
        self.encoder = LatentEncoder(backbone.vae, self.data, self.device, self.weight_dtype)

        self.noise_scheduler = DDPMScheduler.from_config(backbone.scheduler_config)
        self.forward = DiffusionForward(backbone, self.noise_scheduler, self.device, self.autocast, self.weight_dtype)
        side = backbone.resolution // backbone.vae_scale
        self.latent_shape = (backbone.unet.config.in_channels, side, side)
        adam = method_cfg["adam"]
        self.optimizer = torch.optim.AdamW(
            self.method.parameters(), lr=float(method_cfg["learning_rate"]),
            betas=(float(adam["beta1"]), float(adam["beta2"])), weight_decay=float(adam["weight_decay"]),
            eps=float(adam["eps"]),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.weight_dtype == torch.float16)
        self.generator = torch.Generator().manual_seed(int(cfg["seed"]))
        # Loaded here, not at the first evaluation, so that evaluation times hold no loading.
        self.metric_models = get_metric_models(cfg["metrics"], cache_root(cfg), self.device)
        self.evaluator = Evaluator(cfg, self)
        self.initial = self.state()  # step 0, for passes that start there
        self.setup_s = time.perf_counter() - t0

    def sampler(self):
        """The sampler on the live modules: it generates class images from the base model before the
        method changes it, and the evaluation samples of every checkpoint after."""
        if self._sampler is None:
            self._sampler = Sampler(self.backbone, self.cfg["sampling"], self.device, self.autocast)
        return self._sampler

    # --------------------------------------------------------------------------------- training --
    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_update(self) -> Update:
        """One optimizer update on a fresh random batch; returns the step's values: the loss, the
        unscaled gradient norm, and under fp16 the loss scale and whether the GradScaler skipped the
        update because the scaled gradients overflowed (their norm is then not a number: null)."""
        g, bs = self.generator, int(self.cfg["train_batch_size"])
        batch = self.data.sample(g, bs)
        if self.encoder.cache is not None:
            mean, std = self.encoder.cached_posterior(batch.image_index, batch.flipped)
        else:
            mean, std = self.encoder.posterior(batch.pixels)
        latents = self.encoder.sample(mean, std, torch.randn(mean.shape, generator=g))
        captions = batch.captions
        extra = self.method.extra_examples(g, bs, self.encoder)
        if extra is not None:
            latents = torch.cat([latents, extra[0]])
            captions = captions + extra[1]
        noise = torch.randn(latents.shape, generator=g).to(self.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),), generator=g)
        t = t.to(self.device)
        pred, target = self.forward(latents, noise, t, self.forward.condition(captions))
        mask = batch.mask.to(self.device) if batch.mask is not None else None
        loss = self.method.loss(pred, target, mask, bs)

        self.optimizer.zero_grad(set_to_none=True)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad.detach().float().norm() for p in self.method.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
        clip = self.cfg["method"].get("max_grad_norm")
        if clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), float(clip))
        self.scaler.step(self.optimizer)  # skips the update when the scaled gradients hold an inf or NaN
        self.scaler.update()
        skipped = None if scale is None else not math.isfinite(grad_norm)
        return Update(float(loss.detach()), None if skipped else grad_norm, scale, skipped)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------------ L_det --
    def eval_batch(self, ldet_cfg: dict) -> EvalBatch:
        key = ldet_variant(ldet_cfg)
        if key not in self.eval_batches:
            self.eval_batches[key] = EvalBatch(ldet_cfg, self.data, self.encoder, self.forward,
                                               self.cfg["seed"] + int(ldet_cfg["seed_offset"]), self.latent_shape)
        return self.eval_batches[key]

    def ldet(self, ldet_cfg: dict | None = None) -> dict[str, float]:
        """L_det (and its interval variants) of the current weights on the variant's batch."""
        batch = self.eval_batch(ldet_cfg or self.cfg["ldet"])
        return batch.loss()

    # ------------------------------------------------------------------------------------ state --
    def state(self) -> dict:
        """Everything the trajectory needs to continue bit for bit from this point."""
        return {"weights": self.method.trainable_state(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
                "eval_generators": {k: b.generator.get_state() for k, b in self.eval_batches.items()},
                "rng": rng_states(self.device)}

    def reset(self) -> None:
        """Back to step 0: the initial weights, a fresh optimizer and generators, no eval batches yet."""
        self.load_state(self.initial)
        self.eval_batches = {}

    def load_state(self, state: dict) -> None:
        self.method.load_trainable_state(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        set_rng_states(state["rng"], self.device)
        for key, g_state in state["eval_generators"].items():
            self.eval_batch(json.loads(key)).generator.set_state(g_state)
