"""A process's environment, stored as the few names where it differs from
one shared base.

Every process spec carries the whole environment its process gets: the
daemon's own (often 30 to 100 names), the ``Task_*`` built-ins and the
config's defines.  Between the tasks of one config nearly all of it is the
same; what differs is ``Task_name``, ``Task_instance`` and a few defines.
An ``Environment`` is an immutable mapping that keeps one base dict, shared
by every environment built against it, and only its own differences: the
names it sets otherwise (or that the base lacks), and the names of the base
it drops.  A fleet of 10,000 tasks then holds one copy of the daemon's
environment, not 10,000.

``Environments`` chooses the bases while a config is built: the first
environment becomes the base, and one that differs from it in more than a
few names becomes the next base.  Which base an environment got changes
nothing it shows: equality, lookups and ``as_dict`` are those of the
mapping it stands for; only the order of its names may differ from the one
it was built in (an environment's order means nothing to a process).

This module must never do IO; the base dicts it is given must not be
changed afterwards (it takes them as they are, uncopied).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: A name that is in no environment (``dict.get``'s default when looking).
_ABSENT: Any = object()
#: The base of an environment made empty (never changed).
_EMPTY: dict[str, str] = {}


class Environment(Mapping[str, str]):
    """An immutable mapping: ``base``, with ``own`` (name, value, name,
    value, ...) set over it and the names in ``gone`` taken away."""

    __slots__ = ("_base", "_own", "_gone")

    def __init__(
        self,
        base: Mapping[str, str] | None = None,
        own: tuple[str, ...] = (),
        gone: tuple[str, ...] = (),
    ) -> None:
        self._base: dict[str, str] = _EMPTY if base is None else _as_dict(base)
        self._own = own
        self._gone = gone

    @classmethod
    def of(cls, values: Mapping[str, str]) -> Environment:
        """``values`` as an Environment (itself when it is one)."""
        return values if isinstance(values, Environment) else cls(dict(values))

    def as_dict(self) -> dict[str, str]:
        """A new plain dict of the same names and values."""
        out = self._base.copy()
        own = self._own
        for index in range(0, len(own), 2):
            out[own[index]] = own[index + 1]
        for key in self._gone:
            del out[key]
        return out

    # The views of a copy: walking one costs a copy of the base (at C
    # speed), not a Python call per name.
    def keys(self) -> KeysView[str]:
        return self.as_dict().keys()

    def values(self) -> ValuesView[str]:
        return self.as_dict().values()

    def items(self) -> ItemsView[str, str]:
        return self.as_dict().items()

    def __getitem__(self, key: str) -> str:
        own = self._own
        for index in range(0, len(own), 2):
            if own[index] == key:
                return own[index + 1]
        if key in self._gone:
            raise KeyError(key)
        return self._base[key]

    def __contains__(self, key: object) -> bool:
        own = self._own
        for index in range(0, len(own), 2):
            if own[index] == key:
                return True
        return key in self._base and key not in self._gone

    def __iter__(self) -> Iterator[str]:
        gone = self._gone
        for key in self._base:
            if key not in gone:
                yield key
        base = self._base
        for key in self._own[::2]:
            if key not in base:
                yield key

    def __len__(self) -> int:
        base = self._base
        added = sum(1 for key in self._own[::2] if key not in base)
        return len(base) - len(self._gone) + added

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, Environment):
            if self._base is other._base and self._own == other._own and self._gone == other._gone:
                return True
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == (other if isinstance(other, dict) else dict(other.items()))
        return NotImplemented

    # Mutable lookalikes compare equal but cannot share a hash; as a dict.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Environment({self.as_dict()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Environment, (self.as_dict(),))


def as_dict(values: Mapping[str, str]) -> dict[str, str]:
    """A new plain dict of ``values`` (an ``Environment`` or any mapping)."""
    return values.as_dict() if isinstance(values, Environment) else dict(values)


def _as_dict(values: Mapping[str, str]) -> dict[str, str]:
    if type(values) is dict:
        return values
    if isinstance(values, Environment):
        return values.as_dict()
    return dict(values)


class Environments:
    """Builds the environments of one config's processes against shared bases.

    ``share(env)`` gives an ``Environment`` equal to ``env`` (a plain dict,
    taken as it is: the caller must not change it afterwards).  Each is
    stored against the current base when it differs from it in at most
    ``max_own`` names; otherwise ``env`` itself becomes the base, for it and
    for those that follow.
    """

    __slots__ = ("base", "max_own")

    def __init__(self, max_own: int = 16) -> None:
        self.base: dict[str, str] | None = None
        self.max_own = max_own

    def share(self, env: dict[str, str]) -> Environment:
        base = self.base
        if base is not None:
            own: list[str] = []
            shared = 0
            limit = 2 * self.max_own
            for key, value in env.items():
                known = base.get(key, _ABSENT)
                if known is _ABSENT:
                    own += (key, value)
                else:
                    shared += 1
                    if known != value:
                        own += (key, value)
                if len(own) > limit:
                    break
            else:
                if shared == len(base):
                    return Environment(base, tuple(own))
                if len(base) - shared + len(own) // 2 <= self.max_own:
                    gone = tuple(key for key in base if key not in env)
                    return Environment(base, tuple(own), gone)
        self.base = env
        return Environment(env)
