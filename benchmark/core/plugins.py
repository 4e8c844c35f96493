"""Plugins named in a config as `package.module:Name` and resolved by import.

`check` proves the module exists without importing it (importlib.util.find_spec imports only its
parent packages), so a torch-free command can validate a config that names a torch plugin; `load`
imports it when the plugin is used.
"""

from __future__ import annotations

import importlib
import importlib.util

from benchmark.core.errors import ConfigError


def split(spec, key: str) -> tuple[str, str]:
    """(module, attribute) of a `module:Name` spec; a malformed spec is a ConfigError naming `key`."""
    module, _, name = str(spec).partition(":")
    if not isinstance(spec, str) or not module or not name.isidentifier() \
            or not all(part.isidentifier() for part in module.split(".")):
        raise ConfigError(f"{key} must name a class as package.module:Class (got {spec!r}), e.g. "
                          "benchmark.engine.methods.textual_inversion:TextualInversion.")
    return module, name


def check(spec, key: str) -> None:
    """The spec is well formed and its module can be found (not imported)."""
    module, _ = split(spec, key)
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that does not exist
        found = False
    if not found:
        raise ConfigError(f"{key}={spec}: no module {module} on the Python path; put its file on PYTHONPATH "
                          "(or in the project) or fix the name.")


def load(spec, key: str):
    """The object a spec names, imported."""
    module, name = split(spec, key)
    check(spec, key)
    obj = getattr(importlib.import_module(module), name, None)
    if obj is None:
        raise ConfigError(f"{key}={spec}: module {module} has no {name}; fix the name after the colon.")
    return obj
