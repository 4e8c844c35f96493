"""CLIP img / CLIP txt / DINO / DIV through open_clip, timm and lpips.

The same code builds the paper's models (`metrics=real`: OpenAI CLIP ViT-B/32, DINO ViT-S/16,
LPIPS-alex) and their random-weight twins (`metrics=tiny`); only the config differs.

Definitions (recorded in the run config as `metrics.pairing` and `metrics.text_subject`):
- CLIP img: cosine similarity of CLIP image embeddings between generated and reference images,
  averaged over all pairs (`all_pairs`, the standard TI reconstruction score) or over the pairs
  (gen j, ref j mod n) (`index`, the official DVAR code).
- CLIP txt: cosine similarity between each image and its own prompt, with the placeholder removed
  (official) or replaced by the class noun.
- DINO: all-pairs cosine similarity of DINO CLS features, train-prompt samples vs references.
- DIV: mean LPIPS distance between samples of the same validation prompt (DreamBooth's definition).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import warnings
from functools import lru_cache
from pathlib import Path

import lpips
import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.core.checksums import verify_shipped
from benchmark.core.errors import ConfigError
from benchmark.core.provenance import project_path
from benchmark.store.runs import write_text_atomic


@contextlib.contextmanager
def _quiet_root_logger(quiet: bool):
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class MetricModels:
    def __init__(self, cfg: dict, cache_dir: Path, device: torch.device):
        self.cfg, self.device = cfg, device
        clip_cfg, dino_cfg, lpips_cfg = cfg["clip"], cfg["dino"], cfg["lpips"]
        if clip_cfg.get("config_file"):
            clip_cfg = {**clip_cfg, "config": json.loads(project_path(clip_cfg["config_file"]).read_text())}
        if clip_cfg.get("config"):
            folder = Path(cache_dir).expanduser() / "open_clip_configs"
            folder.mkdir(parents=True, exist_ok=True)
            # atomically: another worker's open_clip may be reading the folder right now
            write_text_atomic(folder / f"{clip_cfg['arch']}.json", json.dumps(clip_cfg["config"]))
            open_clip.add_model_config(folder)
        clip_weights = clip_cfg.get("pretrained")
        if clip_weights and project_path(clip_weights).exists():
            clip_weights = str(project_path(clip_weights))
            verify_shipped(Path(clip_weights))
        dino_kwargs = dict(dino_cfg.get("kwargs") or {})
        if dino_cfg.get("checkpoint"):  # local weights through timm's own loading path
            dino_kwargs["pretrained_cfg_overlay"] = {"file": str(project_path(dino_cfg["checkpoint"]))}
        # Random-weight twins are initialised from a fixed seed, without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            try:
                with _quiet_root_logger(not clip_weights):  # "No pretrained weights loaded"
                    self.clip, _, self.clip_preprocess = open_clip.create_model_and_transforms(
                        clip_cfg["arch"], pretrained=clip_weights)
                self.dino = timm.create_model(dino_cfg["arch"], pretrained=bool(dino_cfg["pretrained"]),
                                              num_classes=0, **dino_kwargs)
            except RuntimeError as err:
                raise ConfigError(
                    f"metrics: could not load the metric weights ({err}). Offline machines need the weights "
                    "in the local cache (or a local checkpoint path in metrics.clip.pretrained); "
                    "metrics=tiny needs none."
                ) from err
            with warnings.catch_warnings():  # lpips still calls torchvision's deprecated `pretrained=`
                warnings.simplefilter("ignore", UserWarning)
                self.lpips = lpips.LPIPS(net=lpips_cfg["net"], pretrained=True,
                                         pnet_rand=not bool(lpips_cfg["pretrained_backbone"]), verbose=False)
        self.clip_tokenizer = open_clip.get_tokenizer(clip_cfg["arch"])
        data_cfg = timm.data.resolve_data_config({}, model=self.dino)
        if hasattr(self.dino, "patch_embed"):  # a resized twin: the pretrained config says 224 px
            data_cfg["input_size"] = (3, *self.dino.patch_embed.img_size)
        self.dino_preprocess = timm.data.create_transform(**data_cfg)
        for m in (self.clip, self.dino, self.lpips):
            m.to(device).eval().requires_grad_(False)

    @torch.inference_mode()
    def clip_images(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.clip_preprocess(im) for im in images]).to(self.device)
        return F.normalize(self.clip.encode_image(x).float(), dim=-1)

    @torch.inference_mode()
    def clip_texts(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(self.clip_tokenizer(texts).to(self.device)).float(), dim=-1)

    @torch.inference_mode()
    def dino_features(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.dino_preprocess(im) for im in images]).to(self.device)
        return F.normalize(self.dino(x).float(), dim=-1)

    @torch.inference_mode()
    def lpips_distance(self, a: Image.Image, b: Image.Image) -> float:
        def t(im):
            return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        if a.size != b.size:
            b = b.resize(a.size, Image.BICUBIC)
        return float(self.lpips(t(a).to(self.device), t(b).to(self.device)).mean())


@lru_cache(maxsize=2)
def _cached_models(cfg_json: str, cache_dir: str, device: str) -> MetricModels:
    return MetricModels(json.loads(cfg_json), Path(cache_dir), torch.device(device))


def get_metric_models(cfg: dict, cache_dir: Path, device: torch.device) -> MetricModels:
    """Metric models are frozen, so one instance serves every run of a process."""
    return _cached_models(json.dumps(cfg, sort_keys=True), str(cache_dir), str(device))


def _pair_mean(gen: torch.Tensor, ref: torch.Tensor, pairing: str) -> float:
    if pairing == "all_pairs":
        return float((gen @ ref.T).mean())
    idx = torch.arange(len(gen)) % len(ref)
    return float((gen * ref[idx]).sum(-1).mean())


def text_for_clip(prompt: str, placeholder: str, class_noun: str, mode: str) -> str:
    """The prompt as CLIP-txt scores it: the placeholder removed (official) or the class noun."""
    text = prompt.replace(placeholder, class_noun if mode == "class_noun" else "")
    return " ".join(text.split())


def score(models: MetricModels, references: list[Image.Image], train_images: list[Image.Image],
          train_texts: list[str], val_images: list[Image.Image], val_texts: list[str],
          val_groups: list[int], pairing: str) -> dict[str, float]:
    """All five metrics (plus train CLIP txt) for one evaluation."""
    ref_clip = models.clip_images(references)
    out: dict[str, float] = {}
    train_clip = models.clip_images(train_images)
    out["train_clip_img"] = _pair_mean(train_clip, ref_clip, pairing)
    out["train_clip_txt"] = float((train_clip * models.clip_texts(train_texts)).sum(-1).mean())
    out["dino"] = _pair_mean(models.dino_features(train_images), models.dino_features(references), pairing)
    if val_images:
        val_clip = models.clip_images(val_images)
        out["val_clip_img"] = _pair_mean(val_clip, ref_clip, pairing)
        out["val_clip_txt"] = float((val_clip * models.clip_texts(val_texts)).sum(-1).mean())
        groups: dict[int, list[Image.Image]] = {}
        for g, im in zip(val_groups, val_images):
            groups.setdefault(g, []).append(im)
        dists = [models.lpips_distance(a, b) for ims in groups.values() for a, b in itertools.combinations(ims, 2)]
        out["div"] = float(np.mean(dists)) if dists else float("nan")
    else:
        out.update(val_clip_img=float("nan"), val_clip_txt=float("nan"), div=float("nan"))
    return out
