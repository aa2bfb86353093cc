"""Loading and checking the config file and the roles file (shell side).

This module turns the YAML config into the normalized dict that
``taskforce.core.model.build`` consumes, and the roles file into a ``Roles``
value.  Every problem it finds becomes a ``ConfigError`` naming the file, the
line and the key path (``tasks.ntpd.events[1].path``), with a hint where YAML
1.1 is known to surprise people (``control: off`` is boolean false).

Normalization, so that the core sees one shape only:

- every list becomes a tuple, recursively (the core requires tuples);
- ``requires``, ``roles``, a file_change ``path`` and a command given as one
  string become 1-tuples;
- event signals become canonical names (``hup``, ``1``, ``SIGHUP`` → ``"SIGHUP"``);
- ``settings``, ``defines``, ``role_defines``, ``defaults`` and
  ``role_defaults`` are always present (``{}`` when absent);
- a map in place of a value (a conditional value, keyed by context variable
  names) is kept as a dict for the core to resolve.

Stricter than the original (DESIGN.md section 2), each with a clear error:
unknown keys, wrong types, a key given twice in one mapping (YAML would keep
the last silently), ``yes``/``no``/``on``/``off`` where text is meant, and
numbers whose YAML spelling is not what the process would see (``0755`` is
493, ``1:30`` is 90, ``1.10`` is 1.1).  The roles file gains ``name=value``
lines and trailing comments.

It reads files and the host's names, and does nothing else: it must never
start a process, send a signal, or change any running state.  A config that
fails here is reported and ignored by the caller, so what runs stays as it is.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from taskforce.core.codec import freeze
from taskforce.core.model import (
    CONTROLS,
    ENVIRONMENTS,
    LIMIT_NAMES,
    OUTPUT_FILE_KEYS,
    OUTPUT_MODES,
    HostFacts,
    SpecError,
    TaskSpec,
    build,
    parse_limit,
    parse_size,
    parse_umask,
)

# The C loader is much faster; safe_load semantics either way.
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KeyPath = tuple[Any, ...]

TOP_KEYS = ("tasks", "settings", "defines", "role_defines", "defaults", "role_defaults")
#: The most slots one task may have (as the control path allows).
MAX_COUNT = 10_000
#: The most YAML values (nodes: every scalar, list and mapping, keys
#: included) a config may hold once its aliases are expanded.  An
#: alias (``*name``) costs nothing to read but everything after reading walks
#: it as a copy, so a 400-byte "billion laughs" file would stand for 10**9
#: nodes.  A config of 1,000 ordinary tasks holds about 50,000; this leaves
#: twenty times that.
MAX_NODES = 1_000_000

TASK_KEYS = (
    "commands",
    "control",
    "requires",
    "start_delay",
    "count",
    "time_limit",
    "stop_timeout",
    "check_interval",
    "check_timeout",
    "check_failures",
    "user",
    "group",
    "cwd",
    "pidfile",
    "procname",
    "roles",
    "defines",
    "role_defines",
    "defaults",
    "role_defaults",
    "events",
    "onexit",
    "output",
    "umask",
    "limits",
    "environment",
    "start_limit",
)
SETTINGS_KEYS = (
    "http",
    "all_roles",
    "known_roles",
    "stop_timeout",
    "stable_after",
    "backoff_initial",
    "backoff_max",
    "pidfile_timeout",
    "record",
    "output",
    "secret_names",
    "file_group",
    "start_limit",
)
HTTP_KEYS = (
    "listen",
    "certfile",
    "allow_control",
    "timeout",
    "allow",
    "token_file",
    "cafile",
    "client_subject",
    "server_names",
    "public_status",
)
ALLOW_KEYS = ("status", "control")
RECORD_KEYS = ("file", "max_bytes", "backups", "checkpoint_bytes")
START_LIMIT_KEYS = ("burst", "interval")
EVENT_TYPES = ("self", "file_change", "python", "stop", "restart", "external")
EVENT_KEYS = ("type", "command", "signal", "path", "name")
ONEXIT_KEYS = ("type", "task")
ONEXIT_TYPES = ("start",)
#: Event commands that need no entry in ``commands``: ``start`` always has
#: one, and ``stop`` falls back to the built-in stop (as in the original).
BUILTIN_COMMANDS = ("start", "stop")

ROLE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_TRAILING_COMMENT = re.compile(r"\s#")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MISSING = object()
_SCALAR_TAGS = frozenset({_BOOL_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


# ---------------------------------------------------------------------------
# Errors


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


def _raise_all(errors: list[ConfigError]) -> None:
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
            out += f"[{json.dumps(part) if isinstance(part, str) else repr(part)}]"
    return out


def _suggest(word: Any, choices: Iterable[str]) -> str | None:
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


def _describe(value: Any) -> str:
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


def _tag_in_braces(value: Any) -> str | None:
    """``{conf}`` unquoted, which YAML reads as the mapping ``{conf: null}``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, item),) = value.items()
        if item is None and isinstance(key, str):
            return "{" + key + "}"
    return None


# ---------------------------------------------------------------------------
# YAML with line numbers


class LoadedConfig(dict):  # type: ignore[type-arg]
    """The normalized config; remembers where each key was written.

    A plain dict to every consumer; ``source`` and ``lines`` (key path →
    1-based line) let ``check`` place errors found later by the core.
    """

    source: str
    lines: dict[KeyPath, int]


@dataclass
class _Parsed:
    data: Any
    lines: dict[KeyPath, int]
    #: Raw text of bool/int/float scalars, to explain YAML 1.1 surprises.
    raws: dict[KeyPath, str]
    #: Raw text of non-string keys, by the path they lead to.
    key_raws: dict[KeyPath, str]
    #: (path, line, first line) of keys given twice in one mapping.
    duplicates: list[tuple[KeyPath, int, int]]


