"""Events and effects compare, hash and print as ``@dataclass`` would make them.

``core.records.Record`` writes ``__eq__``, ``__hash__`` and ``__repr__`` once
for every event and effect, instead of each class getting generated copies
(see its docstring).  This checks each class against a twin that
``dataclasses`` generates in full, field by field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from taskforce.core import EFFECT_TYPES, EVENT_TYPES
from taskforce.core.effects import Effect
from taskforce.core.environment import Environment
from taskforce.core.events import Event

CLASSES = sorted({*EVENT_TYPES.values(), *EFFECT_TYPES.values(), Event, Effect}, key=repr)


def twin(cls: type) -> type:
    """A dataclass with ``cls``'s name and fields, every method generated."""
    made = dataclasses.make_dataclass(
        cls.__name__, [(f.name, Any) for f in dataclasses.fields(cls)], frozen=True, kw_only=True
    )
    made.__qualname__ = cls.__qualname__
    return made


def value(name: str, tag: str) -> Any:
    # A spawn's environment is an Environment (it makes one of any mapping).
    return Environment({tag: name}) if name == "env" else f"{tag}-{name}"


def values(cls: type, tag: str) -> dict[str, Any]:
    return {f.name: value(f.name, tag) for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_equality_hash_and_repr_match_generated_ones(cls: type) -> None:
    ref = twin(cls)
    one, same, ref_one = cls(**values(cls, "a")), cls(**values(cls, "a")), ref(**values(cls, "a"))
    assert one == same and not one != same
    try:
        expected = hash(ref_one)
    except TypeError:  # an unhashable field (a spawn's environment)
        with pytest.raises(TypeError):
            hash(one)
    else:
        assert hash(one) == hash(same) == expected
    assert repr(one) == repr(ref_one)
    assert one != ref_one  # another class, as generated methods say
    for name in values(cls, "a"):
        changed = {**values(cls, "a"), name: value(name, "b")}
        assert one != cls(**changed) and ref_one != ref(**changed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.x = 1  # type: ignore[attr-defined]


def test_an_unhashable_value_makes_the_record_unhashable_as_before() -> None:
    from taskforce.core.events import Booted

    with pytest.raises(TypeError):
        hash(Booted(at=1.0, environ={"A": "1"}))
    assert Booted(at=1.0, environ={"A": "1"}) == Booted(at=1.0, environ={"A": "1"})
    assert Booted(at=1.0, environ={"A": "1"}) != Booted(at=1.0, environ={"A": "2"})
