"""A researcher's stopping criterion from outside the package: `strategy.criterion=FILE.py:Class` or
`module.path:Class`, a subclass of benchmark.protocol.stopping.Criterion (see examples/plateau_criterion.py)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys

from benchmark.core.errors import ConfigError
from benchmark.core.provenance import project_path
from benchmark.protocol.stopping import Criterion

SIGNALS = ("l_det", "train_clip_img")  # what the loop (and a replay) can feed a criterion
FORMAT = "give FILE.py:Class or module.path:Class, a Criterion subclass (e.g. examples/plateau_criterion.py:Plateau)"


def _module(where: str, key: str):
    if where.endswith(".py"):
        path = project_path(where).resolve()
        if not path.is_file():
            raise ConfigError(f"{key}: file {where} does not exist; {FORMAT}.")
        # one module per file, named by its path, so the class is the same object on every load
        name = f"criterion_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[name]
                raise ConfigError(f"{key}: {where} fails to import ({type(err).__name__}: {err}).") from err
        return sys.modules[name]
    try:
        return importlib.import_module(where)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import module {where} ({err}); {FORMAT}.") from err


def load_criterion(spec, key: str = "strategy.criterion") -> type[Criterion]:
    """The Criterion class `spec` names; a ConfigError naming `key` and the fix otherwise."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"{key}={spec}: {FORMAT}.")
    where, name = spec.split(":")
    cls = getattr(_module(where, f"{key}={spec}"), name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Criterion)):
        raise ConfigError(f"{key}={spec}: {where} has no Criterion subclass {name}; {FORMAT}.")
    if cls.signal not in SIGNALS:
        raise ConfigError(f"{key}={spec}: {name}.signal is {cls.signal!r}; a criterion watches one of "
                          f"{', '.join(SIGNALS)}.")
    return cls


def criterion_keys(cls: type[Criterion]) -> dict[str, tuple[type, bool]]:
    """The criterion's keyword arguments: name -> (int | float from the annotation or the default, required)."""
    out = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        kind = p.annotation if p.annotation in (int, float, "int", "float") else type(p.default)
        out[p.name] = (int if kind in (int, "int") else float, p.default is p.empty)
    return out