def _yaml_error(exc: yaml.YAMLError, source: str, text: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):
        # A character YAML refuses (a control character, say): the reader
        # knows only its offset.
        line = text.count("\n", 0, exc.position) + 1
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        problem = f"character {character!r} is not allowed in YAML"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    message = f"YAML syntax error: {problem}"
    if context:
        message += f" ({context}"
        if context_mark is not None and context_mark.line + 1 != line:
            message += f" that starts on line {context_mark.line + 1}"
        message += ")"
    hint = None
    if (mark is not None and _char_at(text, mark.line, mark.column) == "\t") or "'\\t'" in problem:
        hint = "YAML does not allow tabs here; indent with spaces"
    elif "expected ','" in problem:
        hint = "is a comma missing at the end of the previous entry?"
    elif "mapping values are not allowed" in problem:
        hint = 'a value containing ": " must be quoted'
    return ConfigError(source, line, "", message, hint)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    return lines[line][column : column + 1] if line < len(lines) else ""


def _parse(text: str, source: str) -> _Parsed:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        parsed = _Parsed(None, {}, {}, {}, [])
        if node is not None:
            _within_budget(node, source)
            parsed.data = _Builder(loader, parsed).build(node, ())
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, text) from None
    except RecursionError:
        raise ConfigError(
            source, None, "", "the YAML is nested too deeply or refers to itself"
        ) from None
    finally:
        loader.dispose()
    return parsed


def _within_budget(root: yaml.Node, source: str, budget: int = MAX_NODES) -> None:
    """Refuse a document that, with its aliases expanded, exceeds ``budget`` nodes.

    The composer shares the node of an anchor with each of its aliases, so
    the document is a graph; everything after this (building, checking,
    the core's specs) walks it as a tree.  This walk visits each node once,
    in document order, and at each alias adds the size its anchor was found
    to have, so it takes time in the file's size, never in the tree's: a
    wide or deep alias bomb is refused before anything expands it.  The
    error names the alias that went over the budget.  A merge key counts as
    all it merges.  An alias inside its own anchor (a recursive structure)
    is refused here too.  It recurses as deep as the document nests, as the
    builder does after it.
    """
    counter = _Counter(budget)
    try:
        counter.size(root)
    except _Refused as refused:
        path = tuple(reversed(refused.keys))
        line = refused.line or root.start_mark.line + 1
        raise ConfigError(source, line, format_path(path), refused.message, refused.hint) from None


