"""The checks of single values, shared by every part of the schema.

A ``Checker`` is one validation pass: it collects every problem it finds
(with the line and key path) instead of stopping at the first, and returns
each value normalized (lists become tuples, signals their canonical names).
Its methods check one shape of value each -- text, a number, a choice, a
conditional map, a size, a signal -- and know nothing of which key they
check; ``schema`` and its tables say which key takes which.

Where a rule is the core's (a size, a umask, a limit, an absolute output
path), the check calls the core's function on the literal value, so the two
can never disagree; the core checks again after tags are expanded.

This module must never read a file or touch anything that runs.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Iterable

from taskforce.config.document import Parsed
from taskforce.config.errors import (
    ConfigError,
    describe,
    format_path,
    line_of,
    suggest,
    tag_in_braces,
)
from taskforce.core.codec import freeze
from taskforce.core.model import OUTPUT_FILE_KEYS, OUTPUT_MODES
from taskforce.core.values import (
    MAX_COUNT,
    output_path,
    parse_limit,
    parse_size,
    parse_umask,
    signal_word,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

    #: A check of one plain value: (value, its key path) -> the value normalized.
    Leaf = Callable[[Any, KeyPath], Any]

ROLE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
START_LIMIT_KEYS = ("burst", "interval")


class Checker:
    """One validation pass: collects every problem, builds the normalized config."""

    def __init__(self, source: str, parsed: Parsed) -> None:
        self.source = source
        self.lines = parsed.lines
        self.raws = parsed.raws
        self.key_raws = parsed.key_raws
        self.errors: list[ConfigError] = []
        #: Literal role names used anywhere, for the settings.known_roles check.
        self.role_uses: list[tuple[KeyPath, str]] = []
        #: Literal task names referred to by requires/onexit.
        self.task_refs: list[tuple[KeyPath, str, str]] = []
        for path, line, first in parsed.duplicates:
            self.error(
                path,
                f"key given twice (first on line {first})",
                "YAML keeps only the last one; remove or rename the other",
                line=line,
            )

    def line_of(self, path: KeyPath) -> int | None:
        return line_of(self.lines, path)

    def error(
        self, path: KeyPath, message: str, hint: str | None = None, *, line: int | None = None
    ) -> None:
        self.errors.append(
            ConfigError(
                self.source,
                line if line is not None else self.line_of(path),
                format_path(path),
                message,
                hint,
            )
        )

    def quote_hint(self, path: KeyPath, value: Any) -> str | None:
        """'quote it' when YAML turned what was written into a non-string."""
        tag = tag_in_braces(value)
        if tag:
            return f'quote it: "{tag}"'
        raw = self.raws.get(path)
        if raw is not None and isinstance(value, (bool, int, float)):
            return f'quote it: "{raw}"'
        return None

    def string_key(self, key: Any, path: KeyPath, what: str) -> bool:
        """Whether a mapping key is a string; if not (``1:``, ``on:``), say so."""
        if isinstance(key, str):
            return True
        raw = self.key_raws.get(path)
        self.error(
            path,
            f"{what} must be a string, got {describe(key)}",
            f'quote it: "{raw}"' if raw is not None else None,
        )
        return False

    def type_error(self, path: KeyPath, value: Any, expected: str, *, quote: bool = True) -> None:
        """``quote``: whether quoting what was written could be the fix."""
        hint = self.quote_hint(path, value) if quote else None
        self.error(path, f"expected {expected}, got {describe(value)}", hint)

    def keys(self, value: dict[Any, Any], path: KeyPath, allowed: Iterable[str], what: str) -> None:
        """Report non-string and unknown keys of a structural mapping."""
        allowed = tuple(allowed)
        for key in value:
            sub = (*path, key)
            if not self.string_key(key, sub, f"a {what} key"):
                continue
            if key not in allowed:
                hint = suggest(key, allowed) or self.misplaced(key, what)
                self.error(sub, f"unknown {what} key {key!r}", hint)

    def misplaced(self, key: str, what: str) -> str | None:
        """A hint for a key known elsewhere (the schema knows where)."""
        return None

    def conditional(self, value: Any, path: KeyPath, leaf: Leaf, *, multi: bool) -> Any:
        """A value that may be a conditional map; ``leaf`` checks each plain value.

        ``multi``: whether a list is allowed at this level (lists are always
        allowed inside a conditional map, where the core flattens them).
        """
        if isinstance(value, dict):
            tag = tag_in_braces(value)
            if tag:
                self.error(
                    path,
                    f"YAML read {tag} as a mapping (a conditional value), not as text",
                    f'quote it: "{tag}"',
                )
                return value
            out: dict[Any, Any] = {}
            for key, item in value.items():
                sub = (*path, key)
                if not self.string_key(key, sub, "a conditional value's key (a context name)"):
                    continue
                if item is None:
                    self.error(sub, "conditional value is null, so it adds nothing")
                else:
                    out[key] = self.conditional(item, sub, leaf, multi=True)
            return out
        if isinstance(value, (list, tuple)):
            if not multi:
                self.error(path, "expected a single value, got a list")
                return freeze(value)
            return tuple(
                self.conditional(item, (*path, index), leaf, multi=True)
                for index, item in enumerate(value)
            )
        return leaf(value, path)

    def text(
        self, value: Any, path: KeyPath, *, numbers: bool = True, what: str = "a string"
    ) -> Any:
        """Text, or a number whose YAML spelling is what the process will see."""
        if isinstance(value, str):
            return value
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            raw = self.raws.get(path)
            # 0755 is 493, 1:30 is 90, 1.10 is 1.1: not what was written.
            if raw is not None and raw != str(value):
                self.error(
                    path,
                    f"YAML reads {raw} as the number {value!r}, which becomes {str(value)!r}",
                    f'quote it: "{raw}"',
                )
            return value
        self.type_error(path, value, what)
        return value

    def choice(self, value: Any, path: KeyPath, choices: tuple[str, ...], what: str) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        hint = (self.quote_hint(path, value) if isinstance(value, bool) else None) or suggest(
            value, choices
        )
        self.error(path, f"{what} must be one of {', '.join(choices)}; got {describe(value)}", hint)
        return value

    def number(
        self, value: Any, path: KeyPath, *, tags: bool = True, positive: bool = False
    ) -> Any:
        """A number >= 0 (> 0 if ``positive``); a ``{tag}`` string if ``tags``."""
        bound = "> 0" if positive else ">= 0"
        if isinstance(value, str):
            if tags and "{" in value:
                return value  # expanded by the core, then read as a number
            try:
                parsed = float(value)
            except ValueError:
                self.error(path, f"expected a number {bound}, got {describe(value)}")
                return value
            # A quoted number is harmless; the core reads it the same way.
            self._check_bound(parsed, path, positive)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.type_error(path, value, f"a number {bound}", quote=False)
            return value
        self._check_bound(value, path, positive)
        return value

    def _check_bound(self, value: float, path: KeyPath, positive: bool) -> None:
        if not math.isfinite(value):
            self.error(path, f"expected a finite number, got {value!r}")
        elif value < 0 or (positive and value == 0):
            self.error(path, f"must be {'> 0' if positive else '>= 0'}, got {value!r}")

    def count(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            self.type_error(path, value, "a whole number >= 0", quote=False)
        elif value < 0:
            self.error(path, f"must be >= 0, got {value}")
        elif value > MAX_COUNT:
            # Every slot gets its spec built up front: a typo must not take
            # the daemon's memory.
            self.error(path, f"must be at most {MAX_COUNT}, got {value}")
            return MAX_COUNT
        return value

    def at_least_one(self, value: Any, path: KeyPath) -> Any:
        """A whole number >= 1 (or a ``{tag}`` the core expands)."""
        if isinstance(value, str) and "{" in value:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.type_error(path, value, "a whole number >= 1", quote=False)
        elif value < 1:
            self.error(path, f"must be at least 1, got {value}")
        return value

    def role_name(self, value: Any, path: KeyPath) -> Any:
        value = self.text(value, path, what="a role name")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            name = str(value)
            if not ROLE_NAME.match(name):
                self.error(path, f"{name!r} is not a role name (letters, digits, '_', '.', '-')")
            else:
                self.role_uses.append((path, name))
        return value

    def signal(self, value: Any, path: KeyPath) -> Any:
        name = signal_name(value)
        if name is None:
            names = sorted(signal.Signals.__members__)
            hint = None
            if isinstance(value, str):
                upper = value.strip().upper()
                hint = suggest(upper if upper.startswith("SIG") else "SIG" + upper, names)
            self.error(path, f"unknown signal {value!r}", hint)
            return value
        return name

    def scalar_map(self, value: Any, path: KeyPath, what: str) -> dict[str, Any]:
        """defines/defaults: names to str/int/float/bool/null."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.type_error(path, value, f"a mapping of names to values for {what}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = (*path, key)
            if not self.string_key(key, sub, f"a {what} name"):
                continue
            if not key or "=" in key or "\0" in key:
                self.error(sub, f"{key!r} cannot be an environment variable name")
            if item is None or isinstance(item, str):
                pass
            elif isinstance(item, bool):
                raw = self.raws.get(sub)
                # true/false are deliberate; yes/no/on/off rarely are.
                if raw is not None and raw.lower() not in ("true", "false"):
                    self.error(
                        sub,
                        f"YAML reads {raw} as boolean {str(item).lower()}, "
                        f"which becomes {str(item)!r}",
                        f'quote it: "{raw}"',
                    )
            elif isinstance(item, (int, float)):
                self.text(item, sub)
            else:
                hint = self.quote_hint(sub, item)
                self.error(
                    sub,
                    f"a {what} value must be text, a number, a boolean or null; "
                    f"got {describe(item)}",
                    hint,
                )
                continue
            out[key] = item
        return out

    def role_map(self, value: Any, path: KeyPath, what: str) -> dict[str, dict[str, Any]]:
        """role_defines/role_defaults: role names to defines-like maps."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.type_error(path, value, f"a mapping of role names to {what} maps")
            return {}
        out: dict[str, dict[str, Any]] = {}
        for role, item in value.items():
            sub = (*path, role)
            if not self.string_key(role, sub, "a role name"):
                continue
            self.role_name(role, sub)
            out[role] = self.scalar_map(item, sub, what.removeprefix("role_"))
        return out

    def text_list(self, value: Any, path: KeyPath, what: str) -> tuple[str, ...]:
        """One text or a list of them."""
        items = value if isinstance(value, (list, tuple)) else (value,)
        out = []
        for index, item in enumerate(items):
            sub = (*path, index) if items is value else path
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self.type_error(sub, item, what)
        return tuple(out)

    def boolean(self, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, bool):
            hint = None
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                # The original only tested truthiness: "false" meant true.
                hint = "write true or false without quotes"
            self.error(path, f"expected true or false, got {describe(value)}", hint)
        return value

    def size(self, value: Any, path: KeyPath, *, positive: bool) -> Any:
        """A byte count or count: a whole number, ``10M``, or a ``{tag}``."""
        if isinstance(value, str) and "{" in value:
            return value
        try:
            number = parse_size(value)
        except ValueError as exc:
            self.error(path, str(exc))
            return value
        if positive and number == 0:
            self.error(path, "must be > 0")
        return value

    def umask(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, str) and "{" in value:
            return value
        raw = self.raws.get(path)
        if isinstance(value, int) and not isinstance(value, bool) and raw is not None:
            # 022 is octal to YAML 1.1 (18); 22 is decimal 22, which as a
            # umask would be 026: almost certainly not what was meant.
            if value != 0 and not raw.lstrip("+").startswith("0"):
                self.error(
                    path,
                    f"a umask is octal, but YAML reads {raw} as the decimal number {value}",
                    f'quote it: "0{raw}"' if raw.isdigit() else None,
                )
                return value
        try:
            parse_umask(value)
        except ValueError as exc:
            self.error(path, str(exc))
        return value

    def limit_value(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, str) and "{" in value:
            return value
        try:
            parse_limit(value)
        except ValueError as exc:
            self.error(path, str(exc))
        return value

    def output(self, value: Any, path: KeyPath) -> Any:
        """``inherit``/``discard``/``log``, or ``{file: PATH, stderr: PATH,
        max_bytes, backups, timestamps}``."""
        if isinstance(value, dict) and any(key in value for key in OUTPUT_FILE_KEYS):
            self.keys(value, path, OUTPUT_FILE_KEYS, "output")
            out: dict[str, Any] = {}
            for key, item in value.items():
                sub = (*path, key)
                if key in ("file", "stderr"):
                    out[key] = self.conditional(item, sub, self.output_file, multi=False)
                elif key == "timestamps":
                    out[key] = self.boolean(item, sub)
                elif key == "max_bytes":
                    out[key] = self.size(item, sub, positive=True)
                elif key == "backups":
                    out[key] = self.size(item, sub, positive=False)
                else:
                    out[key] = freeze(item)
            if value.get("file") is None:
                self.error(path, "output to a file needs file: PATH")
            return out

        def leaf(item: Any, sub: KeyPath) -> Any:
            if isinstance(item, (list, tuple)):
                item = freeze(item)
            elif isinstance(item, str) and "{" in item:
                return item  # expanded by the core, then checked again
            elif item == "file":
                self.error(sub, "output: file needs a path", "write output: {file: PATH}")
                return item
            if isinstance(item, str) and item in OUTPUT_MODES:
                return item
            hint = self.quote_hint(sub, item) if isinstance(item, bool) else None
            self.error(
                sub,
                f"output must be one of {', '.join(OUTPUT_MODES)} or {{file: PATH}}; "
                f"got {describe(item)}",
                hint or suggest(item, OUTPUT_MODES),
            )
            return item

        if isinstance(value, (list, tuple)):
            return leaf(value, path)
        return self.conditional(value, path, leaf, multi=False)

    def output_file(self, value: Any, path: KeyPath) -> Any:
        value = self.text(value, path, numbers=False, what="a file path")
        # With tags, the core checks the expanded path.
        if isinstance(value, str) and "{" not in value:
            try:
                output_path(value)
            except ValueError as exc:
                self.error(path, str(exc))
        return value

    def start_limit(self, value: Any, path: KeyPath, *, tags: bool = True) -> Any:
        """``{burst: 5, interval: 10}``: give up after ``burst`` starts within
        ``interval`` seconds (either may be left out; 0 turns the limit off)."""
        if not isinstance(value, dict):
            self.type_error(path, value, "{burst: N, interval: SECONDS}", quote=False)
            return freeze(value)
        self.keys(value, path, START_LIMIT_KEYS, "start_limit")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = (*path, key)
            if key not in START_LIMIT_KEYS:
                continue
            if item is None:
                continue  # null means the default
            if key == "burst" and not (tags and isinstance(item, str) and "{" in item):
                if isinstance(item, bool) or not isinstance(item, int):
                    self.type_error(sub, item, "a whole number >= 0", quote=False)
                elif item < 0:
                    self.error(sub, f"must be >= 0, got {item}")
            elif key == "interval":
                if not tags and isinstance(item, str) and "{" in item:
                    self.error(sub, "settings take no {tags}")
                    continue
                self.number(item, sub, tags=tags)
            out[key] = float(item) if isinstance(item, str) and is_float(item) else item
        return out

    def parsed(self, value: Any, path: KeyPath, parse: Callable[[Any], Any]) -> Any:
        """A value the core reads with ``parse`` (a declared attribute's):
        checked here when written literally, after tags are expanded there."""
        if isinstance(value, str) and "{" in value:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.text(value, path)  # 010 is 8 to YAML 1.1: not what was written
        try:
            parse(value)
        except ValueError as exc:
            self.error(
                path, str(exc), self.quote_hint(path, value) if isinstance(value, bool) else None
            )
        return value


def one_or_many(value: Any) -> Any:
    """A single plain value becomes a 1-tuple; tuples and conditionals stay."""
    return value if isinstance(value, (tuple, dict)) else (value,)


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def signal_name(value: Any) -> str | None:
    """The canonical name (``"SIGHUP"``) of a signal given as 1, "1", "hup", "SIGHUP"."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            return signal.Signals(value).name
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return signal.Signals(int(text)).name
            # Lookup by name maps aliases (SIGIOT) to the canonical member.
            return signal.Signals[signal_word(text)].name
    except (ValueError, KeyError):
        return None
    return None
