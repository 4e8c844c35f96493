"""The tiny backbone is SD-shaped, deterministic and cached; real configs load through the same path."""

import hashlib

import pytest
import torch

from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import load_backbone, resolve_pretrained
from benchmark.engine.tokenizer import build_clip_tokenizer
from benchmark.protocol.config import cache_root
from tests.helpers import compose


def state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_tiny_is_deterministic_from_its_seed(tmp_path):
    cfg = compose(["model=tiny"])["model"]
    a = load_backbone(cfg, tmp_path / "a")
    b = load_backbone(cfg, tmp_path / "b")
    assert state_hash(a.unet) == state_hash(b.unet) and state_hash(a.text_encoder) == state_hash(b.text_encoder)
    other = load_backbone({**cfg, "build": {**cfg["build"], "seed": 1}}, tmp_path / "a")
    assert state_hash(other.unet) != state_hash(a.unet)
    assert len(list((tmp_path / "a" / "models").iterdir())) == 2, "one cached folder per build config"


def test_tiny_is_sd_shaped(tmp_path):
    bb = load_backbone(compose(["model=tiny"])["model"], tmp_path)
    assert bb.vae_scale == 8
    assert len(bb.tokenizer) == 49408
    assert bb.text_encoder.config.vocab_size == 49408
    assert bb.unet.config.cross_attention_dim == bb.text_encoder.config.hidden_size
    latents = bb.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_sd15_config_loads_a_local_folder_through_the_same_path(tmp_path):
    """model=sd15 with a local diffusers folder (here the cached tiny build) loads like a hub id would."""
    folder, _ = resolve_pretrained(compose(["model=tiny"])["model"], cache_root(compose([])))
    cfg = compose(["model=sd15", f"model.pretrained={folder}", "model.resolution=64"])["model"]
    bb = load_backbone(cfg, tmp_path)
    assert bb.identity.startswith(folder) and bb.vae_scale == 8


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    cfg = compose(["model=sd15", "model.pretrained=someone/not-a-model"])["model"]
    with pytest.raises(ConfigError, match="model.pretrained=someone/not-a-model: could not load"):
        load_backbone(cfg, tmp_path)


def test_missing_local_folder_is_a_clear_error(tmp_path):
    cfg = compose(["model=sd15", f"model.pretrained={tmp_path}/nope"])["model"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone(cfg, tmp_path)


def test_tokenizer_matches_open_clip(tmp_path):
    import open_clip

    ours = build_clip_tokenizer(tmp_path / "tok")
    theirs = open_clip.get_tokenizer("ViT-B-32")
    for text in ["a photo of a ktn cat", "Ukiyo-e painting of {} 🐱!", "  two   spaces, and digits 12345 "]:
        ids = ours(text).input_ids
        assert ids == theirs([text])[0][: len(ids)].tolist()
    assert ours.convert_tokens_to_ids("ktn") == 42170  # the official initializer: a sub-word BPE token
