"""dvar-bench: a benchmark harness for early stopping of text-to-image personalization.

Importing this package is cheap: torch and diffusers are imported only by the modules that train.
"""

__version__ = "0.1.0"
