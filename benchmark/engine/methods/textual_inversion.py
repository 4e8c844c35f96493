"""Textual Inversion: only the concept token's embedding is trained (reference §1.1)."""

from benchmark.engine.methods.base import Method


class TextualInversion(Method):
    modifies = ("tokenizer", "text_encoder")  # the token; the UNet and VAE stay as loaded
