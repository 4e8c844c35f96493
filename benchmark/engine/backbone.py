"""The base model a run trains and samples with, behind one interface (`Backbone`).

`model.pretrained` names a hub id or a local folder in the diffusers layout (SD v1.5 by default).
`model.build` (model=tiny, model=sd15_twin) builds an SD-shaped backbone with random weights from
its component configs, saves it in that same layout under the cache and then loads it through the
very same code path, so the tiny, the real-shape twin and the real runs differ only in config.

Everything model-family specific sits in `Backbone`: which components it loads and with which
classes, how captions become the UNet's conditioning, which diffusers pipeline samples from it. The
loop, the objective and the sampler call only that interface, so another family (SDXL: two
tokenizers and text encoders, pooled embeddings, size conditioning) is a subclass plus a model config
naming it (`backbone: module:Class`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.core import plugins
from benchmark.core.checksums import verify_shipped
from benchmark.core.errors import ConfigError
from benchmark.core.provenance import project_path
from benchmark.engine.tokenizer import build_clip_tokenizer

SD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True, prediction_type="epsilon",
)


@dataclass
class Backbone:
    """Stable Diffusion 1.x / 2.x: one CLIP tokenizer and text encoder, a VAE, a UNet conditioned on
    the text encoder's last hidden states."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler_config: dict      # the checkpoint's scheduler config (training noise + samplers)
    identity: str               # stable name of the weights (cache keys, provenance)
    resolution: int

    # (library, class) per component, loaded from the subfolder of that name; MODULES are the torch ones.
    COMPONENTS: ClassVar[dict[str, tuple[str, str]]] = {
        "tokenizer": ("transformers", "CLIPTokenizer"), "text_encoder": ("transformers", "CLIPTextModel"),
        "vae": ("diffusers", "AutoencoderKL"), "unet": ("diffusers", "UNet2DConditionModel")}
    MODULES: ClassVar[tuple[str, ...]] = ("text_encoder", "vae", "unet")
    PIPELINE: ClassVar[tuple[str, str]] = ("diffusers", "StableDiffusionPipeline")

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def load_components(cls, source: str, kw: dict, weights_kw: dict, cache_dir: Path) -> dict:
        """The components from a diffusers folder or hub id (`kw`: revision and offline flag; weights
        also take the variant)."""
        loaded = {}
        for name, (library, class_name) in cls.COMPONENTS.items():
            if name == "tokenizer" and Path(source).is_dir() and not (Path(source) / "tokenizer").is_dir():
                # A folder without tokenizer files (toy weights from before they shipped theirs): CLIP's own BPE.

                loaded[name] = build_clip_tokenizer(cache_dir / "clip_bpe_tokenizer")
                continue
            loader = getattr(importlib.import_module(library), class_name)
            loaded[name] = loader.from_pretrained(source, subfolder=name, **(kw if name == "tokenizer" else weights_kw))
        return loaded

    @classmethod
    def pipeline_class(cls):
        """The diffusers pipeline class of this family (sampling, and the methods' LoRA file format)."""
        library, class_name = cls.PIPELINE
        return getattr(importlib.import_module(library), class_name)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_prompt(self, captions: list[str], device: torch.device) -> dict:
        """The UNet's text conditioning of `captions`, as its keyword arguments."""
        return {"encoder_hidden_states": self.text_encoder(self.tokenize(captions).to(device))[0]}

    def pipeline(self, scheduler):
        """A diffusers pipeline on the live modules (no copies), for sampling."""
        return self.pipeline_class()(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )


def backbone_class(model_cfg) -> type[Backbone]:
    """The model family's interface: `model.backbone` (module:Class) or Stable Diffusion's."""
    if not model_cfg.get("backbone"):
        return Backbone
    cls = plugins.load(model_cfg["backbone"], "model.backbone")
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ConfigError(f"model.backbone={model_cfg['backbone']} is not a subclass of "
                          "benchmark.engine.backbone.Backbone; name the model family's class.")
    return cls


def _versions_key() -> str:
    return f"torch{torch.__version__}-diffusers{diffusers.__version__}-transformers{transformers.__version__}"


