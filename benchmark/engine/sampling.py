"""Image generation for evaluation, on the live (training) modules.

The initial latents of every image are drawn from a generator re-seeded before each evaluation, so
every checkpoint is sampled from the same noise, and the images do not depend on how prompts are
chunked into pipeline calls.
"""

from __future__ import annotations

import inspect

import diffusers
import torch
from PIL import Image

from benchmark.core.errors import ConfigError
from benchmark.core.registry import unknown_name_error
from benchmark.protocol.config import SCHEDULERS


def make_scheduler(name: str, config: dict):
    if name not in SCHEDULERS:
        raise unknown_name_error("sampling scheduler", name, SCHEDULERS, key="sampling.scheduler")
    cls = getattr(diffusers, SCHEDULERS[name])
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in inspect.signature(cls).parameters:
        # It would silently sample with SD's original betas, not the ones the model was trained on.
        raise ConfigError(f"sampling.scheduler={name}: {cls.__name__} cannot use this model's zero-terminal-SNR "
                          "noise schedule; set sampling.scheduler=ddim (or dpm).")
    return cls.from_config(config)


class Sampler:
    def __init__(self, backbone, cfg, device: torch.device, autocast):
        self.cfg, self.device, self.autocast = cfg, device, autocast
        self.pipe = backbone.pipeline(make_scheduler(cfg["scheduler"], backbone.scheduler_config))
        self.pipe.set_progress_bar_config(disable=True)
        self.latent_size = backbone.resolution // backbone.vae_scale
        self.channels = backbone.unet.config.in_channels

    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> list[Image.Image]:
        """One image per prompt: by default all from one generator seeded with `sampling.seed`;
        with `seeds`, image i from its own seed (resumable generation of class images)."""
        shape = (self.channels, self.latent_size, self.latent_size)
        if seeds is None:
            g = torch.Generator().manual_seed(int(self.cfg["seed"]))
            latents = torch.randn((len(prompts), *shape), generator=g)
        else:
            latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                                   for s in seeds])
        images: list[Image.Image] = []
        step = max(1, int(self.cfg["batch_size"]))
        dtype = next(self.pipe.unet.parameters()).dtype
        for i in range(0, len(prompts), step):
            with self.autocast():
                out = self.pipe(
                    prompt=prompts[i:i + step], latents=latents[i:i + step].to(self.device, dtype),
                    num_inference_steps=int(self.cfg["steps"]), guidance_scale=float(self.cfg["guidance"]),
                    output_type="pil",
                )
            images.extend(out.images)
        return images
