"""DreamBooth-LoRA: peft LoRA on the UNet attention projections + the concept token (reference §1.2).

The UNet base weights stay frozen (the official code computed and discarded their gradients), and
the LoRA init is seeded from the run seed (the official code's was not).
"""

import tempfile
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from benchmark.engine.methods.base import Method, save_weights

LORA_FILE = "pytorch_lora_weights.safetensors"


class DreamBoothLoRA(Method):
    def setup_extra(self) -> None:
        lora = self.cfg["lora"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.backbone.unet.add_adapter(LoraConfig(
                r=int(lora["rank"]), lora_alpha=float(lora["alpha"]), init_lora_weights="gaussian",
                target_modules=list(lora["target_modules"]),
            ))
        for name, p in self.backbone.unet.named_parameters():
            if "lora_" in name:
                self.trainables[f"unet.{name}"] = p

    def save_extra(self, folder: Path, metadata: dict[str, str]) -> None:
        """diffusers' LoRA file, with the adapter config (rank, alpha, targets) that `load_lora_weights`
        reads back, then our metadata added beside diffusers' own keys. diffusers 0.42 has no place
        for the token in a Stable Diffusion LoRA file (its pivotal-tuning scripts also write the
        embedding to a file of its own), so the token stays in learned_embeds.safetensors. diffusers
        writes into a temporary folder; the file is then written like every other (save_weights)."""
        unet = self.backbone.unet
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
        # A set (target_modules) is listed in an order that changes from one process to the next.
        adapter = {k: sorted(v) if isinstance(v, set) else v for k, v in unet.peft_config["default"].to_dict().items()}
        with tempfile.TemporaryDirectory(dir=folder, prefix=".", suffix=".tmp") as tmp:
            self.backbone.pipeline_class().save_lora_weights(tmp, unet_lora_layers=layers, weight_name=LORA_FILE,
                                                             safe_serialization=True, unet_lora_adapter_metadata=adapter)
            with safe_open(Path(tmp) / LORA_FILE, "pt") as f:
                own = f.metadata() or {}
            tensors = load_file(Path(tmp) / LORA_FILE)
        save_weights(folder / LORA_FILE, tensors, {**own, **metadata})

    @classmethod
    def apply_extra(cls, pipe, folder: Path) -> None:
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE)
