"""Name -> spec lookup shared by the model and dataset registries.

A misspelt name is a usage error that suggests the closest registered one, so
`--model dcgna` answers "did you mean 'dcgan'?" instead of a KeyError.
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from genai_cli.errors import UsageError

T = TypeVar("T")


def normalise_name(name: str) -> str:
    """'Fashion_MNIST' and 'fashion-mnist' name the same thing."""
    return name.strip().lower().replace("_", "-")


def unknown_name(what: str, name: str, names: list[str] | tuple[str, ...]) -> str:
    """The answer to a misspelt name, for the registries and the CLI's choice flags alike:
    "unknown model 'dcgna'; did you mean 'dcgan'? choose one of: ..." """
    keys = {normalise_name(n): n for n in names}
    close = difflib.get_close_matches(normalise_name(name), keys, n=1, cutoff=0.6)
    hint = f"did you mean {keys[close[0]]!r}? " if close else ""
    return f"unknown {what} {name!r}; {hint}choose one of: {', '.join(names)}"


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what  # "model", "dataset" or "objective", used in messages
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        key = normalise_name(name)
        if key in self._items:
            raise ValueError(f"{self.what} {key!r} registered twice")
        self._items[key] = item

    def get(self, name: str) -> T:
        key = normalise_name(name)
        if key in self._items:
            return self._items[key]
        raise UsageError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        return unknown_name(self.what, name, self.names())

    def __contains__(self, name: str) -> bool:
        return normalise_name(name) in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
