"""The real CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

OpenAI's CLIP vocabulary is: the 256 byte characters, the same with `</w>`, one token per BPE merge
(the first 48,894 lines after the header), then <|startoftext|> and <|endoftext|> (49,408 tokens).
The result encodes plain text to the same ids as open_clip's tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """The byte → printable-character table of GPT-2 / CLIP byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def open_clip_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("open_clip_torch is not installed; it ships the CLIP BPE vocabulary")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(folder: Path) -> Path:
    """Write vocab.json + merges.txt for `CLIPTokenizer.from_pretrained(folder)`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(open_clip_bpe_file()).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


# What makes the vocabulary files a Stable Diffusion tokenizer (SD v1.5's tokenizer_config.json says the same).
TOKENIZER_CONFIG = {"tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 77}


def build_clip_tokenizer(folder: Path):
    from transformers import (
        CLIPTokenizer,  # transformers: the tokenizer's own BPE is torch-free
    )

    if not (folder / "vocab.json").exists():
        write_clip_tokenizer_files(folder)
    # from_pretrained(folder): the transformers-5 keyword constructor silently ignores vocab_file=.
    kwargs = {k: v for k, v in TOKENIZER_CONFIG.items() if k != "tokenizer_class"}
    return CLIPTokenizer.from_pretrained(str(folder), **kwargs)


def save_clip_tokenizer(folder: Path) -> Path:
    """A `tokenizer/` folder of a diffusers pipeline that plain `CLIPTokenizer.from_pretrained` (and
    so `StableDiffusionPipeline.from_pretrained`) loads as exactly the tokenizer above: vocab.json +
    merges.txt + tokenizer_config.json, 1.5 MB (transformers' own save writes a 3.6 MB tokenizer.json)."""
    write_clip_tokenizer_files(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=1, sort_keys=True) + "\n")
    return folder
