"""Does the toy model follow its prompts? Measured with the toy CLIP, as the issue defines it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.toy import world


@torch.no_grad()
def prompt_following(pipe, clip, preprocess, clip_tokenizer, seed: int, n: int = 64, distractors: int = 4,
                     steps: int = 25, guidance: float = 2.0) -> dict:
    """Share of generated images for which the toy CLIP picks the prompt among `distractors` captions
    of other random scenes (chance: 1 / (distractors + 1))."""
    rng = np.random.default_rng(seed)
    scenes = [world.random_scene(rng) for _ in range(n)]
    prompts = [s.caption() for s in scenes]
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(0, n, 16):
        images += pipe(prompts[i:i + 16], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                       height=32, width=32, output_type="pil").images
    img = F.normalize(clip.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
    right = 0
    for k, scene in enumerate(scenes):
        options = [prompts[k]] + [world.random_scene(rng).caption() for _ in range(distractors)]
        txt = F.normalize(clip.encode_text(clip_tokenizer(options)), dim=-1)
        right += int((img[k] @ txt.T).argmax() == 0)
    return {"prompt_following": right / n, "n_images": n, "distractors": distractors, "chance": 1 / (distractors + 1)}
