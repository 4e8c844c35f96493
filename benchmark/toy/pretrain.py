"""`python -m benchmark.toy.pretrain`: train the toy world's models from scratch on the CPU.

Trains, in order, from seeded synthetic data (benchmark/toy/world.py):
1. a VAE (diffusers AutoencoderKL, x4: 32 px images -> 4 x 8 x 8 latents),
2. a text encoder (transformers CLIPTextModel, the real CLIP BPE tokenizer) jointly with a UNet
   (diffusers UNet2DConditionModel) on the diffusion loss (v-prediction, zero-terminal-SNR betas:
   see TOY_SCHEDULER), captions dropped 10 % of the time so classifier-free guidance works,
3. the metric models: an open_clip image/text pair trained contrastively (toy CLIP img / txt) and
   a timm ViT trained to recognise the scene attributes (the DINO stand-in).

The result is an SD-shaped pipeline folder, tokenizer included (loaded by `model=toy` like any
diffusers checkpoint, and by plain `StableDiffusionPipeline.from_pretrained`)
plus the metric weights (`metrics=toy`), written with SHA-256 sums and a report of the quality
checks. The shipped weights in benchmark/toy/weights/ come from `--scale full` with the default
seed; `--scale quick` trains for a few minutes, `--scale smoke` only checks the procedure (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.core.checksums import write_sums
from benchmark.engine.objective import diffusion_target
from benchmark.engine.tokenizer import build_clip_tokenizer, save_clip_tokenizer
from benchmark.toy import world
from benchmark.toy.checks import prompt_following

WEIGHTS_DIR = Path(__file__).with_name("weights")
FULL = {
    "seed": 0, "resolution": 32, "n_images": 30000,
    "vae": {"channels": [16, 32, 32], "groups": 8, "steps": 800, "batch": 32, "lr": 2e-3, "kl": 1e-6},
    "text": {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64},
    "unet": {"channels": [32, 64], "layers_per_block": 1, "head_dim": 4, "steps": 6000, "batch": 32, "lr": 1e-3,
             "uncond": 0.1},
    "clip": {"steps": 2000, "batch": 128, "lr": 1e-3,
             "model": {"embed_dim": 64,
                       "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "patch_size": 4, "head_width": 32},
                       "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}},
    "features": {"steps": 1200, "batch": 128, "lr": 1e-3, "arch": "vit_tiny_patch16_224",
                 "kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 3, "num_heads": 2}},
}
# Stable Diffusion's betas rescaled to zero terminal SNR, with v-prediction (Lin et al. 2024, "Common
# Diffusion Noise Schedules and Sample Steps are Flawed"). With SD v1.5's own schedule, 7 % of the
# latent survives at t=999; the toy images are mostly flat background, so the UNet learned to read
# the background colour from that leak instead of the caption, and samples from pure noise got
# random colours (prompt following at chance). Sampled with DDIM, trailing timesteps.
TOY_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, steps_offset=1, clip_sample=False, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="trailing",
)
SCALES = {  # steps per part and number of images, for scales other than full
    "quick": ({"vae": 150, "unet": 300, "clip": 150, "features": 100}, 4000),
    "smoke": ({"vae": 2, "unet": 2, "clip": 2, "features": 2}, 64),  # checks the procedure, not the model
}
ATTRIBUTES = (("shape", world.SHAPES), ("color", tuple(world.COLORS)), ("pattern", world.PATTERNS),
              ("size", tuple(world.SIZES)), ("position", tuple(world.POSITIONS)), ("background", tuple(world.BACKGROUNDS)))


def config(scale: str, seed: int) -> dict:
    cfg = json.loads(json.dumps(FULL))
    cfg["seed"] = seed
    if scale != "full":
        steps, cfg["n_images"] = SCALES[scale]
        for part, n in steps.items():
            cfg[part]["steps"] = n
    return cfg


def batches(n: int, batch: int, steps: int, g: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=g)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def log(msg: str) -> None:
    print(f"[toy] {msg}", flush=True)


def train_vae(pixels: torch.Tensor, cfg: dict, g: torch.Generator):
    c = cfg["vae"]
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=c["channels"],
                        layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * len(c["channels"]),
                        up_block_types=["UpDecoderBlock2D"] * len(c["channels"]), norm_num_groups=c["groups"],
                        sample_size=cfg["resolution"], mid_block_add_attention=False)
    opt = torch.optim.AdamW(vae.parameters(), lr=c["lr"], weight_decay=0.0)
    for i, idx in enumerate(batches(len(pixels), c["batch"], c["steps"], g)):
        x = pixels[idx]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        recon = vae.decode(z).sample
        kl = dist.kl().mean() / np.prod(dist.mean.shape[1:])
        loss = F.mse_loss(recon, x) + c["kl"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == c["steps"] - 1:
            log(f"vae step {i} recon {F.mse_loss(recon, x).item():.4f}")
    vae.eval().requires_grad_(False)
    standardize_latents(vae, pixels[:2048])
    return vae


@torch.no_grad()
def standardize_latents(vae, pixels: torch.Tensor) -> None:
    """Fold a per-channel shift and scale into the VAE's 1x1 quant convolutions so its latents
    have mean 0 and std 1 per channel; reconstructions do not change. Stable Diffusion pipelines
    only divide by `scaling_factor`, and sampling starts from zero-mean noise, so an offset latent
    mean would bias every sample (the toy VAE's channel means are near +-0.8 otherwise)."""
    mean = vae.encode(pixels).latent_dist.mean
    mu, sigma = mean.mean((0, 2, 3)), mean.std((0, 2, 3))
    c = len(mu)
    q = vae.quant_conv  # moments = q(h): the first c channels are the posterior mean, then log-variances
    q.weight[:c] /= sigma[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mu) / sigma
    q.bias[c:] -= 2 * torch.log(sigma)  # the log-variance scales with sigma^2
    p = vae.post_quant_conv  # decoder input z_old = sigma * z_new + mu
    p.bias += (p.weight[:, :, 0, 0] @ mu)
    p.weight *= sigma[None, :, None, None]
    vae.register_to_config(scaling_factor=1.0)


def train_denoiser(pixels: torch.Tensor, captions: list[str], vae, tokenizer, cfg: dict, g: torch.Generator):
    t, u = cfg["text"], cfg["unet"]
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=t["hidden"], intermediate_size=t["intermediate"],
        num_attention_heads=t["heads"], num_hidden_layers=t["layers"], max_position_embeddings=77,
        projection_dim=t["hidden"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scale = 2 ** (len(cfg["vae"]["channels"]) - 1)
    unet = UNet2DConditionModel(
        block_out_channels=tuple(u["channels"]), layers_per_block=u["layers_per_block"],
        sample_size=cfg["resolution"] // scale, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * len(u["channels"]),
        up_block_types=("CrossAttnUpBlock2D",) * len(u["channels"]), cross_attention_dim=t["hidden"],
        attention_head_dim=u["head_dim"], norm_num_groups=32)
    scheduler = DDPMScheduler.from_config(DDIMScheduler(**TOY_SCHEDULER).config)
    with torch.no_grad():
        dist = [vae.encode(chunk).latent_dist for chunk in pixels.split(512)]
        mean, std = torch.cat([d.mean for d in dist]), torch.cat([d.std for d in dist])
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=u["lr"], weight_decay=1e-2)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=u["lr"], total_steps=u["steps"], pct_start=0.05)
    sf = vae.config.scaling_factor
    for i, idx in enumerate(batches(len(pixels), u["batch"], u["steps"], g)):
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * sf
        noise = torch.randn(z.shape, generator=g)
        ts = torch.randint(0, 1000, (len(idx),), generator=g)
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(len(idx), generator=g) < u["uncond"]] = empty[0]
        pred = unet(scheduler.add_noise(z, noise, ts), ts, text_encoder(batch_ids)[0]).sample
        loss = F.mse_loss(pred, diffusion_target(scheduler, z, noise, ts))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr.step()
        if i % 250 == 0 or i == u["steps"] - 1:
            log(f"unet step {i} loss {loss.item():.4f}")
    return text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)


