"""The toy world: a micro text-to-image model trained offline on synthetic scenes (world.py,
pretrain.py), its metric models, and held-out toy concepts (concepts.py) for personalization."""
