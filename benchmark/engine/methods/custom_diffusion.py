"""Custom Diffusion: cross-attention K/V + the concept token, with prior preservation (reference §1.3).

Trained through diffusers' `CustomDiffusionAttnProcessor2_0` on the cross-attention layers (it also
blocks the gradient through the start-of-text position, as the original does). Weights are saved in
the diffusers Custom Diffusion format (keys `<layer>.processor.to_{k,v}_custom_diffusion.weight`) and
re-installed with public APIs only: in diffusers 0.42.1 `unet.load_attn_procs` installs nothing
without its private `_pipeline` argument (issue #9320), and with it refuses any file that lacks the
self-attention processors, which safetensors cannot store (diffusers' own `save_attn_procs` drops
them too). README, "Using the trained weights", has the few plain-diffusers lines that load them.
"""

from pathlib import Path

import torch
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
from safetensors.torch import load_file

from benchmark.engine.class_images import class_images
from benchmark.engine.data import ClassData
from benchmark.engine.methods.base import Method, save_weights

CD_FILE = "pytorch_custom_diffusion_weights.safetensors"


def install_processors(unet, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.nn.Module]:
    """Put K/V-training processors on every cross-attention layer; return them by processor name.

    Without `weights` they start from the layer's own to_k / to_v; with `weights` (diffusers format,
    keys `<layer>.processor.to_k_custom_diffusion.weight`) they take the trained values.
    """
    processors, trained = dict(unet.attn_processors), {}
    for name in processors:
        if not name.endswith("attn2.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        proc = CustomDiffusionAttnProcessor2_0(
            train_kv=True, train_q_out=False, hidden_size=attn.to_k.out_features,
            cross_attention_dim=attn.to_k.in_features,
        ).to(attn.to_k.weight.device)
        source = {"k": attn.to_k.weight, "v": attn.to_v.weight} if weights is None else \
            {c: weights[f"{name}.to_{c}_custom_diffusion.weight"] for c in "kv"}
        with torch.no_grad():
            proc.to_k_custom_diffusion.weight.copy_(source["k"])
            proc.to_v_custom_diffusion.weight.copy_(source["v"])
        processors[name] = trained[name] = proc
    unet.set_attn_processor(processors)
    return trained


class CustomDiffusion(Method):
    def prepare(self, make_sampler, cache_dir, sampling, progress) -> None:
        """Class images come from the base model (or a folder), before the K/V processors go in."""
        images, captions = class_images(self.cfg["prior"], self.concept.class_noun, self.backbone, make_sampler,
                                        cache_dir, sampling, progress=progress)
        self.class_data = ClassData(images, captions, self.backbone.resolution)

    def extra_examples(self, g, batch_size, encoder):
        """Prior preservation: a batch of class images with their captions, encoded by the VAE."""
        pixels, captions = self.class_data.sample(g, batch_size)
        mean, std = encoder.posterior(pixels)
        return encoder.sample(mean, std, torch.randn(mean.shape, generator=g)), captions

    def setup_extra(self) -> None:
        for name, proc in install_processors(self.backbone.unet).items():
            for pname, p in proc.named_parameters():
                self.trainables[f"{name}.{pname}"] = p

    @property
    def subject(self) -> str:
        return f"{self.placeholder} {self.concept.class_noun}"

    def loss(self, pred, target, mask, n_instance):
        """Masked instance loss + prior loss (weight from config), as in the original:
        the instance term sums over the mask-weighted elements and divides by the mask's pixel count
        (a 1-channel mask against 4 latent channels), the prior term is a plain mean."""
        pred, target = pred.float(), target.float()
        err = (pred[:n_instance] - target[:n_instance]) ** 2
        # Without random rescale there is no mask: the whole image counts, on the same scale.
        m = mask.to(err.dtype) if mask is not None else torch.ones_like(err[:, :1])
        instance = ((err * m).sum([1, 2, 3]) / m.sum([1, 2, 3])).mean()
        prior = torch.nn.functional.mse_loss(pred[n_instance:], target[n_instance:])
        return instance + float(self.cfg["prior"]["weight"]) * prior

    def save_extra(self, folder: Path, metadata: dict[str, str]) -> None:
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.trainables.items() if k != "token"}
        save_weights(folder / CD_FILE, state, metadata)

    @classmethod
    def apply_extra(cls, pipe, folder: Path) -> None:
        install_processors(pipe.unet, load_file(str(folder / CD_FILE)))
        pipe.unet.to(pipe.device)