def train_clip(images: np.ndarray, captions: list[str], cfg: dict, g: torch.Generator, folder: Path):
    c = cfg["clip"]
    (folder / "dvar-toy-clip.json").write_text(json.dumps(c["model"]))
    open_clip.add_model_config(folder)
    model, _, preprocess = open_clip.create_model_and_transforms("dvar-toy-clip", pretrained=None)
    tokenizer = open_clip.get_tokenizer("dvar-toy-clip")

    x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    tokens = tokenizer(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=0.05)
    for i, idx in enumerate(batches(len(x), c["batch"], c["steps"], g)):
        img, txt, scale = model(x[idx], tokens[idx])
        logits = scale * img @ txt.T
        # Several images of a batch may share a caption: every matching caption counts as right.
        same = torch.tensor([[captions[a] == captions[b] for b in idx.tolist()] for a in idx.tolist()]).float()
        target = same / same.sum(1, keepdim=True)
        loss = (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 500 == 0 or i == c["steps"] - 1:
            log(f"clip step {i} loss {loss.item():.4f}")
    return model.eval().requires_grad_(False), preprocess, tokenizer


def train_features(images: np.ndarray, scenes: list[world.Scene], cfg: dict, g: torch.Generator):
    c = cfg["features"]
    sizes = [len(values) for _, values in ATTRIBUTES]
    model = timm.create_model(c["arch"], pretrained=False, num_classes=sum(sizes), **c["kwargs"])
    data_cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = torch.tensor(data_cfg["mean"])[:, None, None], torch.tensor(data_cfg["std"])[:, None, None]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    labels = torch.tensor([[values.index(getattr(s, name)) for name, values in ATTRIBUTES] for s in scenes])
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=0.05)
    for i, idx in enumerate(batches(len(x), c["batch"], c["steps"], g)):
        logits = model(x[idx]).split(sizes, dim=1)
        loss = sum(F.cross_entropy(lg, labels[idx, k]) for k, lg in enumerate(logits)) / len(sizes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 500 == 0 or i == c["steps"] - 1:
            log(f"features step {i} loss {loss.item():.4f}")
    return model.eval()


def pretrain(out: Path, scale: str = "full", seed: int = 0) -> dict:
    """Train everything into `out` (written atomically); returns the report."""
    cfg = config(scale, seed)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    times = {}
    t0 = time.perf_counter()
    images, captions, scenes = world.dataset(cfg["n_images"], seed, cfg["resolution"])
    pixels = to_pixels(images)
    times["data_s"] = time.perf_counter() - t0
    tokenizer = build_clip_tokenizer(tmp / "_bpe")
    t = time.perf_counter()
    vae = train_vae(pixels, cfg, g)
    times["vae_s"] = time.perf_counter() - t
    t = time.perf_counter()
    text_encoder, unet = train_denoiser(pixels, captions, vae, tokenizer, cfg, g)
    times["unet_s"] = time.perf_counter() - t
    t = time.perf_counter()
    clip, preprocess, clip_tokenizer = train_clip(images, captions, cfg, g, tmp)
    times["clip_s"] = time.perf_counter() - t
    t = time.perf_counter()
    features = train_features(images, scenes, cfg, g)
    times["features_s"] = time.perf_counter() - t

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**TOY_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp / "pipeline")
    # The tokenizer as vocab.json + merges.txt (1.5 MB, not transformers' 3.6 MB tokenizer.json), so
    # that plain `StableDiffusionPipeline.from_pretrained(pipeline)` loads the complete model.
    shutil.rmtree(tmp / "pipeline" / "tokenizer")
    save_clip_tokenizer(tmp / "pipeline" / "tokenizer")
    shutil.rmtree(tmp / "_bpe")
    torch.save(clip.state_dict(), tmp / "clip.pt")
    save_file({k: v.contiguous() for k, v in features.state_dict().items()}, str(tmp / "features.safetensors"))
    pipe.set_progress_bar_config(disable=True)
    checks = prompt_following(pipe, clip, preprocess, clip_tokenizer, seed=seed + 1, n=64 if scale != "smoke" else 4,
                              steps=25 if scale != "smoke" else 2)
    report = {"scale": scale, "seed": seed, "config": cfg, "times": times,
              "total_s": time.perf_counter() - t0, "checks": checks,
              "versions": {"torch": torch.__version__}}
    (tmp / "report.json").write_text(json.dumps(report, indent=1))
    write_sums(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"done in {report['total_s'] / 60:.1f} min: {json.dumps(checks)}")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmark.toy.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="default: %(default)s (the shipped weights)")
    p.add_argument("--scale", choices=["full", "quick", "smoke"], default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pretrain(args.out, args.scale, args.seed)


if __name__ == "__main__":
    main()
