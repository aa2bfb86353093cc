"""Keep ``inspect`` out of a daemon that never needs it.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis`` and
``tokenize``: about 1 MiB of a daemon's memory and a few milliseconds of its
start) for two calls: ``inspect.signature``, only to write a docstring for a
dataclass that has none (every one of ours has one), and, from Python 3.12,
``inspect.get_annotations`` of each class it makes.  Importing this module
first puts a stand-in under the name ``inspect`` that answers
``get_annotations`` of a class itself and, for anything else asked of it,
loads the real module, takes its place in ``sys.modules`` and answers from
it, so that code which asks for more of ``inspect`` still gets exactly it.

Imported by ``taskforce.cli`` before anything else (the daemon's entry
point).  It must never answer a question the real module would answer
differently: its one answer follows ``inspect.get_annotations(cls)`` for a
class with the defaults (no string evaluation), as 3.12 and 3.13 define it.
It does nothing when ``inspect`` is already loaded.

One exception is made, where it is asked for and nowhere else: the control
server imports h11 inside ``WithoutSignatures()``, and during that import
``inspect.signature`` answers with a signature that reads as nothing.  h11
declares one dataclass without a docstring, ``h11._events._ResponseBase``,
so ``dataclasses`` asks for its signature to write one (the class's name
followed by ``str()`` of it), and that one question loaded ``inspect``,
``ast`` and ``dis`` (about 0.65 MiB) into every daemon with a control
socket.  Its docstring is now its bare name; nothing else of h11 changes.
(Not an error: 3.11 and later catch one there, but 3.10 does not.)
"""

from __future__ import annotations

import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _InspectLater(types.ModuleType):
    """``inspect`` until something needs more of it than ``get_annotations``."""

    def __getattr__(self, name: str) -> Any:
        real = _load_real()
        self.__dict__.update(real.__dict__)  # later lookups skip this method
        return getattr(real, name)

    def get_annotations(self, obj: Any, **options: Any) -> dict[str, Any]:
        if options or not isinstance(obj, type):
            return _load_real().get_annotations(obj, **options)  # type: ignore[no-any-return]
        # A class's own annotations (not its bases'); a descriptor in their
        # place (as on ``type`` itself) means none.
        found = obj.__dict__.get("__annotations__")
        if found is None or isinstance(found, types.GetSetDescriptorType):
            return {}
        if not isinstance(found, dict):
            raise ValueError(f"{obj!r}.__annotations__ is neither a dict nor None")
        return dict(found)


class WithoutSignatures:
    """While in force, the stand-in answers ``signature`` with ``_UNREAD``.

    (Only while the stand-in is ``inspect``; once the real module is loaded
    this does nothing.)  For an import whose dataclasses lack docstrings
    (see the module's docstring): nothing else may be run under it.
    """

    def __enter__(self) -> None:
        stand_in = sys.modules.get("inspect")
        if isinstance(stand_in, _InspectLater) and "signature" not in stand_in.__dict__:
            stand_in.__dict__["signature"] = _no_signature
            self.stand_in: _InspectLater | None = stand_in
        else:
            self.stand_in = None

    def __exit__(self, *exc_info: object) -> None:
        if self.stand_in is not None and self.stand_in.__dict__.get("signature") is _no_signature:
            del self.stand_in.__dict__["signature"]


class _Unread:
    """What ``signature`` answers under ``WithoutSignatures``: it reads as
    nothing, so a docstring ``dataclasses`` writes is the bare class name."""

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return "<signature not read (taskforce.inspect_later)>"


_UNREAD = _Unread()


def _no_signature(obj: Any, **options: Any) -> Any:
    return _UNREAD


def _load_real() -> types.ModuleType:
    if isinstance(sys.modules.get("inspect"), _InspectLater):
        # pop, not del: two threads may get here at once; the worst that
        # can then happen is a second import of the real module.
        sys.modules.pop("inspect", None)
    import inspect

    return inspect


if "inspect" not in sys.modules:
    sys.modules["inspect"] = _InspectLater("inspect")
