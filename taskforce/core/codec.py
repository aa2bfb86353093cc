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


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def encode(item: Event | Effect) -> dict[str, Any]:
    """A JSON-able dict naming the type under ``"type"``."""
    out: dict[str, Any] = {"type": type(item).__name__}
    for fld in dataclasses.fields(item):
        out[fld.name] = _plain(getattr(item, fld.name))
    return out


def decode(data: dict[str, Any]) -> Any:
    """The event or effect that ``encode`` turned into ``data``."""
    fields = dict(data)
    cls = _TYPES[fields.pop("type")]
    return cls(**{key: freeze(value) for key, value in fields.items()})
