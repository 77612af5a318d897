"""One registry helper for every family of plug-ins (objectives, views, recipes, readers, modalities).

Modelled on timm's ``_registry.py``: a name -> entry map filled by decorators or ``register`` calls at
import time, and one lookup that lists what exists when a name is unknown. Every family behaves the
same: empty or duplicate names are refused when registering (a silent overwrite would swap an
objective without a word), and an unknown name raises a :class:`UnknownName` (a ``UserError``, so the
CLI prints one line and exits 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pretextlab.core.config import ConfigError

T = TypeVar("T")


class UnknownName(ConfigError, ValueError):
    """A name that no registry entry has; the message lists the known names. A ``UserError`` (one line,
    exit 2) and a ``ValueError`` (what pydantic validators turn into field errors)."""


class Registry(Generic[T]):
    """Named entries of one family, e.g. ``Registry[type[Objective]]("objective")``.

    ``kind`` is the word used in messages ("objective", "modality", ...); ``field`` the config field the
    name comes from, so a lookup error reads like a config error (``objective: unknown objective 'x'``).
    """

    def __init__(self, kind: str, field: str | None = None) -> None:
        self.kind = kind
        self.field = field or kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; refuses an empty name and a name that is already taken."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{self.kind} registry: cannot register {entry!r} without a name")
        if name in self._entries:
            raise ValueError(f"{self.kind} registry: {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def decorator(self, name_of: Callable[[T], str]) -> Callable[[T], T]:
        """A class decorator registering each decorated entry under ``name_of(entry)``."""

        def register(entry: T) -> T:
            return self.register(name_of(entry), entry)

        return register

    def get(self, name: str) -> T:
        """The entry called ``name``; :class:`UnknownName` listing the known names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(
                f"{self.field}: unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plug-in reloads); unknown names raise :class:`UnknownName`."""
        self.get(name)
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def values(self) -> list[T]:
        return [self._entries[n] for n in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
