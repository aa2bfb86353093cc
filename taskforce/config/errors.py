"""Errors in the config and roles files, and how they are placed and worded.

A ``ConfigError`` names the file, the line and the key path
(``tasks.ntpd.events[1].path``) of one problem, and carries every other
problem found in the same pass.  The helpers here word values and suggest
the key that was probably meant.

This module must never read a file or touch anything that runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    #: A key path: the keys and list indexes from the top of the document.
    KeyPath = tuple[Any, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


class ConfigError(Exception):
    """A problem in the config or roles file, located as precisely as we can.

    ``errors`` holds every problem found in the same pass (this one first),
    so ``taskforce -C`` can print them all.
    """

    def __init__(
        self,
        file: str,
        line: int | None,
        path: str,
        message: str,
        hint: str | None = None,
        errors: list[ConfigError] | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.message = message
        self.hint = hint
        self.errors: list[ConfigError] = errors if errors else [self]
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text

    def __str__(self) -> str:
        return self._render()

    def report(self) -> list[str]:
        """Every problem of this pass, one line each, in file order."""
        return [error._render() for error in self.errors]

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigError, (self.file, self.line, self.path, self.message, self.hint))


def raise_all(errors: list[ConfigError]) -> None:
    """Raise the first problem, carrying all of them, in file order."""
    if not errors:
        return
    # Stable sort: whole-file problems (no line) first, then by line.
    ordered = sorted(errors, key=lambda err: err.line or 0)
    first = ordered[0]
    first.errors = ordered
    raise first


def format_path(path: Iterable[Any]) -> str:
    """A key path as text: ``tasks.ntpd.events[1].path``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _BARE_KEY.match(part):
            out += f".{part}" if out else part
        else:
            # Keys with dots, spaces or of other types must stay unambiguous.
            import json  # (rare: a valid config's paths never get here)

            out += f"[{json.dumps(part) if isinstance(part, str) else repr(part)}]"
    return out


def suggest(word: Any, choices: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    choices = [choice for choice in choices if isinstance(choice, str)]
    import difflib  # only on an error: not worth its memory in every daemon

    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not found:
        lowered = {choice.lower(): choice for choice in choices}
        if word.lower() in lowered:
            found = [lowered[word.lower()]]
    return f'did you mean "{found[0]}"?' if found else None


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def tag_in_braces(value: Any) -> str | None:
    """``{conf}`` unquoted, which YAML reads as the mapping ``{conf: null}``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, item),) = value.items()
        if item is None and isinstance(key, str):
            return "{" + key + "}"
    return None


def suggest_key(data: Mapping[Any, Any], wanted: str) -> str | None:
    for key in data:
        hint = suggest(key, [wanted])
        if hint:
            return hint
    return None


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    for end in range(len(path), 0, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None
