"""Reading a config again in time that grows with what changed, not with its size.

From one reload to the next, a config of thousands of tasks is mostly the
same text.  ``check`` cuts the text of the ``tasks`` mapping into one piece
per task (a line as indented as the first task starts the next one), and
parses and checks only the pieces it has not seen in the last two loads;
every other task's checked entry is the very object of the last load, so the
core's build and diff see at once that it did not change (``old is new``).
Pieces are known by their SHA-256 (16 bytes of it), not kept as text: the
text of a config, for the lines of its keys, is kept compressed, whole.
What is outside ``tasks`` (settings, defines...) is read as one document of
its own, with the tasks' lines left blank so every line keeps its number.

Cutting is a shortcut, never a second reading of the rules.  It is taken
only where it cannot change the outcome, and each cut is verified: the rest
of the document must have its ``tasks`` key on the line the cut found, each
piece must hold exactly one key, on its first line, and a piece that uses an
anchor or an alias is read alone (an alias to another piece fails there).
Anything else -- a tab or a carriage return, ``tasks`` written other than one
key per line, two tasks of one name, a document over ``MAX_NODES``, a
problem of any kind -- returns None, and the caller reads the whole document
(``schema.check_text``), which reports every problem with its line.  So
errors are worded and placed exactly as before, and a config that loads
loads to the same value either way (tests/test_config_entries.py).

This module reads nothing but the text it is given and never touches
anything that runs.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from taskforce.config.document import MAX_NODES, LoadedConfig, Parsed, parse
from taskforce.config.errors import ConfigError
from taskforce.core.sha import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

    #: (task_refs, socket_refs, role_uses), as ``checker.Checker`` collects them
    Refs = tuple[
        tuple[tuple[KeyPath, str, str], ...],
        tuple[tuple[KeyPath, str], ...],
        tuple[tuple[KeyPath, str], ...],
    ]

#: Characters that make indentation or line numbers ambiguous to a cut.
_ODD = ("\t", "\r", "\x85", "\u2028", "\u2029", "\ufeff")
#: ``tasks:`` alone on a line at the left margin: a block mapping follows.
_BLOCK = re.compile(r"(tasks|\"tasks\"|'tasks')[ ]*:[ ]*(#.*)?\Z")
#: ``"tasks": {`` alone on a line: a flow mapping (JSON) follows.
_FLOW = re.compile(r"( *)(tasks|\"tasks\"|'tasks')[ ]*:[ ]*\{[ ]*(#.*)?\Z")
#: The end of a flow ``tasks`` mapping: its ``}`` alone on a line.
_FLOW_END = re.compile(r"\}[ ]*,?[ ]*(#.*)?\Z")
#: What cannot start a task's key (a list item, flow punctuation, a comment,
#: an anchor, alias or tag, a complex key...).
_NOT_A_KEY = frozenset("-?:,[]{}#&*!|>%@`")


@dataclass(frozen=True, slots=True)
class Entry:
    """One task's piece of text, parsed and checked (one per task, kept
    for the next load: hence ``__slots__``)."""

    name: str
    #: the entry as the schema normalized it (``TaskSchema.task``)
    value: Any
    #: what the whole config's checks need of it (see ``checker.Checker``):
    #: its task_refs, socket_refs and role_uses, or None where all three
    #: are empty (most tasks: one field, not three, in each of thousands)
    refs: Refs | None
    #: YAML values it holds, its own mapping not counted
    nodes: int


@dataclass
class Cut:
    """A document cut into its ``tasks`` pieces and the rest."""

    #: the ``tasks`` mapping is flow style (``{...}``, as JSON is)
    flow: bool
    #: the document with every line of the pieces left blank
    rest: str
    #: line number of the ``tasks`` key (1-based)
    tasks_line: int
    #: each task's text, in file order
    pieces: list[str]


def cut(text: str) -> Cut | None:
    """``text`` cut into tasks and the rest, or None where that is not safe."""
    if any(odd in text for odd in _ODD):
        return None
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if _BLOCK.match(line):
            return _cut_block(lines, number)
        flow = _FLOW.match(line)
        if flow:
            return _cut_flow(lines, number, len(flow.group(1)))
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    """Whether a line holds more than blanks and a comment."""
    stripped = line.lstrip(" ")
    return bool(stripped) and stripped[0] != "#"


def _cut_block(lines: list[str], at: int) -> Cut | None:
    starts: list[int] = []
    indent = 0
    end = len(lines)
    for number in range(at + 1, len(lines)):
        line = lines[number]
        if not _content(line):
            continue
        own = _indent(line)
        if not starts:
            if own == 0:
                return None  # no task at all: let the whole document say so
            indent = own
        if own == indent:
            if line[own] in "}]":
                continue  # the end of a flow value begun above: its piece reads it
            if line[own] in _NOT_A_KEY:
                return None
            starts.append(number)
        elif own < indent:
            if own:
                return None
            end = number
            break
    return _pieces(lines, at, starts, end, flow=False)


def _cut_flow(lines: list[str], at: int, outer: int) -> Cut | None:
    starts: list[int] = []
    indent = 0
    end = None
    for number in range(at + 1, len(lines)):
        line = lines[number]
        if not _content(line):
            continue
        own = _indent(line)
        if own <= outer:
            if own < outer or not _FLOW_END.match(line, own):
                return None
            end = number
            break
        if not starts:
            indent = own
        if own == indent and line[own] not in _NOT_A_KEY:
            starts.append(number)
        elif own < indent:
            return None
    if end is None:
        return None
    return _pieces(lines, at, starts, end, flow=True)


def _pieces(lines: list[str], at: int, starts: list[int], end: int, *, flow: bool) -> Cut | None:
    if not starts:
        return None
    # Comments and blank lines between the key line and the first task stay
    # in the rest; each piece runs to the next one's first line.
    bounds = [*starts, end]
    pieces = ["\n".join(lines[bounds[i] : bounds[i + 1]]) for i in range(len(starts))]
    rest = "\n".join([*lines[: starts[0]], *[""] * (end - starts[0]), *lines[end:]])
    return Cut(flow, rest, at + 1, pieces)


#: New pieces read as one document (at most).
READ_AT_ONCE = 256
#: A piece read in isolation because it holds an anchor or an alias.
_ALIASED = ("&", "*")


def _read(pieces: list[str], flow: bool, source: str) -> list[tuple[str, Any, Parsed]] | None:
    """Parse ``pieces`` as one document: each one's (name, value, Parsed),
    or None when they do not read as one task each, on its first line."""
    if flow:
        # Every piece is followed by a comma, as inside the real mapping.
        pieces = [p if p.rstrip().endswith(",") else p + "\n," for p in pieces]
        text = "{" + "\n".join(pieces) + "\n}"
    else:
        text = "\n".join(pieces)
    try:
        parsed = parse(text, source)
    except ConfigError:
        return None
    data = parsed.data
    if not isinstance(data, dict) or len(data) != len(pieces) or parsed.duplicates:
        return None
    # The checks look up what was written at a key's path (``0755``, say),
    # from the top of the whole document.
    parsed.raws = {("tasks", *path): raw for path, raw in parsed.raws.items()}
    parsed.key_raws = {("tasks", *path): raw for path, raw in parsed.key_raws.items()}
    line = 1
    out = []
    for piece, (name, value) in zip(pieces, data.items(), strict=True):
        if not isinstance(name, str) or not name or parsed.lines.get((name,)) != line:
            return None
        out.append((name, value, parsed))
        line += piece.count("\n") + 1
    return out


def _key(piece: str) -> bytes:
    """What a piece is known by in the cache: 16 bytes of its SHA-256 (a
    quarter or less of the text, and no string object per task)."""
    digest: bytes = sha256(piece.encode()).digest()
    return digest[:16]


class _Checks:
    """The cache of checked pieces, and the checks of a whole cut."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: checked entries by their piece's ``_key`` (None: cannot be cut
        #: alone), of the last two different loads, in the style ``flow`` says
        self.last: dict[bytes, Entry | None] = {}
        self.before: dict[bytes, Entry | None] = {}
        self.flow = False
        #: the rest of the last cut, parsed
        self.rest: tuple[str, Parsed] | None = None

    def check(self, text: str, source: str) -> LoadedConfig | None:
        found = cut(text)
        if found is None:
            return None
        with self.lock:
            entries = self._entries(found, source)
            if entries is None:
                return None
            rest = self._rest(found, source)
            if rest is None:
                return None
        return _whole(found, rest, entries, _compressed(text), source)

    def _entries(self, found: Cut, source: str) -> list[Entry] | None:
        if found.flow != self.flow:
            # A piece reads differently in the other style: nothing known holds.
            self.last, self.before, self.flow = {}, {}, found.flow
        known: dict[bytes, Entry | None] = {}
        keys = [_key(piece) for piece in found.pieces]
        missing: list[tuple[bytes, str]] = []
        alone: list[tuple[bytes, str]] = []
        ok = True
        for key, piece in zip(keys, found.pieces, strict=True):
            entry = self.last.get(key, self) if key in self.last else self.before.get(key, self)
            if isinstance(entry, Entry) or entry is None:
                known[key] = entry
                ok = ok and entry is not None
            else:
                (alone if any(mark in piece for mark in _ALIASED) else missing).append((key, piece))
        # Read a few hundred at a time: the parse of a piece is many times
        # its checked entry, and a whole fleet's parse at once left the
        # allocator's arenas holed for good by the entries kept among it.
        for start in range(0, len(missing), READ_AT_ONCE):
            ok = ok and self._check_new(
                missing[start : start + READ_AT_ONCE], found.flow, source, known
            )
        for one in alone:
            ok = ok and self._check_new([one], found.flow, source, known)
        if not ok:
            # Keep what was learnt (a piece that cannot be read alone is
            # not tried again), and what the last good load knew.
            self.last.update(known)
            return None
        if len(known) != len(self.last) or any(key not in self.last for key in known):
            self.before, self.last = self.last, known
        # else the very pieces of the last load (a start's second reading, a
        # reload that changed no task): one table of them is enough.
        return [known[key] for key in keys]  # type: ignore[misc]

    def _check_new(
        self,
        new: list[tuple[bytes, str]],
        flow: bool,
        source: str,
        known: dict[bytes, Entry | None],
    ) -> bool:
        """Read and check the pieces of ``new`` (key, text) as one
        document, into ``known``."""
        if not new:
            return True
        read = _read([piece for _, piece in new], flow, source)
        if read is None:
            if len(new) == 1:
                known[new[0][0]] = None
            return False
        from taskforce.config.schema import Schema  # schema imports this module

        schema = Schema(source, read[0][2])
        ok = True
        for (key, _), (name, value, _) in zip(new, read, strict=True):
            schema.task_refs, schema.socket_refs, schema.role_uses = [], [], []
            errors = len(schema.errors)
            checked = schema.task(name, value, ("tasks", name))
            if len(schema.errors) > errors:
                known[key] = None
                ok = False
                continue
            refs = (tuple(schema.task_refs), tuple(schema.socket_refs), tuple(schema.role_uses))
            known[key] = Entry(name, checked, refs if any(refs) else None, _nodes(value))
        return ok

    def _rest(self, found: Cut, source: str) -> Parsed | None:
        if self.rest is not None and self.rest[0] == found.rest:
            parsed = self.rest[1]
        else:
            try:
                parsed = parse(found.rest, source)
            except ConfigError:
                return None
            self.rest = (found.rest, parsed)
        data = parsed.data
        empty: Any = {} if found.flow else None
        if (
            not isinstance(data, dict)
            or parsed.lines.get(("tasks",)) != found.tasks_line
            or data.get("tasks", self) != empty
        ):
            return None
        return parsed


