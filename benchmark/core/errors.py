"""The one exception type users see for bad input: it names the thing and the fix; and the checks
every config key goes through (a type and a range, named by the key as the user sets it)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """Bad input found before any training starts (config values, concepts, images)."""


def _plain_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def integer(key: str, value, lo: int, hi: int, note: str = "") -> int:
    """`value` if it is an integer in [lo, hi], else a ConfigError naming the key and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer from {lo} to {hi} (got {value!r}){'; ' + note if note else ''}.")
    return value


def number(key: str, value, lo: float, hi: float, open_lo: bool = False, open_hi: bool = False,
           note: str = "") -> float:
    """`value` if it is a finite number in the interval (open or closed at either end), else a ConfigError."""
    ok = _plain_number(value) and math.isfinite(value) and (lo < value if open_lo else lo <= value) \
        and (value < hi if open_hi else value <= hi)
    if not ok:
        interval = f"{'(' if open_lo else '['}{_bound(lo)}, {_bound(hi)}{')' if open_hi else ']'}"
        raise ConfigError(f"{key} must be a number in {interval} (got {value!r}){'; ' + note if note else ''}.")
    return float(value)


def boolean(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false (got {value!r}).")
    return value


def choice(key: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))} (got {value!r}).")
    return value


def read_yaml(path: Path, what: str):
    """A YAML file's content; a file that cannot be read or is not YAML is one line naming it and
    `what` it should be ("an experiment")."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}); it should be {what}.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not {what}: invalid YAML{where} ({problem}); fix the file.") from err
