"""The diffusion objective, and the fixed evaluation batch on which L_det is computed.

The diffusion forward (encode the captions, noise the latents, predict with the UNet, the target) is
`DiffusionForward`, the one place both the training loss (benchmark.engine.trajectory) and L_det
call. L_det (paper eq. 4) is the training loss evaluated on inputs drawn once: images (with their
augmentation), captions, one VAE posterior sample, one noise tensor and distinct timesteps. Each of
these five sources can instead be redrawn at every evaluation (the paper's §3.2 / Fig. 5 ablation).
All draws come from the batch's own generator, so computing L_det never touches the training RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.engine.data import ConceptData

SOURCES = ("images", "captions", "latents", "noise", "timesteps")
INTERVALS = {"begin": (0, 333), "middle": (333, 666), "end": (666, 1000)}


class LatentEncoder:
    """VAE posterior per training example; cached per (image, flip) when the augmentation allows."""

    def __init__(self, vae, data: ConceptData, device: torch.device, dtype: torch.dtype):
        self.vae, self.device, self.dtype = vae, device, dtype
        self.scaling = float(vae.config.scaling_factor)
        self.cache = None
        if data.cacheable:
            variants = torch.cat([data.pixels, data.pixels.flip(-1)])  # rows: image i, then flipped
            self.cache = self.posterior(variants)

    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior, computed in chunks to bound memory."""
        means, stds = [], []
        for chunk in pixels.split(8):
            dist = self.vae.encode(chunk.to(self.device, self.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)

    def cached_posterior(self, index: torch.Tensor, flipped: torch.Tensor):
        rows = index + flipped.long() * (len(self.cache[0]) // 2)
        return self.cache[0][rows.to(self.cache[0].device)], self.cache[1][rows.to(self.cache[1].device)]

    def sample(self, mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """A posterior sample z = mean + std * eps, scaled as SD expects."""
        return (mean + std * eps.to(mean.device)) * self.scaling


def diffusion_target(scheduler, latents, noise, timesteps):
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind}")


class DiffusionForward:
    """The diffusion forward on the live modules, written once: the training loss and L_det are
    this prediction and target, reduced their own way (the method's loss; L_det's mean squared error).

    The base model is reached only through its interface (benchmark.engine.backbone.Backbone:
    `encode_prompt` gives the UNet's text conditioning), so another model family changes nothing here.
    The text encoder and UNet run under the precision's autocast; noising and the target stay fp32."""

    def __init__(self, backbone, scheduler, device: torch.device, autocast, dtype: torch.dtype):
        self.backbone, self.scheduler, self.device = backbone, scheduler, device
        self.autocast, self.dtype = autocast, dtype

    def condition(self, captions: list[str]) -> dict:
        """The UNet's keyword arguments for `captions` (encoder hidden states, and what else the model needs)."""
        with self.autocast():
            return self.backbone.encode_prompt(captions, self.device)

    def __call__(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                 condition: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(UNet prediction, target) for `latents` noised with `noise` at `timesteps`, all on the device."""
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with self.autocast():
            pred = self.backbone.unet(noisy.to(self.dtype), timesteps, **condition).sample
        return pred, diffusion_target(self.scheduler, latents, noise, timesteps)


@dataclass
class EvalDraw:
    """One evaluation's inputs, split into `accumulation` passes of `size` items."""

    image_index: torch.Tensor   # (n,)
    flipped: torch.Tensor       # (n,)
    pixels: torch.Tensor        # (n, 3, R, R)
    captions: list[str]
    latent_eps: torch.Tensor    # (n, 4, h, w) posterior noise
    noise: torch.Tensor         # (n, 4, h, w) diffusion noise
    timesteps: torch.Tensor     # (n,)
    interval_timesteps: dict[str, torch.Tensor]  # name -> (n,)


class EvalBatch:
    """The fixed (or partly resampled) evaluation batch and L_det."""

    def __init__(self, cfg, data: ConceptData, encoder: LatentEncoder, forward: DiffusionForward, seed: int,
                 latent_shape: tuple[int, int, int]):
        self.size, self.accumulation = int(cfg["batch_size"]), int(cfg["accumulation"])
        self.forward_batch = int(cfg.get("forward_batch") or 0)
        self.n = self.size * self.accumulation
        self.fixed = {s: bool(cfg["fixed"][s]) for s in SOURCES}
        self.lo, self.hi = (int(v) for v in cfg["timestep_range"])
        self.intervals = bool(cfg.get("intervals", False))
        self.data, self.encoder, self.forward = data, encoder, forward
        self.latent_shape = latent_shape
        self.generator = torch.Generator().manual_seed(int(seed))
        self._image_cursor = 0
        self.first = self._draw(fresh=set(SOURCES))
        self._cache: dict = {}

    # --- drawing -------------------------------------------------------------------------------
    def _draw(self, fresh: set[str], base: EvalDraw | None = None) -> EvalDraw:
        """Draw the sources in `fresh` anew (always in the same order), reuse the rest from `base`."""
        g, n = self.generator, self.n
        if "images" in fresh:
            # Cycle through a random permutation so that every image appears before any repeats.
            perm = torch.cat([torch.randperm(len(self.data), generator=g) for _ in range(-(-n // len(self.data)))])
            index = perm[:n]
            flipped = torch.rand(n, generator=g) < self.data.flip_p
            examples = [self.data.example(int(i), bool(f), g) for i, f in zip(index, flipped)]
            pixels = torch.stack([p for p, _, _ in examples])
            aug_captions = [c for _, c, _ in examples]
        else:
            index, flipped, pixels, aug_captions = base.image_index, base.flipped, base.pixels, base.captions
        if self.data.image_captions:
            captions = list(aug_captions)  # a caption belongs to its image: it follows the images source
        elif "captions" not in fresh:
            captions = base.captions
        elif self.data.caption_mode == "instance":
            captions = list(aug_captions)
        else:
            captions = [self.data.caption(g) for _ in aug_captions]
        latent_eps = torch.randn((n, *self.latent_shape), generator=g) if "latents" in fresh else base.latent_eps
        noise = torch.randn((n, *self.latent_shape), generator=g) if "noise" in fresh else base.noise
        if "timesteps" in fresh:
            timesteps = self.lo + torch.randperm(self.hi - self.lo, generator=g)[:n]
            intervals = {k: lo + torch.randperm(hi - lo, generator=g)[:n] for k, (lo, hi) in INTERVALS.items()} \
                if self.intervals else {}
        else:
            timesteps, intervals = base.timesteps, base.interval_timesteps
        return EvalDraw(index, flipped, pixels, captions, latent_eps, noise, timesteps, intervals)

    def next_draw(self) -> EvalDraw:
        """The inputs of the next evaluation: fixed sources as first drawn, the others anew."""
        fresh = {s for s in SOURCES if not self.fixed[s]}
        return self.first if not fresh else self._draw(fresh, base=self.first)

    # --- loss ----------------------------------------------------------------------------------
    def _latents(self, draw: EvalDraw) -> torch.Tensor:
        """Scaled latents of the draw; computed once for the first draw (reused while fixed)."""
        if draw is self.first and "z" in self._cache:
            return self._cache["z"]
        if self.encoder.cache is not None:
            mean, std = self.encoder.cached_posterior(draw.image_index, draw.flipped)
        else:
            mean, std = self.encoder.posterior(draw.pixels)
        z = self.encoder.sample(mean, std, draw.latent_eps)
        if draw is self.first:
            self._cache["z"] = z
        return z

    @torch.inference_mode()
    def loss(self) -> dict[str, float]:
        """L_det (and the interval losses) of the current weights: the mean squared error over all
        `size x accumulation` items, which equals the mean of the per-pass means. Items go through
        the models `forward_batch` at a time (a speed knob; the value does not depend on it)."""
        draw = self.next_draw()
        device = self.forward.device
        z = self._latents(draw).to(device)
        noise = draw.noise.to(device, z.dtype)
        columns = {"l_det": draw.timesteps}
        columns.update({f"l_det_{k}": t for k, t in draw.interval_timesteps.items()})
        sums = dict.fromkeys(columns, 0.0)
        chunk = max(self.size, self.forward_batch)
        for start in range(0, self.n, chunk):
            part = slice(start, min(self.n, start + chunk))
            condition = self.forward.condition(draw.captions[part])
            for name, ts in columns.items():
                pred, target = self.forward(z[part], noise[part], ts[part].to(device), condition)
                sums[name] += F.mse_loss(pred.float(), target.float(), reduction="sum").item()
        return {k: v / z.numel() for k, v in sums.items()}
