"""A method from outside the package, as a researcher would add one: this file and its conf
(tests/conf/method/conv_out_bias.yaml, found through DVAR_CONF_PATH) and nothing else.

It trains the concept token (every method does) and the bias of the UNet's output convolution: four
numbers that shift the predicted noise per latent channel. Small, but real training."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmark.engine.methods.base import Method, save_weights

BIAS_FILE = "conv_out_bias.safetensors"


class ConvOutBias(Method):
    def setup_extra(self) -> None:
        self.trainables["unet.conv_out.bias"] = self.backbone.unet.conv_out.bias

    def save_extra(self, folder: Path, metadata: dict[str, str]) -> None:
        bias = self.trainables["unet.conv_out.bias"].detach().float().cpu().contiguous()
        save_weights(folder / BIAS_FILE, {"conv_out.bias": bias}, metadata)

    @classmethod
    def apply_extra(cls, pipe, folder: Path) -> None:
        with torch.no_grad():
            pipe.unet.conv_out.bias.copy_(load_file(str(folder / BIAS_FILE))["conv_out.bias"])
