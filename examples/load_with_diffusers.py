"""Sample from a base model plus a dvar-bench run's trained weights with plain diffusers.

Needs only torch and diffusers (and safetensors, which diffusers installs); it does not import the
benchmark. WEIGHTS is a run's weights folder (`weights_dir` of its `runs` row: weights/best or
weights/final), written for every method as:

  learned_embeds.safetensors                      {token: embedding}, all methods
  pytorch_lora_weights.safetensors                DreamBooth-LoRA: diffusers' LoRA file
  pytorch_custom_diffusion_weights.safetensors    Custom Diffusion: diffusers' Custom Diffusion keys

Each file's safetensors metadata names the method, the token, how prompts name the concept
(`subject`; "{}" in a prompt stands for it), the base model, the run id and the step.

With the run's sampling seed, steps and guidance, the images equal the run's own samples: image i
starts from the i-th latent of one `torch.randn` draw seeded with --seed, as the benchmark samples.
A run trained with mixed_precision=fp16 or bf16 sampled in that precision (half weights, autocast):
pass the same --dtype to get its very images.

    python examples/load_with_diffusers.py benchmark/toy/weights/pipeline \\
        results/work/default/<run_id>/weights/best --prompt "a photo of {} on a navy background" \\
        --seed 37 --steps 25 --guidance 7.5 --out samples/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TOKEN_FILE = "learned_embeds.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
CUSTOM_DIFFUSION_FILE = "pytorch_custom_diffusion_weights.safetensors"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_custom_diffusion(unet, path: Path) -> int:
    """Install trained Custom Diffusion K/V processors. diffusers 0.42's `unet.load_attn_procs`
    installs nothing here (diffusers issue #9320), so build the processors from the file directly."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
    from safetensors.torch import load_file

    weights = load_file(str(path))
    processors, names = dict(unet.attn_processors), {key.rsplit(".", 2)[0] for key in weights}
    for name in names:  # "<layer>.processor"
        own = {key[len(name) + 1:]: value for key, value in weights.items() if key.startswith(name + ".")}
        k = own["to_k_custom_diffusion.weight"]
        proc = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out="to_q_custom_diffusion.weight" in own,
                                               hidden_size=k.shape[0], cross_attention_dim=k.shape[1])
        proc.load_state_dict(own)
        processors[name] = proc.to(unet.device, unet.dtype)
    unet.set_attn_processor(processors)
    return len(names)


def load_weights(pipe, folder: Path) -> dict[str, str]:
    """Load a run's weights folder into `pipe`; returns the metadata of its token file."""
    from safetensors import safe_open

    with safe_open(str(folder / TOKEN_FILE), "pt") as f:
        metadata = f.metadata() or {}
    pipe.load_textual_inversion(str(folder), weight_name=TOKEN_FILE)  # all methods: the concept token
    if (folder / LORA_FILE).exists():  # DreamBooth-LoRA
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE)
    if (folder / CUSTOM_DIFFUSION_FILE).exists():  # Custom Diffusion
        load_custom_diffusion(pipe.unet, folder / CUSTOM_DIFFUSION_FILE)
    return metadata


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", help="base model: a diffusers Stable Diffusion folder or hub id")
    p.add_argument("weights", type=Path, help="a run's weights folder (weights/best or weights/final)")
    p.add_argument("--prompt", action="append", default=[], help="repeatable; '{}' is replaced by the subject")
    p.add_argument("--prompts-file", type=Path, help="a JSON list of prompts, after any --prompt")
    p.add_argument("--out", type=Path, required=True, help="folder for 000.png, 001.png, ...")
    p.add_argument("--seed", type=int, default=37, help="the benchmark's sampling.seed (default %(default)s)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=16, help="images per pipeline call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="weights and autocast precision: the run's mixed_precision (default %(default)s)")
    args = p.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    dtype = DTYPES[args.dtype]
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False,
                                                   torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    metadata = load_weights(pipe, args.weights)
    pipe.to(args.device)
    print(json.dumps(metadata, indent=1, sort_keys=True))

    prompts = list(args.prompt) + (json.loads(args.prompts_file.read_text()) if args.prompts_file else [])
    prompts = [prompt.replace("{}", metadata.get("subject", "{}")) for prompt in prompts]
    if not prompts:
        p.error("give at least one --prompt or --prompts-file")
    side = pipe.unet.config.sample_size
    latents = torch.randn((len(prompts), pipe.unet.config.in_channels, side, side),
                          generator=torch.Generator().manual_seed(args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(prompts), args.batch_size):
        with torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32):
            images = pipe(prompt=prompts[i:i + args.batch_size],
                          latents=latents[i:i + args.batch_size].to(args.device, dtype),
                          num_inference_steps=args.steps, guidance_scale=args.guidance).images
        for j, image in enumerate(images):
            image.save(args.out / f"{i + j:03d}.png")
    print(f"{len(prompts)} images in {args.out}")


if __name__ == "__main__":
    main()
