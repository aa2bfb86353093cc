"""Events and effects to and from plain JSON-able values, exactly.

Sequences inside events and effects are always tuples and JSON has only
lists, so decoding turns every list back into a tuple; floats survive because
``json`` writes them with ``repr``.  ``decode(encode(x)) == x`` for every
event and effect.  ``to_plain``/``from_plain`` do the same for the records of
a supervisor snapshot (specs, host facts), which name their class.  This
module must never do IO.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from taskforce.core.effects import EFFECT_TYPES, Effect
from taskforce.core.environment import Environment
from taskforce.core.events import EVENT_TYPES, Event
from taskforce.core.model import Action, EventSpec, HostFacts, ProcessSpec, TaskSpec
from taskforce.core.specs import Readiness

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    if type(value) is Environment:
        return value.as_dict()  # (its values are text)
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
        if type(plain) is not list or len(value) != len(plain):
            return False
        # Mostly strings (an argv): compare values and types at C speed
        # first, and only walk the items when that says no.
        if list(value) == plain and list(map(type, value)) == list(map(type, plain)):
            return True
        return all(_same(item, other) for item, other in zip(value, plain, strict=True))
    if isinstance(value, dict):
        return value == plain or (
            isinstance(plain, dict)
            and value.keys() == plain.keys()
            and all(_same(item, plain[key]) for key, item in value.items())
        )
    return bool(value == plain) and type(value) is type(plain)


def _matcher(cls: type[Any]) -> Callable[[Any, dict[str, Any]], bool]:
    """``matches`` for one class, written out field by field.

    Replay compares every effect of every step; spelled out like this (as
    ``dataclasses`` writes ``__init__``) it costs half what a loop over the
    field names does.  A scalar is the same when equal and of the same type;
    a dict equal as a whole is the same (most are environments of strings),
    and so is an ``Environment`` equal to it.
    """
    fields = _FIELDS[cls]
    lines = [
        "def match(item, plain):",
        f"    if plain.get('type') != {cls.__name__!r}:",
        "        return False",
        # Every field there (and nothing else), or fewer and all known: a
        # log written before a field was added, which takes its default.
        f"    if len(plain) == {len(fields) + 1}:",
        "        absent = _STRICT",
        f"    elif len(plain) < {len(fields) + 1} and plain.keys() <= _KNOWN:",
        "        absent = _ABSENT",
        "    else:",
        "        return False",
        "    get = plain.get",
    ]
    for name in fields:
        lines += [
            f"    value = item.{name}",
            f"    other = get({name!r}, absent[{name!r}])",
            "    if not (value == other and type(value) is type(other)) and not (",
            "        type(value) is tuple and _same(value, other)",
            "    ) and not (type(value) is _ENVIRONMENT and value == other):",
            "        return False",
        ]
    lines.append("    return True")
    namespace: dict[str, Any] = {
        "_same": _same,
        "_ENVIRONMENT": Environment,
        "_KNOWN": frozenset(("type", *fields)),
        "_ABSENT": _absent_values(cls),
        "_STRICT": dict.fromkeys(fields, _MISSING),
    }
    exec("\n".join(lines), namespace)  # noqa: S102 -- our own text, from field names
    match: Callable[[Any, dict[str, Any]], bool] = namespace["match"]
    return match


def _absent_values(cls: type[Any]) -> dict[str, Any]:
    """What each field of ``cls`` is when a recorded item lacks it: its
    default, encoded (a log written before the field was added matches
    exactly when the field is at its default); a field without one never
    matches when absent."""
    values: dict[str, Any] = {}
    for fld in dataclasses.fields(cls):
        if fld.default is not dataclasses.MISSING:
            values[fld.name] = _plain(fld.default)
        elif fld.default_factory is not dataclasses.MISSING:
            values[fld.name] = _plain(fld.default_factory())
        else:
            values[fld.name] = _MISSING
    return values


_MISSING = object()
#: written on first use: only replay compares, and the daemon need not
#: carry a compiled matcher per class
_MATCHERS: dict[type[Any], Callable[[Any, dict[str, Any]], bool]] = {}


def matches(item: Event | Effect, plain: dict[str, Any]) -> bool:
    """Whether ``encode(item) == plain``, without building the encoding; a
    field that ``plain`` lacks (recorded before it existed) is its default."""
    match = _MATCHERS.get(type(item))
    if match is None:
        match = _MATCHERS[type(item)] = _matcher(type(item))
    return match(item, plain)


_CONTAINERS = (list, dict)


_FIELD_SETS = {cls: frozenset(fields) for cls, fields in _FIELDS.items()}
#: classes whose every field is in the instance's ``__dict__`` (``Spawn``'s
#: spec fields are the slots of ``ProcessSpec``)
_DICT_ONLY = frozenset(
    cls for cls in _TYPES.values() if not any("__slots__" in vars(base) for base in cls.__mro__)
)


def decode(data: dict[str, Any]) -> Any:
    """The event or effect that ``encode`` turned into ``data``."""
    fields = dict(data)
    cls = _TYPES[fields.pop("type")]
    for key, value in fields.items():
        if type(value) in _CONTAINERS:
            fields[key] = freeze(value)
    if fields.keys() == _FIELD_SETS[cls]:
        # Every field given: set them as the frozen class's own __init__
        # would (it only assigns), at a third of its cost -- replay decodes
        # every recorded event.
        item = object.__new__(cls)
        if cls in _DICT_ONLY:
            item.__dict__.update(fields)
        else:
            for key, value in fields.items():
                object.__setattr__(item, key, value)
        return item
    return cls(**fields)


# ------------------------------------------------- supervisor state (snapshots)

#: the classes a snapshot holds, by name (see ``from_plain``)
_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (TaskSpec, ProcessSpec, Action, EventSpec, HostFacts, Readiness)
}

_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
#: field names by dataclass (None: not a dataclass), looked up once per class
_FIELD_NAMES: dict[type[Any], tuple[str, ...] | None] = {}


def to_plain(value: Any) -> Any:
    """``value`` as JSON-able data; a dataclass as a dict naming its class."""
    # The exact common types first: a checkpoint of a big config walks
    # tens of thousands of values, and it is taken while supervision waits.
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return value
    if kind is tuple or kind is list:
        return [to_plain(item) for item in value]
    if kind is dict:
        return {key: to_plain(item) for key, item in value.items()}
    if kind is Environment:
        return value.as_dict()  # (its values are text)
    if kind not in _FIELD_NAMES:
        _FIELD_NAMES[kind] = (
            tuple(fld.name for fld in dataclasses.fields(kind))
            if dataclasses.is_dataclass(kind)
            else None
        )
    names = _FIELD_NAMES[kind]
    if names is not None:
        out = {"__class__": kind.__name__}
        for name in names:
            out[name] = to_plain(getattr(value, name))
        return out
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, enum.Enum):
        return value.value  # (a word of lifecycle: Intent, Phase...)
    return value


def from_plain(value: Any) -> Any:
    """What ``to_plain`` made of a value, back (lists become tuples)."""
    if isinstance(value, dict):
        if "__class__" in value:
            fields = {k: from_plain(v) for k, v in value.items() if k != "__class__"}
            return _CLASSES[value["__class__"]](**fields)
        return {key: from_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(from_plain(item) for item in value)
    return value
