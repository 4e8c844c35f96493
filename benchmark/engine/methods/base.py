"""What every method shares: the trained concept token, the plugin interface, loading a plugin.

All three methods train one new token embedding (the official code's `SplitEmbedding` idea): the
frozen vocabulary stays untouched and only the new rows are parameters, so no gradient or optimizer
state is ever allocated for the 49,408-row table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from benchmark.core import plugins
from benchmark.core.errors import ConfigError
from benchmark.store.records import atomic_file

TOKEN_FILE = "learned_embeds.safetensors"


class TrainableTokens(torch.nn.Module):
    """A token embedding whose ids >= the base vocabulary size map to trainable rows."""

    def __init__(self, base: torch.nn.Embedding, init: torch.Tensor):
        super().__init__()
        self.base = base
        self.vocab = base.num_embeddings
        self.rows = torch.nn.Parameter(init.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:  # for code that reads the embedding matrix (e.g. dtype checks)
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_new = (ids >= self.vocab)[..., None]
        base = self.base(ids.clamp(max=self.vocab - 1))
        new = F.embedding((ids - self.vocab).clamp(min=0), self.rows.to(base.dtype))
        return torch.where(is_new, new, base)


def add_placeholder_token(tokenizer, text_encoder, placeholder: str, initializer: str) -> TrainableTokens:
    """Add `placeholder` to the tokenizer (unless a shared backbone handed it out with the token
    already added, as its first new token) and give it a trainable embedding initialised from
    `initializer` (looked up as a raw BPE token first, like the official code's "ktn", then as text)."""
    vocab = text_encoder.get_input_embeddings().num_embeddings
    if placeholder not in tokenizer.get_added_vocab():
        tokenizer.add_tokens(placeholder)
    if tokenizer.convert_tokens_to_ids(placeholder) != vocab:
        raise ConfigError(
            f"method.placeholder_token '{placeholder}' is already a word of the tokenizer; choose a new string."
        )
    init_id = tokenizer.convert_tokens_to_ids(initializer)
    if init_id is None or init_id == tokenizer.unk_token_id:
        ids = tokenizer.encode(initializer, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(
                f"method.initializer_token '{initializer}' is {len(ids)} tokens; use a single-token word."
            )
        init_id = ids[0]
    embeddings = text_encoder.get_input_embeddings()
    tokens = TrainableTokens(embeddings, embeddings.weight[init_id][None])
    text_encoder.set_input_embeddings(tokens)
    return tokens


class Method:
    """A personalization method: what is trained, its loss, and how its weights are saved/applied.

    A subclass in a file of its own plus its conf (`plugin: module:Class`) is a new method: the loop,
    the records, the estimate and the tables know methods only by the conf's `name`."""

    modifies = ("tokenizer", "text_encoder", "unet")  # backbone parts it changes (a shared backbone copies them)

    def __init__(self, cfg, backbone, concept, placeholder: str, seed: int):
        self.cfg, self.backbone, self.concept = cfg, backbone, concept
        self.placeholder = placeholder
        self.seed = seed
        self.tokens: TrainableTokens | None = None
        self.trainables: dict[str, torch.nn.Parameter] = {}

    # --- setup ---------------------------------------------------------------------------------
    def prepare(self, make_sampler, cache_dir: Path, sampling: dict, progress: bool) -> None:
        """Data the method takes from the *base* model before `setup` changes it (none here)."""

    def setup(self) -> None:
        """Add the concept token (all methods), then the method's own trainable parts."""
        # null in the config: the concept's own initializer from the manifest (e.g. its class noun)
        initializer = self.cfg["initializer_token"] or self.concept.initializer_token
        self.tokens = add_placeholder_token(self.backbone.tokenizer, self.backbone.text_encoder,
                                            self.placeholder, initializer)
        self.trainables["token"] = self.tokens.rows
        self.setup_extra()
        for p in self.trainables.values():
            p.requires_grad_(True)

    def setup_extra(self) -> None:
        """Method-specific trainable parts (none for Textual Inversion)."""

    @property
    def subject(self) -> str:
        """How prompts name the concept."""
        return self.placeholder

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.trainables.values())

    # --- training ------------------------------------------------------------------------------
    def extra_examples(self, g: torch.Generator, batch_size: int, encoder) -> tuple[torch.Tensor, list[str]] | None:
        """(latents, captions) appended to every training batch, drawn from `g`; None here."""
        return None

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, n_instance: int):
        return F.mse_loss(pred.float(), target.float())

    # --- state ---------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A detached fp32 CPU copy of the trained weights (best checkpoint, resume)."""
        return {k: p.detach().float().cpu().clone() for k, p in self.trainables.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.trainables) ^ set(state)
        if missing:
            raise ValueError(f"trainable state does not match the method: {sorted(missing)}")
        with torch.no_grad():
            for k, p in self.trainables.items():
                p.copy_(state[k].to(p.device, p.dtype))

    # --- export --------------------------------------------------------------------------------
    def metadata(self, provenance: dict) -> dict[str, str]:
        """The safetensors metadata of every file `save` writes: the method, its token and how
        prompts name the concept, plus `provenance` (run id, step, base model; benchmark.engine.observer)."""
        meta = {"format": "pt", "method": self.cfg["name"], "token": self.placeholder, "subject": self.subject}
        meta.update({k: "" if v is None else str(v) for k, v in provenance.items()})
        return meta

    def save(self, folder: Path, provenance: dict) -> None:
        """Write the trained weights as safetensors in formats diffusers pipelines load (README,
        "Using the trained weights"): the token as {token: embedding} in learned_embeds.safetensors
        (`pipe.load_textual_inversion(folder)`), then the method's own file. Every file carries
        `metadata(provenance)`."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = self.metadata(provenance)
        save_weights(folder / TOKEN_FILE, {self.placeholder: self.tokens.rows.detach().float().cpu().contiguous()}, meta)
        self.save_extra(folder, meta)

    def save_extra(self, folder: Path, metadata: dict[str, str]) -> None:
        pass

    @classmethod
    def apply(cls, pipe, folder: Path, placeholder: str) -> None:
        """Load weights written by `save` into a plain StableDiffusionPipeline."""
        embeds = load_file(str(folder / TOKEN_FILE))
        pipe.load_textual_inversion(embeds[placeholder], token=placeholder)
        cls.apply_extra(pipe, folder)

    @classmethod
    def apply_extra(cls, pipe, folder: Path) -> None:
        pass


def method_class(method_cfg: dict) -> type[Method]:
    """The class `method.plugin` names (module:Class), imported."""
    cls = plugins.load(method_cfg.get("plugin"), "method.plugin")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"method.plugin={method_cfg['plugin']} is not a subclass of "
                          "benchmark.engine.methods.base.Method; name the method's class.")
    return cls


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written like the records (records.atomic_file: the library's own writer
    leaves a file only its owner can read, and an empty `.tmpXXXXXX` when killed), the same bytes
    from the same weights: the library writes its JSON header in an order of its own choosing."""
    with atomic_file(path) as f:
        f.write(sorted_header(save(tensors, metadata=metadata)))


def sorted_header(blob: bytes) -> bytes:
    """The same safetensors file with the keys of its JSON header sorted; the tensors' offsets do not
    change, and the header stays padded with spaces to a multiple of 8 bytes, as the format asks."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + size:]
