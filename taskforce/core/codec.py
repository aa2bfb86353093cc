"""Events and effects to and from plain JSON-able values, exactly.

Sequences inside events and effects are always tuples and JSON has only
lists, so decoding turns every list back into a tuple; floats survive because
``json`` writes them with ``repr``.  ``decode(encode(x)) == x`` for every
event and effect.  This module must never do IO.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from taskforce.core.effects import EFFECT_TYPES, Effect
from taskforce.core.events import EVENT_TYPES, Event

_TYPES: dict[str, type[Any]] = {**EVENT_TYPES, **EFFECT_TYPES}


def freeze(value: Any) -> Any:
    """Lists become tuples, recursively (dict values included)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    if isinstance(value, dict):
        return {key: freeze(item) for key, item in value.items()}
    return value


_SCALARS = (str, int, float, bool, type(None))
#: field names of each event and effect class, looked up once (replay
#: encodes every effect of every step)
_FIELDS: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(fld.name for fld in dataclasses.fields(cls)) for cls in _TYPES.values()
}


def _plain(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def encode(item: Event | Effect) -> dict[str, Any]:
    """A JSON-able dict naming the type under ``"type"``."""
    cls = type(item)
    out: dict[str, Any] = {"type": cls.__name__}
    for name in _FIELDS[cls]:
        out[name] = _plain(getattr(item, name))
    return out


def _same(value: Any, plain: Any) -> bool:
    if isinstance(value, tuple):
        return (
            isinstance(plain, list)
            and len(value) == len(plain)
            and all(_same(item, other) for item, other in zip(value, plain, strict=True))
        )
    if isinstance(value, dict):
        # Most dicts (an environment) hold plain strings: compare at C speed
        # first, and only walk them when that says no.
        return value == plain or (
            isinstance(plain, dict)
            and value.keys() == plain.keys()
            and all(_same(item, plain[key]) for key, item in value.items())
        )
    return bool(value == plain) and type(value) is type(plain)


def matches(item: Event | Effect, plain: dict[str, Any]) -> bool:
    """Whether ``encode(item) == plain``, without building the encoding."""
    cls = type(item)
    fields = _FIELDS[cls]
    if plain.get("type") != cls.__name__ or len(plain) != len(fields) + 1:
        return False
    return all(_same(getattr(item, name), plain.get(name, _MISSING)) for name in fields)


_MISSING = object()


def decode(data: dict[str, Any]) -> Any:
    """The event or effect that ``encode`` turned into ``data``."""
    fields = dict(data)
    cls = _TYPES[fields.pop("type")]
    return cls(**{key: freeze(value) for key, value in fields.items()})
