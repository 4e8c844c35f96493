"""The libraries' caches filled by hand with the real-shape twins, as a user fills them on a machine
without network: the SD v1.5 files at the pinned revision in the Hugging Face hub layout, the CLIP
and DINO checkpoints where open_clip and timm look for them, AlexNet where torchvision does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

TOKENIZER_CONFIG = {  # SD v1.5's tokenizer/tokenizer_config.json, the keys that matter
    "model_max_length": 77, "do_lower_case": True, "errors": "replace", "pad_token": "<|endoftext|>",
    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
}
SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>"}
FAKE_COMMIT = "0" * 39 + "1"


def hub_env(root: Path) -> dict[str, str]:
    """Environment variables that point the libraries at caches under `root`."""
    return {"HF_HUB_CACHE": str(root / "hub"), "TORCH_HOME": str(root / "torch"), "HF_HUB_OFFLINE": "1"}


def _put_blob(snapshot: Path, name: str, source: Path) -> None:
    """A hub-cache file: the bytes in blobs/<sha256>, a relative symlink in the snapshot."""
    repo = snapshot.parents[1]
    digest = hashlib.file_digest(open(source, "rb"), "sha256").hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        shutil.copyfile(source, blob)
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def fill_sd(root: Path, files, twin: Path) -> None:
    """The SD files `files` names, from the built twin folder (big files linked, not copied)."""
    from benchmark.engine.tokenizer import write_clip_tokenizer_files

    tok = root / "_tokenizer"
    write_clip_tokenizer_files(tok)
    (tok / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    (tok / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS))
    for f in files:
        dest = root / "hub" / f"models--{f.repo.replace('/', '--')}" / "snapshots" / f.revision / f.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = tok / Path(f.filename).name if f.filename.startswith("tokenizer/") else twin / f.filename
        dest.unlink(missing_ok=True)
        if source.stat().st_size > 1 << 20:
            dest.symlink_to(source)  # copied by hand: no blob, nothing states a hash
        else:
            shutil.copyfile(source, dest)


def fill_metrics(root: Path, metrics_cfg: dict, files) -> None:
    """CLIP and DINO twins saved as open_clip / timm checkpoints, AlexNet as torchvision's file."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from benchmark.engine.metrics import MetricModels

    models = MetricModels(metrics_cfg, root / "_dvar", torch.device("cpu"))
    states = {"metrics.clip": models.clip.state_dict(), "metrics.dino": models.dino.state_dict()}
    for f in files:
        if f.what in states:
            repo = root / "hub" / f"models--{f.repo.replace('/', '--')}"
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / "main").write_text(FAKE_COMMIT)
            tmp = root / "_state.safetensors"
            save_file({k: v.contiguous() for k, v in states[f.what].items()}, str(tmp))
            _put_blob(repo / "snapshots" / FAKE_COMMIT, f.filename, tmp)
        elif f.what == "metrics.lpips":
            dest = root / "torch" / "hub" / "checkpoints" / f.filename
            dest.parent.mkdir(parents=True, exist_ok=True)
            torch.save(torchvision.models.alexnet().state_dict(), dest)
