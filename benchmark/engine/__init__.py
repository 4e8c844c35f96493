"""The training engine: base model, data, the diffusion objective, methods, the one loop and its observers."""
