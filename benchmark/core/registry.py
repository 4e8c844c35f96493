"""Name → object registries for the sweep axes, with "did you mean" on a miss."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from benchmark.core.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """A short hint naming the closest choices, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def unknown_name_error(kind: str, name: str, choices, key: str | None = None) -> ConfigError:
    where = f" (config key `{key}`)" if key else ""
    return ConfigError(
        f"Unknown {kind} '{name}'{where}.{did_you_mean(name, choices)} "
        f"Available: {', '.join(sorted(choices))}."
    )


class Registry(Generic[T]):
    """A named collection of plugins (methods, strategies, ...)."""

    def __init__(self, kind: str, key: str | None = None):
        self.kind = kind
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown_name_error(self.kind, name, self._items, self.key)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) in registration order."""
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: str) -> bool:
        return name in self._items
