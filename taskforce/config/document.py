"""Reading YAML: the document as ``yaml.safe_load`` builds it, plus where
each key was written.

``parse`` returns the data with the line of every key path, the raw text of
the scalars YAML 1.1 may have read otherwise than meant (``off``, ``0755``),
and the keys given twice in one mapping, so that the checker can place and
explain every problem.  A document whose aliases would expand it beyond
``MAX_NODES`` values is refused before anything expands it.  A YAML syntax
error becomes a ``ConfigError`` with a hint where the cause is common (a
tab, a missing comma, an unquoted ": ").

This module reads the file it is given and nothing else; it never judges
what the document means (that is ``schema``'s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import yaml

from taskforce.config.errors import ConfigError, format_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

# The C loader is much faster; safe_load semantics either way.
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: The most YAML values (nodes: every scalar, list and mapping, keys
#: included) a config may hold once its aliases are expanded.  An
#: alias (``*name``) costs nothing to read but everything after reading walks
#: it as a copy, so a 400-byte "billion laughs" file would stand for 10**9
#: nodes.  A config of 1,000 ordinary tasks holds about 50,000; this leaves
#: twenty times that.
MAX_NODES = 1_000_000

_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MISSING = object()
_SCALAR_TAGS = frozenset({_BOOL_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class LoadedConfig(dict):  # type: ignore[type-arg]
    """The normalized config; knows where each key was written.

    A plain dict to every consumer; ``source`` and ``lines`` (key path →
    1-based line) let ``check`` place errors found later by the core.  The
    table of lines is as big as the config itself and a config that loaded
    cleanly seldom needs it again (a socket that cannot be opened, a
    program not found), so it is not kept: it is read again from ``text``
    when first asked for.  A config read piece by piece (see ``entries``)
    gives a function that gives its text back from a compressed copy (a
    twentieth of the text, for a fleet's config).
    """

    source: str = "<config>"
    #: the text it was read from (or what gives it), until its lines are
    #: asked for (None: not from text, or already read; then ``lines``
    #: holds what is known)
    text: str | Callable[[], str] | None = None
    _lines: dict[KeyPath, int] | None = None

    @property
    def lines(self) -> dict[KeyPath, int]:
        if self._lines is None:
            text, self.text = self.text, None
            self._lines = {}
            if text is not None:
                try:
                    self._lines = parse(
                        text if isinstance(text, str) else text(), self.source
                    ).lines
                except ConfigError:  # cannot happen to a text that loaded
                    pass
        return self._lines

    @lines.setter
    def lines(self, lines: dict[KeyPath, int]) -> None:
        self._lines = lines

    def lines_from(self, text: str | Callable[[], str]) -> None:
        """Find ``lines`` in ``text`` when they are first asked for."""
        self._lines, self.text = None, text


@dataclass
class Parsed:
    """A YAML document read, with what its errors need to name their place."""

    data: Any
    lines: dict[KeyPath, int]
    #: Raw text of bool/int/float scalars, to explain YAML 1.1 surprises.
    raws: dict[KeyPath, str]
    #: Raw text of non-string keys, by the path they lead to.
    key_raws: dict[KeyPath, str]
    #: (path, line, first line) of keys given twice in one mapping.
    duplicates: list[tuple[KeyPath, int, int]]
    #: YAML values (nodes) in it, its aliases expanded (see ``MAX_NODES``).
    nodes: int = 0


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


def parse(text: str, source: str) -> Parsed:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        parsed = Parsed(None, {}, {}, {}, [])
        if node is not None:
            parsed.nodes = _within_budget(node, source)
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


def _within_budget(root: yaml.Node, source: str, budget: int = MAX_NODES) -> int:
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
    builder does after it.  Returns the size.
    """
    counter = _Counter(budget)
    try:
        return counter.size(root)
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

    def __init__(self, loader: Any, parsed: Parsed) -> None:
        self.loader = loader
        self.parsed = parsed
        #: An alias reuses a node; it gets the same object, built once (as
        #: in PyYAML), which also keeps a "billion laughs" file cheap.
        self.done: dict[int, Any] = {}
        #: Each text once: the loader makes a new string for every key and
        #: value, and a fleet's entries repeat the same ones (``commands``,
        #: ``start``, a program's path) thousands of times, kept as long as
        #: the config runs.
        self.texts: dict[str, str] = {}

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR_TAG:
                return self.texts.setdefault(node.value, node.value)
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
                key: Any = self.texts.setdefault(key_node.value, key_node.value)
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


def read_text(path: str) -> str:
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