def _nodes(value: Any) -> int:
    """YAML values in ``value`` (as ``document``'s count, key and value)."""
    if isinstance(value, Mapping):
        return 1 + sum(1 + _nodes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return 1 + sum(_nodes(item) for item in value)
    return 1


def _compressed(text: str) -> Callable[[], str]:
    """What gives ``text`` back, keeping it compressed (a config's text is
    asked for again only for the lines of its keys, seldom: a fleet's
    config is 20 or more times smaller so)."""
    blob = zlib.compress(text.encode(), 1)

    def whole() -> str:
        return zlib.decompress(blob).decode()

    return whole


def _whole(
    found: Cut, rest: Parsed, entries: list[Entry], text: Callable[[], str], source: str
) -> LoadedConfig | None:
    from taskforce.config.schema import Schema

    names: dict[str, Entry] = {}
    nodes = rest.nodes
    for entry in entries:
        if entry.name in names:
            return None  # a task twice: the whole document says where
        names[entry.name] = entry
        nodes += 1 + entry.nodes
    if nodes > MAX_NODES:
        return None
    schema = Schema(source, rest, checked=names)
    data = dict(rest.data)
    data["tasks"] = names
    config = LoadedConfig(schema.top(data))
    if schema.errors:
        return None
    config.source = source
    config.lines_from(text)
    return config


_CHECKS = _Checks()


def check(text: str, source: str) -> LoadedConfig | None:
    """The normalized config in ``text``, read piece by piece, or None:
    then read it whole (``schema.check_text``)."""
    return _CHECKS.check(text, source)
