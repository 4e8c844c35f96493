"""Personalization methods: small plugins on the one shared training loop (benchmark.engine.train)."""

from benchmark.engine.methods import (  # noqa: F401  (register)
    custom_diffusion,
    dreambooth_lora,
    textual_inversion,
)
from benchmark.engine.methods.base import METHODS, Method  # noqa: F401
