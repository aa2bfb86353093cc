"""Task contexts: ``{tag}`` substitution and conditional values.

A context is a dict of names to values (str, or None for "not set").  It is
the environment a task's processes see and the source of every ``{name}``
tag in its config.

- ``expand(text, ctx)`` replaces each ``{name}`` whose name is in ``ctx``,
  again and again until nothing changes (at most ``MAX_PASSES`` times), so
  defines may refer to other defines.  A tag with an unknown name is left as
  written.  A text that is exactly ``{name}`` with ``ctx[name] is None``
  expands to None: "not set".
- ``resolve(value, ctx)`` reads a config value that may be conditional: a
  map in place of a value contributes the values of those of its keys that
  are present in the context (presence counts, not truth), recursively; lists
  are flattened.

This module must never do IO.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_PASSES = 10
#: How much longer than the original text an expansion may grow: a define
#: that refers to itself would otherwise grow fourfold on every pass.
MAX_GROWTH = 64 * 1024
_TAG = re.compile(r"\{(\w+)\}")
_WHOLE_TAG = re.compile(r"\{(\w+)\}\Z")

Context = Mapping[str, "str | None"]


class ContextError(ValueError):
    """A conditional value resolved to the wrong number of values."""


def expand(text: str, ctx: Context) -> str | None:
    """``text`` with every known ``{name}`` replaced, repeatedly."""
    original = text
    limit = len(text) + MAX_GROWTH
    for _ in range(MAX_PASSES):
        if "{" not in text:
            return text
        whole = _WHOLE_TAG.match(text)
        if whole and whole.group(1) in ctx and ctx[whole.group(1)] is None:
            return None

        def _sub(match: re.Match[str]) -> str:
            value = ctx.get(match.group(1), match.group(0))
            return match.group(0) if value is None else value

        new = _TAG.sub(_sub, text)
        if new == text:
            return text
        if len(new) > limit:
            raise ContextError(
                f"{original[:40]!r} expands to over {limit} characters "
                "(does a define refer to itself?)"
            )
        text = new
    return text


def resolve(value: Any, ctx: Context) -> list[Any]:
    """Every value that a possibly conditional ``value`` stands for, in order."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        out: list[Any] = []
        for key, item in value.items():
            if key in ctx:
                out.extend(resolve(item, ctx))
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            out.extend(resolve(item, ctx))
        return out
    return [value]


_REQUIRED: Any = object()


def resolve_one(value: Any, ctx: Context, default: Any = _REQUIRED) -> Any:
    """The single value a possibly conditional ``value`` stands for.

    ``None`` (key absent) gives ``default`` (None when none is given).  A
    conditional that leaves no value gives ``default`` too when one is given
    -- ``start_delay: {SLOW: 5}`` is 0 unless SLOW is set -- and otherwise
    raises ContextError, as does one that leaves several.
    """
    if value is None:
        return None if default is _REQUIRED else default
    if not isinstance(value, (Mapping, list, tuple)):
        return value
    found = resolve(value, ctx)
    if not found and default is not _REQUIRED:
        return default
    if len(found) != 1:
        raise ContextError(
            "conditional value resolved to "
            + ("nothing" if not found else f"{len(found)} values, expected one")
        )
    return found[0]


def expand_all(values: list[Any], ctx: Context) -> list[str]:
    """Expand each value as text, dropping those that expand to "not set"."""
    out = []
    for value in values:
        text = expand(value if isinstance(value, str) else _text(value), ctx)
        if text is not None:
            out.append(text)
    return out


def _text(value: Any) -> str:
    # str(), as the original does: YAML ``true`` becomes "True", 3.0 "3.0".
    return str(value)


def as_text(value: Any) -> str | None:
    """A context value as the text a process sees (None stays None)."""
    return None if value is None else (value if isinstance(value, str) else _text(value))
