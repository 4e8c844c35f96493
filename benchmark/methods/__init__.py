"""Personalization methods: small plugins on the one shared training loop (benchmark.train)."""

from benchmark.methods.base import METHODS, Method  # noqa: F401
from benchmark.methods import custom_diffusion, dreambooth_lora, textual_inversion  # noqa: F401  (register)
