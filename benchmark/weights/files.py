"""Which weight files a run config loads and where each library looks for them.

- SD v1.x (`model.pretrained` a hub id): the files diffusers and transformers read for the
  tokenizer, text encoder, VAE, UNet and scheduler at the pinned `model.revision` (the safety
  checker is never loaded), in the Hugging Face hub cache.
- CLIP (`metrics.clip.pretrained` an open_clip tag): the checkpoint open_clip asks the hub for.
- DINO (`metrics.dino.pretrained: true`): the checkpoint timm asks the hub for.
- LPIPS-alex (`metrics.lpips.pretrained_backbone: true`): torchvision's ImageNet AlexNet, in the
  torch hub cache.

Models built from config (`model.build`) and local folders or files need nothing fetched. The
caches follow the libraries' own variables: HF_HOME / HF_HUB_CACHE and TORCH_HOME.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import ENDPOINT, HF_HUB_CACHE

from benchmark.core.provenance import project_path

SD_COMPONENT_FILES = (
    "model_index.json", "scheduler/scheduler_config.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "text_encoder/config.json", "vae/config.json", "unet/config.json",
)
SD_WEIGHT_FILES = ("text_encoder/model{v}.safetensors", "vae/diffusion_pytorch_model{v}.safetensors",
                   "unet/diffusion_pytorch_model{v}.safetensors")


@dataclass(frozen=True)
class WeightFile:
    what: str                  # what loads it, for messages ("model sd15", "metrics.clip", ...)
    filename: str              # path inside the hub repository, or the file name of a URL
    url: str                   # where it is downloaded from
    repo: str | None = None    # hub repository; None for a plain URL
    revision: str | None = None  # pinned commit; None: the branch the library asks for (main)
    local: str | None = None   # a file the config names directly (no download: it must be there)
    fallback: str | None = None  # another file of the repo the library accepts instead
    key: str | None = None     # the config key that can point at a local copy instead

    @property
    def label(self) -> str:
        if self.repo:
            return f"{self.repo}@{(self.revision or 'main')[:7]}/{self.filename}"
        return self.local or self.filename

    def cached(self) -> Path | None:
        """Where the file is on this machine, or None."""
        if self.local:
            return Path(self.local) if Path(self.local).is_file() else None
        if self.repo:
            for name in (self.filename, self.fallback):
                found = name and try_to_load_from_cache(self.repo, name, revision=self.revision)
                if isinstance(found, str):
                    return Path(found)
            return None
        path = torch_hub_dir() / "checkpoints" / self.filename
        return path if path.is_file() else None

    def destination(self) -> str:
        """Where a copy must go for the libraries to find it (for messages)."""
        if self.local:
            return self.local
        if self.repo:
            folder = Path(HF_HUB_CACHE) / f"models--{self.repo.replace('/', '--')}"
            if self.revision:
                return str(folder / "snapshots" / self.revision / self.filename)
            return f"{folder}/ (the whole folder, with refs/ and snapshots/, as `fetch` leaves it)"
        return str(torch_hub_dir() / "checkpoints" / self.filename)

    def sha256_prefix(self) -> str | None:
        """torchvision names its checkpoints <name>-<first hex digits of the SHA-256>.pth."""
        match = re.search(r"-([0-9a-f]{8,64})\.pth?$", self.filename) if not self.repo else None
        return match.group(1) if match else None


def torch_hub_dir() -> Path:
    import torch.hub  # torch: listing a config's files loads no model library

    return Path(torch.hub.get_dir())


def hub_url(repo: str, revision: str | None, filename: str) -> str:
    return f"{ENDPOINT}/{repo}/resolve/{revision or 'main'}/{filename}"


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def model_files(model_cfg: dict) -> list[WeightFile]:
    source = model_cfg.get("pretrained")
    if not source or model_cfg.get("build") or project_path(str(source)).is_dir() or _looks_like_path(str(source)):
        return []  # built from config, or a local folder (checked when it loads)
    revision = model_cfg.get("revision")
    variant = f".{model_cfg['variant']}" if model_cfg.get("variant") else ""
    names = [*SD_COMPONENT_FILES, *(f.format(v=variant) for f in SD_WEIGHT_FILES)]
    return [WeightFile(f"model {model_cfg['name']}", name, hub_url(source, revision, name), repo=source,
                       revision=revision, key="model.pretrained (a diffusers folder)") for name in names]


def clip_files(clip_cfg: dict) -> list[WeightFile]:
    tag = clip_cfg.get("pretrained")
    if not tag:
        return []
    if _looks_like_path(str(tag)) or project_path(str(tag)).exists():
        local = str(project_path(str(tag)))
        return [WeightFile("metrics.clip.pretrained", Path(local).name, "", local=local)]
    import open_clip  # torch: listing a config's files loads no model library

    pcfg = open_clip.get_pretrained_cfg(clip_cfg["arch"], tag)
    if not pcfg:
        return []  # an unknown tag: open_clip's own error names the tags when the model loads
    if pcfg.get("hf_hub"):
        repo, name = pcfg["hf_hub"].rstrip("/"), None
        if repo.count("/") > 1:
            repo, name = pcfg["hf_hub"].rsplit("/", 1)
        filename = name or "open_clip_model.safetensors"
        return [WeightFile("metrics.clip", filename, hub_url(repo, None, filename), repo=repo,
                           fallback=None if name else "open_clip_pytorch_model.bin", key="metrics.clip.pretrained")]
    url = pcfg["url"]
    return [WeightFile("metrics.clip", url.rsplit("/", 1)[1], url, key="metrics.clip.pretrained")]


def dino_files(dino_cfg: dict) -> list[WeightFile]:
    if dino_cfg.get("checkpoint"):
        local = str(project_path(dino_cfg["checkpoint"]))
        return [WeightFile("metrics.dino.checkpoint", Path(local).name, "", local=local)]
    if not dino_cfg.get("pretrained"):
        return []
    import timm  # torch: listing a config's files loads no model library

    pcfg = timm.models.get_pretrained_cfg(dino_cfg["arch"])
    repo = pcfg.hf_hub_id if pcfg else None
    if not repo:
        return []
    return [WeightFile("metrics.dino", "model.safetensors", hub_url(repo, None, "model.safetensors"), repo=repo,
                       fallback="pytorch_model.bin", key="metrics.dino.checkpoint")]


def lpips_files(lpips_cfg: dict) -> list[WeightFile]:
    if not lpips_cfg.get("pretrained_backbone"):
        return []  # the linear heads ship inside the lpips wheel
    import torchvision  # torch: listing a config's files loads no model library

    weights = {"alex": torchvision.models.AlexNet_Weights, "vgg": torchvision.models.VGG16_Weights,
               "squeeze": torchvision.models.SqueezeNet1_1_Weights}[lpips_cfg["net"]]
    url = weights.IMAGENET1K_V1.url
    return [WeightFile("metrics.lpips", url.rsplit("/", 1)[1], url)]


def required_files(cfg: dict) -> list[WeightFile]:
    """Every pretrained file a run of `cfg` loads, in load order."""
    metrics = cfg["metrics"]
    return [*model_files(cfg["model"]), *clip_files(metrics["clip"]), *dino_files(metrics["dino"]),
            *lpips_files(metrics["lpips"])]


def distinct(cfgs: list[dict], key: str) -> list[dict]:
    """One config per distinct value of its `key` section."""
    seen = {json.dumps(c[key], sort_keys=True): c for c in cfgs}
    return list(seen.values())


def required(cfgs: list[dict]) -> list[WeightFile]:
    """The files of every distinct model and metrics config among `cfgs`."""
    return list(dict.fromkeys(f for c in distinct(cfgs, "model") + distinct(cfgs, "metrics") for f in required_files(c)))
