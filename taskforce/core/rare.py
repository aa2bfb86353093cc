"""Record fields that are almost always at their default, kept off the record.

A supervisor of 10,000 tasks keeps a ``Slot`` and a ``TaskState`` for each,
and most of their fields hold their default nearly all the time: a health
check's run, a rollout's counts, an override's time, a probe's number.  A
field declared ``Rare(default)`` in a record's class body (no annotation,
so ``dataclasses`` does not make it a field) reads as an ordinary attribute,
but its value is kept in the record's ``rare`` dict, and only while it
differs from its default: a record whose rare fields are all at their
defaults holds ``None`` there, one pointer instead of one per field.

The ``rare`` dict is never changed in place: each write makes a new one, so
a record copied with ``copy.copy`` or ``dataclasses.replace`` shares nothing
that a write to either could change.

This module must never do IO; it holds no state of its own.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Generic, Protocol, TypeVar

    T = TypeVar("T")

    class _HasRare(Protocol):
        rare: dict[str, Any] | None

    class _Typed(Generic[T]):
        pass

else:
    # A running daemon does without ``typing`` (about 0.4 MiB): generic for
    # the type checker only; ``Rare[int]`` is ``Rare`` at run time.
    T = None

    class _Typed:
        def __class_getitem__(cls, item: Any) -> Any:
            return cls


class Rare(_Typed[T]):
    """A field kept in its record's ``rare`` dict while it is not ``default``.

    The default must be immutable (None, a number, a string, an empty tuple).
    A value equal to the default and of its type is the default: writing it
    removes the field from ``rare`` (``0.0`` is kept where the default is
    ``0``, so every value reads back exactly as written).
    """

    __slots__ = ("name", "default")

    def __init__(self, default: T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, record: Any, owner: type | None = None) -> T:
        if record is None:
            return self  # type: ignore[return-value]  # (asked of the class)
        rare = record.rare
        if rare is None:
            return self.default
        return rare.get(self.name, self.default)  # type: ignore[no-any-return]

    def __set__(self, record: _HasRare, value: T) -> None:
        rare = record.rare
        default = self.default
        if value is default or (type(value) is type(default) and value == default):
            if rare is not None and self.name in rare:
                rest = {key: kept for key, kept in rare.items() if key != self.name}
                record.rare = rest or None
            return
        record.rare = {self.name: value} if rare is None else {**rare, self.name: value}


def rare_fields(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s ``Rare`` fields, in the order they are declared."""
    return tuple(
        name
        for klass in reversed(cls.__mro__)
        for name, value in vars(klass).items()
        if isinstance(value, Rare)
    )