def build_identity(build_cfg: dict) -> str:
    blob = json.dumps({"build": build_cfg, "versions": _versions_key()}, sort_keys=True)
    return "built-" + hashlib.sha1(blob.encode()).hexdigest()[:10]


def quiet_libraries() -> None:
    """No per-shard progress bars from the model libraries: our own bar and log lines report."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def build_pipeline(build_cfg: dict, folder: Path, resolution: int) -> Path:
    """Build an SD-shaped pipeline with random weights, deterministically from `build_cfg` (the
    component configs, as in a checkpoint's config.json files), and save it to `folder` in the
    diffusers layout. The tiny backbone and the real-shape twin of SD v1.5 are both built here."""
    quiet_libraries()
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_clip_tokenizer(tmp / "_bpe")
    text_cfg = {"vocab_size": len(tokenizer), "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                **build_cfg["text_encoder"]}
    vae_cfg = dict(build_cfg["vae"])
    n_vae = len(vae_cfg["block_out_channels"])
    vae_cfg = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": resolution,
               "down_block_types": ["DownEncoderBlock2D"] * n_vae, "up_block_types": ["UpDecoderBlock2D"] * n_vae,
               **vae_cfg}
    unet_cfg = {"in_channels": 4, "out_channels": 4, "sample_size": resolution // 2 ** (n_vae - 1),
                "cross_attention_dim": text_cfg["hidden_size"], **build_cfg["unet"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(build_cfg["seed"]))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        vae = AutoencoderKL(**vae_cfg)
        unet = UNet2DConditionModel(**unet_cfg)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp)
    shutil.rmtree(tmp / "_bpe")
    (tmp / "build_config.json").write_text(json.dumps(build_cfg, indent=1, sort_keys=True))
    try:
        os.replace(tmp, folder)  # atomic: a killed build never leaves a half-written model behind
    except OSError:  # another process finished the same build first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def built_folder(model_cfg, cache_dir: Path) -> tuple[Path, str]:
    """(folder, identity) of a model built from `model.build`, whether built yet or not."""
    ident = build_identity(dict(model_cfg["build"]))
    return Path(cache_dir).expanduser() / "models" / f"{ident}-{model_cfg['resolution']}px", ident


def resolve_pretrained(model_cfg, cache_dir: Path) -> tuple[str, str]:
    """(path or hub id, identity) for a model config; builds and caches a `model.build` model."""
    if model_cfg.get("pretrained"):
        source = str(model_cfg["pretrained"])
        if project_path(source).is_dir():
            source = str(project_path(source))
            verify_shipped(Path(source))
        if source.startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
            raise ConfigError(
                f"model.pretrained: folder {source} does not exist. Give a diffusers Stable Diffusion "
                "folder (with unet/, vae/, text_encoder/, tokenizer/) or a hub id."
            )
        ident = f"{source}@{model_cfg.get('revision') or 'main'}"
        return str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source, ident
    if not model_cfg.get("build"):
        raise ConfigError("model: set either model.pretrained (hub id or folder) or model.build (component configs).")
    folder, ident = built_folder(model_cfg, cache_dir)
    if not (folder / "model_index.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_pipeline(dict(model_cfg["build"]), folder, int(model_cfg["resolution"]))
    return str(folder), ident


_PRISTINE: dict[str, Backbone] = {}
_FROZEN: dict[tuple[str, str, torch.dtype], torch.nn.Module] = {}  # (pristine key, component, dtype) -> cast copy


def load_backbone(model_cfg, cache_dir: Path, share: bool = False, device=None, dtype=None,
                  modifies: tuple[str, ...] | None = None, placeholder: str | None = None) -> Backbone:
    """Load the components, frozen, on `device` (CPU by default). The components a method changes
    (`modifies`) come in full precision, so that the method takes its trainable weights from the
    fp32 pretrained values (`cast_frozen` then lowers the rest); the others come in `dtype` (fp32 by
    default). With `share`, keep a pristine fp32 copy per (weights, device) in memory and hand out a
    backbone whose `modifies` components are deep copies of it and the rest one shared copy in
    `dtype`, so a local sweep loads and moves the weights once. The tokenizer, the costliest to
    copy, is copied once per `placeholder` token a run adds to it. `modifies` defaults to every component."""
    cls = backbone_class(model_cfg)
    modifies = tuple(cls.COMPONENTS) if modifies is None else modifies
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    source, ident = resolve_pretrained(model_cfg, cache_dir)
    key = f"{cls.__name__}|{ident}|{model_cfg.get('variant')}|{device}"
    if share and key in _PRISTINE:
        return _handed_out(key, modifies, placeholder, dtype)
    quiet_libraries()
    kw = dict(revision=model_cfg.get("revision"), local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    weights_kw = dict(kw, variant=model_cfg.get("variant"))
    try:
        components = cls.load_components(source, kw, weights_kw, cache_dir)
        scheduler_config = _scheduler_config(source, kw)
    except OSError as err:
        raise ConfigError(
            f"model.pretrained={source}: could not load the {cls.__name__} components ({err}). "
            "Offline machines need a local folder (diffusers layout) or a filled HF cache; "
            "model=tiny needs neither."
        ) from err
    components = {k: v.float() if k in cls.MODULES else v for k, v in components.items()}
    backbone = cls(**components, scheduler_config=scheduler_config, identity=ident,
                   resolution=int(model_cfg["resolution"]))
    for name in cls.MODULES:
        getattr(backbone, name).requires_grad_(False).eval().to(device)
    if share:
        _PRISTINE[key] = backbone
        return _handed_out(key, modifies, placeholder, dtype)
    for name in cls.MODULES:
        if name not in modifies:
            _lower(getattr(backbone, name), dtype)
    return backbone


def cast_frozen(backbone: Backbone, dtype: torch.dtype, trainable: list[torch.nn.Parameter]) -> None:
    """Lower every frozen weight of the backbone to `dtype` (half precision under mixed precision),
    keeping the `trainable` parameters as they are: fp32 master weights, taken from the fp32
    pretrained values before anything was cast."""
    if dtype == torch.float32:
        return
    kept = [(p, p.data) for p in trainable]
    for name in backbone.MODULES:
        _lower(getattr(backbone, name), dtype)
    for p, data in kept:
        p.data = data


def _lower(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(dtype)` without diffusers' notice that SD's UNet and VAE have no fp32-only modules."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)


_TOKENIZERS: dict[tuple[str, str], object] = {}  # (pristine key, placeholder) -> tokenizer with that token


def _handed_out(key: str, modifies: tuple[str, ...], placeholder: str | None, dtype: torch.dtype) -> Backbone:
    pristine = _PRISTINE[key]
    fresh = {name: copy.deepcopy(getattr(pristine, name), _shared_parts(getattr(pristine, name)))
             for name in modifies if not (name == "tokenizer" and placeholder)}
    for name in pristine.MODULES:
        if name not in modifies and dtype != torch.float32:
            if (key, name, dtype) not in _FROZEN:
                _FROZEN[(key, name, dtype)] = _lower(copy.deepcopy(getattr(pristine, name)), dtype)
            fresh[name] = _FROZEN[(key, name, dtype)]
    if placeholder and "tokenizer" in modifies:
        if (key, placeholder) not in _TOKENIZERS:
            tokenizer = copy.deepcopy(pristine.tokenizer, _shared_parts(pristine.tokenizer))
            tokenizer.add_tokens(placeholder)
            _TOKENIZERS[(key, placeholder)] = tokenizer
        fresh["tokenizer"] = _TOKENIZERS[(key, placeholder)]
    return dataclasses.replace(pristine, **fresh)


def _shared_parts(component) -> dict:
    """A deepcopy memo that keeps the tokenizer's BPE merge list (49k tuples, never changed by
    adding a token) shared: copying it was most of a shared run's setup."""
    merges = getattr(component, "_merges", None)
    return {id(merges): merges} if isinstance(merges, list) else {}


def _scheduler_config(source: str, kw: dict) -> dict:
    return dict(PNDMScheduler.load_config(source, subfolder="scheduler", **kw))
