"""What every event and effect shares: equality, hash and repr, written once.

``@dataclass`` generates ``__eq__``, ``__hash__`` and ``__repr__`` for each
class by compiling source text when the class is made; for the forty-odd
events and effects that compiling was a large part of the daemon's start-up.
``Record`` gives them the same three methods, once, for every dataclass
below it: a class declared ``@dataclass(frozen=True, eq=False, repr=False)``
under ``Record`` compares, hashes and prints exactly as if ``@dataclass``
had generated them (the same field tuples, the same text).

This module must never do IO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: per class: its compared fields' values, as a tuple (made on first use)
_KEYS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
#: per class: the names its repr shows
_SHOWN: dict[type, tuple[str, ...]] = {}


def _key_of(cls: Any) -> Callable[[Any], tuple[Any, ...]]:
    names = tuple(f.name for f in fields(cls) if f.compare)
    if len(names) == 1:
        one = attrgetter(names[0])
        key: Callable[[Any], tuple[Any, ...]] = lambda obj: (one(obj),)  # noqa: E731
    elif names:
        key = attrgetter(*names)
    else:
        key = lambda obj: ()  # noqa: E731
    _KEYS[cls] = key
    return key


class Record:
    """Base of the frozen dataclasses the core passes in and out (``Event``,
    ``Effect``): ``==`` holds between two of the same class whose compared
    fields are equal, in order; the hash is that of those values; the repr
    is ``Name(field=value, ...)``."""

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        key = _KEYS.get(self.__class__) or _key_of(self.__class__)
        return bool(key(self) == key(other))

    def __hash__(self) -> int:
        key = _KEYS.get(self.__class__) or _key_of(self.__class__)
        return hash(key(self))

    def __repr__(self) -> str:
        cls = self.__class__
        shown = _SHOWN.get(cls)
        if shown is None:
            shown = _SHOWN[cls] = tuple(f.name for f in fields(cls) if f.repr)  # type: ignore[arg-type]
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{cls.__qualname__}({inner})"