class _Refused(Exception):
    """Over the budget, or recursive; ``keys`` gathers the path on the way out."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.keys: list[Any] = []
        self.line = 0


class _Counter:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.total = 0
        #: expanded size of every node seen in full, by id
        self.sizes: dict[int, int] = {}
        #: ids of the nodes being counted (the current path)
        self.open: set[int] = set()

    def size(self, node: yaml.Node) -> int:
        """The expanded size of ``node``, first seen here."""
        self.total += 1
        if self.total > self.budget:
            raise _Refused(f"the YAML holds over {self.budget:,} values")
        if isinstance(node, yaml.ScalarNode):
            return 1
        self.open.add(id(node))
        size = 1
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                size += self.child(item, index, 0)
        else:
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                line = key_node.start_mark.line + 1
                size += self.child(key_node, key, line) + self.child(value_node, key, line)
        self.open.discard(id(node))
        self.sizes[id(node)] = size
        return size

    def child(self, node: yaml.Node, key: Any, line: int) -> int:
        """Its size, counting ``node`` under ``key`` (whose line is ``line``, or 0)."""
        try:
            known = self.sizes.get(id(node))
            if known is None:
                if id(node) in self.open:
                    raise _Refused("an alias refers to the value it is inside of")
                if not line and not isinstance(node, yaml.ScalarNode):
                    line = node.start_mark.line + 1
                return self.size(node)
            # An alias (or a scalar): everything it stands for counts again.
            self.total += known
            if self.total > self.budget:
                raise _Refused(
                    f"the YAML's aliases expand it to more than {self.budget:,} values",
                    "an alias (*name) stands for a copy of what its anchor (&name) holds; "
                    "is this a 'billion laughs' file?",
                )
            return known
        except _Refused as refused:
            refused.keys.append(key)
            # An alias's node (and mark) is its anchor's: the line is that
            # of the nearest key or list item written where it is used.
            refused.line = refused.line or line
            raise


class _Builder:
    """Constructs the document as ``yaml.safe_load`` would, noting key lines.

    One pass over the node tree does both jobs, which is faster than
    PyYAML's generic constructor followed by a second walk.  Plain maps,
    lists and strings are built here; every other node (null, bool, numbers,
    timestamps, ``!!set``, unknown tags...) goes to the safe constructor, so
    the values and errors are exactly safe_load's.
    """

    def __init__(self, loader: Any, parsed: _Parsed) -> None:
        self.loader = loader
        self.parsed = parsed
        #: An alias reuses a node; it gets the same object, built once (as
        #: in PyYAML), which also keeps a "billion laughs" file cheap.
        self.done: dict[int, Any] = {}

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR_TAG:
                return node.value
            if tag in _SCALAR_TAGS:
                self.parsed.raws[path] = node.value
            return self.loader.construct_object(node)
        known = self.done.get(id(node), _MISSING)
        if known is not _MISSING:
            return known
        if isinstance(node, yaml.SequenceNode) and tag == _SEQ_TAG:
            lines = self.parsed.lines
            items = []
            for index, item in enumerate(node.value):
                sub = (*path, index)
                lines[sub] = item.start_mark.line + 1
                items.append(self.build(item, sub))
            result: Any = items
        elif isinstance(node, yaml.MappingNode) and tag == _MAP_TAG:
            result = self.mapping(node, path)
        else:
            result = self.loader.construct_object(node, deep=True)
        self.done[id(node)] = result
        return result

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        parsed = self.parsed
        own = len(node.value)
        if any(key.tag == _MERGE_TAG for key, _ in node.value):
            own -= sum(1 for key, _ in node.value if key.tag == _MERGE_TAG)
            # Puts the merged pairs first; our own pairs may override them.
            self.loader.flatten_mapping(node)
        merged = len(node.value) - own
        result: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for position, (key_node, value_node) in enumerate(node.value):
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG:
                key: Any = key_node.value
            else:
                key = self.loader.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "found unhashable key",
                        key_node.start_mark,
                    ) from None
            sub = (*path, key)
            if key_node.tag != _STR_TAG and isinstance(key_node, yaml.ScalarNode):
                parsed.key_raws[sub] = key_node.value
            line = key_node.start_mark.line + 1
            if position >= merged:
                if key in first:
                    parsed.duplicates.append((sub, line, first[key]))
                else:
                    first[key] = line
                parsed.lines[sub] = line
            result[key] = self.build(value_node, sub)
        return result


# ---------------------------------------------------------------------------
# Schema


_Leaf = Callable[[Any, KeyPath], Any]


class _Checker:
    """One validation pass: collects every problem, builds the normalized config."""

    def __init__(self, source: str, parsed: _Parsed) -> None:
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

    # -- reporting ---------------------------------------------------------

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
        tag = _tag_in_braces(value)
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
            f"{what} must be a string, got {_describe(key)}",
            f'quote it: "{raw}"' if raw is not None else None,
        )
        return False

    def type_error(self, path: KeyPath, value: Any, expected: str, *, quote: bool = True) -> None:
        """``quote``: whether quoting what was written could be the fix."""
        hint = self.quote_hint(path, value) if quote else None
        self.error(path, f"expected {expected}, got {_describe(value)}", hint)

    def keys(self, value: dict[Any, Any], path: KeyPath, allowed: Iterable[str], what: str) -> None:
        """Report non-string and unknown keys of a structural mapping."""
        allowed = tuple(allowed)
        for key in value:
            sub = (*path, key)
            if not self.string_key(key, sub, f"a {what} key"):
                continue
            if key not in allowed:
                hint = _suggest(key, allowed)
                if hint is None and what == "top-level" and key in TASK_KEYS:
                    hint = "task keys belong under tasks.NAME"
                if hint is None and what == "task" and key in ("settings", "tasks"):
                    hint = f"{key} belongs at the top level"
                self.error(sub, f"unknown {what} key {key!r}", hint)

    # -- value shapes ------------------------------------------------------

    def conditional(self, value: Any, path: KeyPath, leaf: _Leaf, *, multi: bool) -> Any:
        """A value that may be a conditional map; ``leaf`` checks each plain value.

        ``multi``: whether a list is allowed at this level (lists are always
        allowed inside a conditional map, where the core flattens them).
        """
        if isinstance(value, dict):
            tag = _tag_in_braces(value)
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
        hint = (self.quote_hint(path, value) if isinstance(value, bool) else None) or _suggest(
            value, choices
        )
        self.error(
            path, f"{what} must be one of {', '.join(choices)}; got {_describe(value)}", hint
        )
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
                self.error(path, f"expected a number {bound}, got {_describe(value)}")
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
                hint = _suggest(upper if upper.startswith("SIG") else "SIG" + upper, names)
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
                    f"got {_describe(item)}",
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

    # -- sections ----------------------------------------------------------

    def top(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            what = "empty" if data is None else _describe(data)
            self.error((), f"the config must be a mapping with a 'tasks' key, got {what}")
            return {}
        self.keys(data, (), TOP_KEYS, "top-level")
        out: dict[str, Any] = {}
        tasks = data.get("tasks")
        if "tasks" not in data:
            self.error((), "the config has no 'tasks'", _suggest_key(data, "tasks"))
        elif not isinstance(tasks, dict):
            self.type_error(("tasks",), tasks, "a mapping of task names to tasks")
        out["settings"] = self.settings(data.get("settings"))
        out["defines"] = self.scalar_map(data.get("defines"), ("defines",), "defines")
        out["role_defines"] = self.role_map(
            data.get("role_defines"), ("role_defines",), "role_defines"
        )
        out["defaults"] = self.scalar_map(data.get("defaults"), ("defaults",), "defaults")
        out["role_defaults"] = self.role_map(
            data.get("role_defaults"), ("role_defaults",), "role_defaults"
        )
        task_map: dict[str, Any] = {}
        if isinstance(tasks, dict):
            for name, task in tasks.items():
                path = ("tasks", name)
                if not isinstance(name, str):
                    raw = self.key_raws.get(path)
                    self.error(
                        path,
                        f"task name {raw if raw is not None else name!r} is not a string",
                        f'quote it: "{raw}"' if raw is not None else None,
                    )
                    continue
                if not name:
                    self.error(path, "a task name cannot be empty")
                task_map[name] = self.task(name, task, path)
        out["tasks"] = task_map
        self.references(task_map)
        self.known_roles(out["settings"].get("known_roles"))
        # Order the keys as documented, tasks first.
        return {key: out[key] for key in TOP_KEYS}

    def settings(self, value: Any) -> dict[str, Any]:
        path: KeyPath = ("settings",)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.type_error(path, value, "a mapping")
            return {}
        self.keys(value, path, SETTINGS_KEYS, "settings")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = (*path, key)
            if key == "http":
                out[key] = self.http(item, sub)
            elif key == "all_roles":
                spelled_bool = isinstance(item, str) and item.lower() in ("true", "false")
                if isinstance(item, (list, tuple)) or isinstance(item, str) and not spelled_bool:
                    # Before it meant what the original never did: the list of
                    # the fleet's roles.  That list is known_roles now.
                    self.error(
                        sub,
                        "all_roles is true or false (true: a task needs all of its roles, "
                        "not just one, as in the original); the list of the fleet's "
                        "roles is settings.known_roles",
                        "rename this key to known_roles",
                    )
                elif item is not None:
                    out[key] = self.boolean(item, sub)
            elif key == "known_roles":
                if item is None:
                    continue
                items = (item,) if isinstance(item, str) else item
                if not isinstance(items, (list, tuple)):
                    self.type_error(sub, item, "a list of role names")
                    continue
                names = []
                for index, role in enumerate(items):
                    role_path = (*sub, index) if items is item else sub
                    role = self.text(role, role_path, what="a role name")
                    if isinstance(role, str) and not ROLE_NAME.match(role):
                        self.error(role_path, f"{role!r} is not a role name")
                    names.append(str(role))
                out[key] = tuple(names)
            elif key in (
                "stop_timeout",
                "stable_after",
                "backoff_initial",
                "backoff_max",
                "pidfile_timeout",
            ):
                if item is None:
                    continue  # null means the default; the core would choke on it
                self.number(item, sub, tags=False)
                out[key] = float(item) if isinstance(item, str) and _is_float(item) else item
            elif key == "record":
                if isinstance(item, dict):
                    out[key] = self.record(item, sub)
                elif item is not None and not isinstance(item, str):
                    self.type_error(
                        sub, item, "a file path, {file: PATH, max_bytes: ...} or null", quote=False
                    )
                else:
                    out[key] = item
            elif key == "output":
                if item is not None:
                    out[key] = self.output(item, sub)
            elif key == "secret_names":
                if item is not None:
                    out[key] = self.text_list(item, sub, "a name pattern such as *PASSWORD*")
            elif key == "file_group":
                if item is not None:
                    out[key] = self.text(item, sub, what="a group name or number")
            elif key == "start_limit":
                if item is not None:
                    out[key] = self.start_limit(item, sub, tags=False)
        low: Any = out.get("backoff_initial")
        high: Any = out.get("backoff_max")
        if _is_num(low) and _is_num(high) and high < low:
            self.error(
                (*path, "backoff_max"), f"backoff_max ({high}) is below backoff_initial ({low})"
            )
        return out

    def record(self, value: dict[Any, Any], path: KeyPath) -> dict[str, Any]:
        """``{file: PATH, max_bytes: 64M, backups: 3, checkpoint_bytes: 8M}``."""
        self.keys(value, path, RECORD_KEYS, "record")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = (*path, key)
            if key == "file":
                if not isinstance(item, str) or not item:
                    self.type_error(sub, item, "a file path", quote=False)
                out[key] = item
            elif key in RECORD_KEYS:
                if isinstance(item, str) and "{" in item:
                    self.error(sub, "settings take no {tags}")
                    continue
                self.size(item, sub, positive=key == "max_bytes")
                out[key] = item
        if "file" not in value:
            self.error(path, "record needs file: PATH")
        return out

    def http(self, value: Any, path: KeyPath) -> tuple[dict[str, Any], ...]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            self.type_error(path, value, "a list of services ({listen: ...})")
            return ()
        services = []
        for index, service in enumerate(value):
            sub = (*path, index)
            if not isinstance(service, dict):
                self.type_error(
                    sub, service, "a mapping with listen, certfile, allow_control, timeout"
                )
                continue
            self.keys(service, sub, HTTP_KEYS, "http service")
            out: dict[str, Any] = {}
            for key, item in service.items():
                key_path = (*sub, key)
                if key == "listen" and isinstance(item, int) and not isinstance(item, bool):
                    self.error(
                        key_path,
                        f"expected an address, got {_describe(item)}",
                        f'for a TCP port write ":{item}"',
                    )
                    out[key] = item
                elif key == "listen" and item is not None:
                    out[key] = self.conditional(
                        item, key_path, lambda v, p: self.text(v, p, numbers=False), multi=False
                    )
                elif key == "certfile" and item is not None:
                    out[key] = self.conditional(
                        item, key_path, lambda v, p: self.text(v, p, numbers=False), multi=False
                    )
                elif key == "allow_control" and item is not None:
                    out[key] = self.conditional(item, key_path, self.boolean, multi=False)
                elif key == "timeout" and item is not None:
                    out[key] = self.conditional(
                        item, key_path, lambda v, p: self.number(v, p, positive=True), multi=False
                    )
                elif key in ("token_file", "cafile") and item is not None:
                    out[key] = self.conditional(
                        item, key_path, lambda v, p: self.text(v, p, numbers=False), multi=False
                    )
                elif key == "public_status" and item is not None:
                    out[key] = self.conditional(item, key_path, self.boolean, multi=False)
                elif key in ("client_subject", "server_names") and item is not None:
                    out[key] = self.text_list(item, key_path, "text")
                elif key == "allow" and item is not None:
                    out[key] = self.allow(item, key_path)
                else:
                    out[key] = freeze(item)
            self.http_auth(out, sub)
            services.append(out)
        return tuple(services)

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

    def allow(self, value: Any, path: KeyPath) -> dict[str, Any]:
        """``{status: [users, @groups], control: [...]}``."""
        if not isinstance(value, dict):
            self.type_error(path, value, "a mapping with status and/or control", quote=False)
            return {}
        self.keys(value, path, ALLOW_KEYS, "allow")
        out: dict[str, Any] = {}
        for key in ALLOW_KEYS:
            if value.get(key) is not None:
                out[key] = self.text_list(
                    value[key], (*path, key), "a user name, uid, @group or @gid"
                )
        return out

    def http_auth(self, service: dict[str, Any], path: KeyPath) -> None:
        """What a TCP service needs before it may grant control (issue: no lock)."""
        listen = service.get("listen")
        if not isinstance(listen, str) or not listen or "/" in listen or "{" in listen:
            return  # a Unix socket, the default one, or known only once expanded
        if "allow" in service:
            self.error(
                (*path, "allow"),
                "allow lists users and groups of a Unix socket's peers; "
                "on TCP, control needs token_file or cafile",
            )
        if service.get("cafile") and not service.get("certfile"):
            self.error((*path, "cafile"), "cafile needs certfile (client certificates need TLS)")
        if service.get("allow_control") is True and not (
            service.get("token_file") or (service.get("cafile") and service.get("certfile"))
        ):
            self.error(
                (*path, "allow_control"),
                "control over TCP needs token_file or cafile (client certificates)",
                "add token_file: PATH (a file holding a long random token)",
            )

    def boolean(self, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, bool):
            hint = None
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                # The original only tested truthiness: "false" meant true.
                hint = "write true or false without quotes"
            self.error(path, f"expected true or false, got {_describe(value)}", hint)
        return value

    def task(self, name: str, task: Any, path: KeyPath) -> Any:
        if not isinstance(task, dict):
            self.type_error(path, task, "a mapping (a task with at least commands.start)")
            return freeze(task)
        self.keys(task, path, TASK_KEYS, "task")
        out: dict[str, Any] = {}
        commands = self.commands(task.get("commands"), (*path, "commands"), "commands" in task)
        for key, value in task.items():
            sub = (*path, key)
            if key == "commands":
                out[key] = commands
            elif value is None or key not in TASK_KEYS:
                # null: the key is as good as absent; unknown keys are reported.
                out[key] = freeze(value)
            elif key == "control":
                out[key] = self.conditional(
                    value, sub, lambda v, p: self.choice(v, p, CONTROLS, "control"), multi=False
                )
            elif key == "requires":
                out[key] = self.names(value, sub, name, "requires")
            elif key in ("start_delay", "time_limit", "stop_timeout", "check_interval"):
                out[key] = self.conditional(value, sub, self.number, multi=False)
            elif key == "check_timeout":
                out[key] = self.conditional(
                    value, sub, lambda v, p: self.number(v, p, positive=True), multi=False
                )
            elif key == "check_failures":
                out[key] = self.conditional(value, sub, self.at_least_one, multi=False)
            elif key == "count":
                out[key] = self.conditional(value, sub, self.count, multi=False)
            elif key in ("user", "group"):
                # A numeric uid/gid is fine.
                out[key] = self.conditional(value, sub, self.text, multi=False)
            elif key in ("cwd", "pidfile", "procname"):
                out[key] = self.conditional(
                    value, sub, lambda v, p: self.text(v, p, numbers=False), multi=False
                )
            elif key == "roles":
                out[key] = _one_or_many(self.conditional(value, sub, self.role_name, multi=True))
            elif key in ("defines", "defaults"):
                out[key] = self.scalar_map(value, sub, key)
            elif key in ("role_defines", "role_defaults"):
                out[key] = self.role_map(value, sub, key)
            elif key == "events":
                out[key] = self.events(value, sub, commands)
            elif key == "onexit":
                out[key] = self.onexit(value, sub)
            elif key == "output":
                out[key] = self.output(value, sub)
            elif key == "umask":
                out[key] = self.conditional(value, sub, self.umask, multi=False)
            elif key == "limits":
                out[key] = self.limits(value, sub)
            elif key == "start_limit":
                out[key] = self.start_limit(value, sub)
            elif key == "environment":
                out[key] = self.conditional(
                    value,
                    sub,
                    lambda v, p: self.choice(v, p, ENVIRONMENTS, "environment"),
                    multi=False,
                )
        return out

    # -- output, umask, limits -----------------------------------------------

    def output(self, value: Any, path: KeyPath) -> Any:
        """``inherit``/``discard``/``log``, or ``{file: PATH, max_bytes, backups}``."""
        if isinstance(value, dict) and any(key in value for key in OUTPUT_FILE_KEYS):
            self.keys(value, path, OUTPUT_FILE_KEYS, "output")
            out: dict[str, Any] = {}
            for key, item in value.items():
                sub = (*path, key)
                if key == "file":
                    out[key] = self.conditional(item, sub, self.output_file, multi=False)
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
                f"got {_describe(item)}",
                hint or _suggest(item, OUTPUT_MODES),
            )
            return item

        if isinstance(value, (list, tuple)):
            return leaf(value, path)
        return self.conditional(value, path, leaf, multi=False)

    def output_file(self, value: Any, path: KeyPath) -> Any:
        value = self.text(value, path, numbers=False, what="a file path")
        # With tags, the core checks the expanded path.
        if isinstance(value, str) and "{" not in value and not value.startswith("/"):
            self.error(path, f"output file must be an absolute path, got {value!r}")
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

    def limits(self, value: Any, path: KeyPath) -> Any:
        """``{nofile: 4096, core: unlimited, stack: {soft: 8M, hard: 64M}}``."""
        if not isinstance(value, dict):
            self.type_error(path, value, "a mapping of resource names to limits", quote=False)
            return freeze(value)
        self.keys(value, path, LIMIT_NAMES, "limits")
        out: dict[str, Any] = {}
        for name, item in value.items():
            sub = (*path, name)
            if isinstance(item, dict):
                self.keys(item, sub, ("soft", "hard"), "limit")
                for bound in ("soft", "hard"):
                    if bound not in item:
                        self.error(sub, f"a limit given as a mapping needs {bound}")
                    else:
                        self.limit_value(item[bound], (*sub, bound))
                soft, hard = _literal_limit(item.get("soft")), _literal_limit(item.get("hard"))
                if soft is not _MISSING and hard is not _MISSING:
                    if hard is not None and (soft is None or soft > hard):
                        self.error(
                            sub, f"soft limit {item['soft']} is above hard limit {item['hard']}"
                        )
                out[name] = freeze(item)
            else:
                out[name] = self.limit_value(item, sub)
        return out

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
            out[key] = float(item) if isinstance(item, str) and _is_float(item) else item
        return out

    def limit_value(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, str) and "{" in value:
            return value
        try:
            parse_limit(value)
        except ValueError as exc:
            self.error(path, str(exc))
        return value

    def commands(self, value: Any, path: KeyPath, present: bool) -> dict[str, Any]:
        if not present or value is None:
            self.error(
                path[:-1], "the task has no commands", "add commands: {start: [PROGRAM, ARG...]}"
            )
            return {}
        if not isinstance(value, dict):
            self.type_error(path, value, "a mapping of command names to commands")
            return {}
        out: dict[str, Any] = {}
        for cname, argv in value.items():
            sub = (*path, cname)
            if not self.string_key(cname, sub, "a command name"):
                continue
            if argv is None or argv == [] or argv == "":
                self.error(sub, f"command {cname!r} is empty")
                out[cname] = ()
                continue
            # A single string is a command with no arguments.
            out[cname] = _one_or_many(self.conditional(argv, sub, self.argv_item, multi=True))
        if "start" not in value:
            self.error(
                path,
                "no start command",
                _suggest(next((k for k in value if isinstance(k, str)), None), ["start"])
                or "add start: [PROGRAM, ARG...]",
            )
        return out

    def argv_item(self, value: Any, path: KeyPath) -> Any:
        return self.text(value, path, what="a string or number (a command argument)")

    def names(self, value: Any, path: KeyPath, task: str, key: str) -> Any:
        """requires: task names, a string meaning a 1-tuple."""

        def leaf(item: Any, sub: KeyPath) -> Any:
            item = self.text(item, sub, numbers=False, what="a task name")
            if isinstance(item, str):
                self.task_refs.append((sub, item, key))
                if item == task:
                    self.error(sub, "a task cannot require itself")
            return item

        return _one_or_many(self.conditional(value, path, leaf, multi=True))

    def events(self, value: Any, path: KeyPath, commands: Mapping[str, Any]) -> Any:
        if not isinstance(value, (list, tuple)):
            self.type_error(path, value, "a list of events ({type: ..., command: ...})")
            return freeze(value)
        out = []
        seen_kinds: dict[str, int] = {}
        for index, event in enumerate(value):
            sub = (*path, index)
            if not isinstance(event, dict):
                self.type_error(sub, event, "an event mapping with type and command or signal")
                out.append(freeze(event))
                continue
            self.keys(event, sub, EVENT_KEYS, "event")
            norm: dict[str, Any] = {}
            kinds: set[str] = set()

            def type_leaf(item: Any, p: KeyPath, kinds: set[str] = kinds) -> Any:
                item = self.choice(item, p, EVENT_TYPES, "event type")
                if isinstance(item, str):
                    kinds.add(item)
                return item

            literal = event.get("type")
            if literal is None:
                self.error(sub, "the event has no type", "type: " + " | ".join(EVENT_TYPES))
            else:
                norm["type"] = self.conditional(literal, (*sub, "type"), type_leaf, multi=False)
            if isinstance(literal, str) and literal in ("stop", "restart"):
                if literal in seen_kinds:
                    self.error(
                        (*sub, "type"),
                        f"a second {literal!r} event (the first is events[{seen_kinds[literal]}])",
                        "a task has one stop and one restart action",
                    )
                seen_kinds[literal] = index
            has_command = event.get("command") is not None
            has_signal = event.get("signal") is not None
            if has_command and has_signal:
                self.error(sub, "an event has one action: command or signal, not both")
            elif not has_command and not has_signal:
                self.error(sub, "the event has no action", "add command: NAME or signal: SIGNAME")
            if has_command:

                def command_leaf(item: Any, p: KeyPath) -> Any:
                    item = self.text(item, p, numbers=False, what="a command name")
                    if (
                        isinstance(item, str)
                        and item not in commands
                        and item not in BUILTIN_COMMANDS
                    ):
                        self.error(
                            p,
                            f"no command {item!r} in this task's commands",
                            _suggest(item, [*commands, *BUILTIN_COMMANDS]),
                        )
                    return item

                norm["command"] = self.conditional(
                    event["command"], (*sub, "command"), command_leaf, multi=False
                )
            if has_signal:
                norm["signal"] = self.conditional(
                    event["signal"], (*sub, "signal"), self.signal, multi=False
                )
            self.event_extra(event, sub, norm, kinds, literal, "path", "file_change")
            self.event_extra(event, sub, norm, kinds, literal, "name", "external")
            for key, item in event.items():
                if key not in norm and key not in ("path", "name"):
                    norm[key] = freeze(item)
            out.append(norm)
        return tuple(out)

    def event_extra(
        self,
        event: dict[Any, Any],
        path: KeyPath,
        norm: dict[str, Any],
        kinds: set[str],
        literal: Any,
        key: str,
        kind: str,
    ) -> None:
        """``path`` belongs to file_change events and ``name`` to external ones."""
        value = event.get(key)
        if value is None:
            if literal == kind:
                self.error(path, f"a {kind} event needs {key!r}")
            if key in event:
                norm[key] = None
            return
        sub = (*path, key)
        if kind not in kinds and kinds:
            self.error(sub, f"{key!r} is only for {kind} events")
        if key == "path":
            norm[key] = _one_or_many(
                self.conditional(
                    value,
                    sub,
                    lambda v, p: self.text(v, p, numbers=False, what="a file path"),
                    multi=True,
                )
            )
        else:
            norm[key] = self.text(value, sub, numbers=False, what="an external event name")
            if value == "":
                self.error(sub, "an external event name cannot be empty")

    def onexit(self, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, (list, tuple)):
            self.type_error(path, value, "a list of {type: start, task: NAME}")
            return freeze(value)
        out = []
        for index, item in enumerate(value):
            sub = (*path, index)
            if not isinstance(item, dict):
                self.type_error(sub, item, "a mapping {type: start, task: NAME}")
                out.append(freeze(item))
                continue
            self.keys(item, sub, ONEXIT_KEYS, "onexit")
            norm: dict[str, Any] = {}
            if item.get("type") is not None:
                norm["type"] = self.conditional(
                    item["type"],
                    (*sub, "type"),
                    lambda v, p: self.choice(v, p, ONEXIT_TYPES, "onexit type"),
                    multi=False,
                )
            if item.get("task") is None:
                self.error(sub, "onexit needs the task to start", "add task: NAME")
            else:

                def leaf(target: Any, p: KeyPath) -> Any:
                    target = self.text(target, p, numbers=False, what="a task name")
                    if isinstance(target, str):
                        self.task_refs.append((p, target, "onexit"))
                    return target

                norm["task"] = self.conditional(item["task"], (*sub, "task"), leaf, multi=False)
            for key, other in item.items():
                if key not in norm:
                    norm[key] = freeze(other)
            out.append(norm)
        return tuple(out)

    # -- cross references --------------------------------------------------

    def references(self, tasks: Mapping[str, Any]) -> None:
        for path, target, key in self.task_refs:
            if "{" in target or target in tasks:
                continue  # tags are expanded by the core, which checks again
            what = "requires" if key == "requires" else "onexit starts"
            self.error(path, f"{what} unknown task {target!r}", _suggest(target, tasks))

    def known_roles(self, declared: tuple[str, ...] | None) -> None:
        if declared is None:
            return
        for path, role in self.role_uses:
            if role not in declared:
                self.error(
                    path,
                    f"role {role!r} is not in settings.known_roles",
                    _suggest(role, declared) or "add it to settings.known_roles",
                )


def _literal_limit(value: Any) -> Any:
    """A limit as a number (None: unlimited), or _MISSING when it has tags or is bad."""
    if isinstance(value, str) and "{" in value:
        return _MISSING
    try:
        return parse_limit(value)
    except ValueError:
        return _MISSING


def _one_or_many(value: Any) -> Any:
    """A single plain value becomes a 1-tuple; tuples and conditionals stay."""
    return value if isinstance(value, (tuple, dict)) else (value,)


def _suggest_key(data: Mapping[Any, Any], wanted: str) -> str | None:
    for key in data:
        hint = _suggest(key, [wanted])
        if hint:
            return hint
    return None


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    for end in range(len(path), 0, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


# ---------------------------------------------------------------------------
# Public API: config


@functools.lru_cache(maxsize=1)
def _host_names() -> tuple[str, str]:
    # getfqdn() may wait on DNS; look it up once per process, not per reload.
    return socket.gethostname(), socket.getfqdn()


def host_facts() -> HostFacts:
    """What the core is told about this host, as at this moment."""
    host, fqdn = _host_names()
    return HostFacts(environ=dict(os.environ), host=host, fqdn=fqdn, pid=os.getpid())


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a config is loaded.

    Loading allocates many small objects and none of them cyclic garbage;
    the collector's passes over them roughly doubled the time of a
    1,000-task config.  A pause of well under a second harms nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _schema(text: str, source: str) -> tuple[LoadedConfig, list[ConfigError]]:
    parsed = _parse(text, source)
    checker = _Checker(source, parsed)
    config = LoadedConfig(checker.top(parsed.data))
    config.source = source
    config.lines = parsed.lines
    return config, checker.errors


def _roles_errors(config: Mapping[str, Any], roles: Roles) -> list[ConfigError]:
    declared = (config.get("settings") or {}).get("known_roles")
    if declared is None or roles.names is None:
        return []
    errors = []
    for name in roles.names:
        if name not in declared:
            errors.append(
                ConfigError(
                    roles.source or "<roles>",
                    roles.lines.get(name),
                    "",
                    f"role {name!r} is not in settings.known_roles of "
                    f"{getattr(config, 'source', 'the config')}",
                    _suggest(name, declared),
                )
            )
    return errors


def _build_errors(
    config: Mapping[str, Any],
    source: str,
    roles: Roles,
    facts: HostFacts | None,
) -> tuple[dict[str, TaskSpec] | None, list[ConfigError]]:
    lines: Mapping[KeyPath, int] = getattr(config, "lines", {})
    try:
        specs = build(config, facts or host_facts(), roles.names, roles.values)
    except SpecError as exc:
        return None, [
            ConfigError(source, line_of(lines, exc.path), format_path(exc.path), exc.message)
        ]
    except RecursionError:
        # model.find_cycle/start_order recurse once per link of a requires chain.
        return None, [ConfigError(source, None, "", "the chain of requires is too deep to check")]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # A shape the schema let through but the core cannot use: still a
        # config problem to report, never a crash of the daemon on reload.
        return None, [ConfigError(source, None, "", f"cannot build the config: {exc!r}")]
    return specs, []


class _Unset:
    """The default of ``roles``: check the schema only, build nothing."""

    def __repr__(self) -> str:
        return "<schema only>"


SCHEMA_ONLY: Any = _Unset()


def _as_roles(roles: Any, role_values: Mapping[str, str] | None) -> Roles | None:
    """A ``Roles`` from either calling style; None means "schema only"."""
    if isinstance(roles, _Unset):
        return None
    if isinstance(roles, Roles):
        if role_values is None:
            return roles
        return Roles(roles.names, dict(role_values), roles.source, roles.lines)
    return Roles(None if roles is None else tuple(roles), dict(role_values or {}), None)


def _problems(
    text: str, source: str, roles: Roles | None, facts: HostFacts | None
) -> tuple[LoadedConfig, list[ConfigError]]:
    with _collector_paused():
        config, errors = _schema(text, source)
        if not errors and roles is not None:
            errors = _roles_errors(config, roles)
            errors += _build_errors(config, source, roles, facts)[1]
    return config, errors


def validate_all(
    text: str,
    source: str,
    roles: Roles | tuple[str, ...] | None = SCHEMA_ONLY,
    role_values: Mapping[str, str] | None = None,
    *,
    facts: HostFacts | None = None,
) -> list[ConfigError]:
    """Every problem found in ``text`` (empty when it is valid), in file order.

    Schema problems are all collected in one pass.  When ``roles`` is given
    (a ``Roles``, or names with ``role_values``; None: no roles file), a
    config free of those is then built by the core, which stops at its first
    problem, and a ``Roles`` is checked against ``settings.known_roles``.
    """
    try:
        errors = _problems(text, source, _as_roles(roles, role_values), facts)[1]
    except ConfigError as exc:
        return list(exc.errors)
    return sorted(errors, key=lambda err: err.line or 0)


def load_config_text(
    text: str,
    source: str = "<config>",
    roles: Roles | tuple[str, ...] | None = SCHEMA_ONLY,
    role_values: Mapping[str, str] | None = None,
    *,
    facts: HostFacts | None = None,
) -> LoadedConfig:
    """The normalized config in ``text``; raises ConfigError (with ``.errors``).

    When ``roles`` is given (see ``validate_all``), also builds it with the
    core so that unknown requires, dependency cycles and conditionals that
    resolve badly are reported too.
    """
    config, errors = _problems(text, source, _as_roles(roles, role_values), facts)
    _raise_all(errors)
    return config


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(path, None, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, "", f"cannot read it: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, "", f"not UTF-8 text (byte {exc.start})") from None


def load_config(
    path: str,
    roles: Roles | tuple[str, ...] | None = SCHEMA_ONLY,
    role_values: Mapping[str, str] | None = None,
    *,
    facts: HostFacts | None = None,
) -> LoadedConfig:
    """The normalized config in the file at ``path``; see ``load_config_text``."""
    return load_config_text(_read_text(path), path, roles, role_values, facts=facts)


def check(
    config: Mapping[str, Any],
    source: str,
    roles: Roles | tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
    facts: HostFacts | None = None,
) -> dict[str, TaskSpec]:
    """Build a normalized config with the core; SpecError becomes ConfigError.

    ``roles`` is a ``Roles`` or just the names (None: every task in scope).
    The line comes from ``config.lines`` when ``config`` came from
    ``load_config`` (else the error has no line).
    """
    built = _as_roles(roles, role_values)
    specs, errors = _build_errors(config, source, built or Roles(None), facts)
    _raise_all(errors)
    assert specs is not None
    return specs


def program_warnings(
    config: Mapping[str, Any],
    source: str,
    roles: Roles | tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
    facts: HostFacts | None = None,
) -> list[ConfigError]:
    """Each task in scope whose ``start`` program is missing here, or not
    executable: found as the spawn finds it (through the task's ``PATH``,
    or from its ``cwd`` for a relative path).  Warnings, not errors: the
    config may be meant for another host, or the program installed later.
    """
    lines: Mapping[KeyPath, int] = getattr(config, "lines", {})
    found = []
    for name, spec in sorted(check(config, source, roles, role_values, facts).items()):
        if not spec.in_scope:
            continue
        program = spec.process(0).argv[0]
        path: KeyPath = ("tasks", name, "commands", "start")
        if "/" in program:
            cwd = spec.process(0).cwd
            where = program if os.path.isabs(program) or not cwd else os.path.join(cwd, program)
            if not os.path.isfile(where):
                why = "does not exist"
            elif not os.access(where, os.X_OK):
                why = "is not executable"
            else:
                continue
        elif shutil.which(program, path=spec.search_path or os.defpath) is None:
            why = f"is not found in PATH ({spec.search_path or os.defpath})"
        else:
            continue
        found.append(
            ConfigError(
                source,
                line_of(lines, path),
                format_path(path),
                f"warning: program {program!r} {why} on this host",
            )
        )
    return found


# ---------------------------------------------------------------------------
# Public API: roles


@dataclass(frozen=True)
class Roles:
    """The roles of this host, from the roles file.

    ``names`` None means no roles file: every task is in scope and
    role_defines/role_defaults are ignored.  An empty tuple means a roles
    file with no roles: only tasks without ``roles`` are in scope.
    ``values`` holds the ``name=value`` lines (becoming ``Task_role_<name>``
    in every task's environment); a bare role has no entry.
    """

    names: tuple[str, ...] | None
    values: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    #: 1-based line of each role, for error messages; not part of equality
    #: so that moving a line is not a change of roles.
    lines: dict[str, int] = field(default_factory=dict, compare=False)


def parse_roles(text: str, source: str) -> Roles:
    """The roles in ``text``; raises ConfigError (with ``.errors``)."""
    names: list[str] = []
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    errors: list[ConfigError] = []
    # Lines end at "\n" only: splitlines() would also split at form feeds
    # and Unicode separators and throw the line numbers off.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _TRAILING_COMMENT.split(line, maxsplit=1)[0].rstrip()
        name, eq, value = line.partition("=")
        name = name.strip()
        if not ROLE_NAME.match(name):
            hint = "one role per line" if " " in name or "\t" in name else None
            errors.append(
                ConfigError(
                    source,
                    number,
                    "",
                    f"{name!r} is not a role name (letters, digits, '_', '.', '-')",
                    hint,
                )
            )
            continue
        if name in lines:
            errors.append(
                ConfigError(
                    source,
                    number,
                    "",
                    f"role {name!r} is listed twice (first on line {lines[name]})",
                )
            )
            continue
        names.append(name)
        lines[name] = number
        if eq:
            values[name] = value.strip()
    _raise_all(errors)
    return Roles(tuple(names), values, source, lines)


class RolesFileMissing(ConfigError):
    """The roles file named is not there.

    Never "every task in scope": at start it is an error (a typo in ``-r``
    must not make a fleet host run everything), and a running taskforce
    keeps the roles it has (the core decides, told by ``ConfigLoaded``).
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, None, "", "roles file not found", 'give "-r -" for no roles file')

    def __reduce__(self) -> tuple[Any, ...]:
        return (RolesFileMissing, (self.file,))


def load_roles(path: str | None) -> Roles:
    """The roles in the file at ``path``; None means no roles file, so no
    role filtering (as in the original).

    A missing file raises ``RolesFileMissing``, and a file that exists but
    cannot be read is an error too: running every task on a host that was
    meant to run a few is worse than keeping what runs.
    """
    if path is None:
        return Roles(None, {}, None)
    try:
        text = _read_text(path)
    except ConfigError as exc:
        if exc.message == "file not found":
            raise RolesFileMissing(path) from None
        raise
    return parse_roles(text, path)


def check_roles_against(config: Mapping[str, Any], roles: Roles) -> None:
    """ConfigError if the roles file names a role missing from settings.known_roles."""
    _raise_all(_roles_errors(config, roles))


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
            upper = text.upper()
            if not upper.startswith("SIG"):
                upper = "SIG" + upper
            # Lookup by name maps aliases (SIGIOT) to the canonical member.
            return signal.Signals[upper].name
    except (ValueError, KeyError):
        return None
    return None
