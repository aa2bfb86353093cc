"""The schema of one task: a table of its keys, each with its checker.

``TASK_RULES`` maps every task key to the function that checks its value;
``TASK_KEYS`` is derived from it, and the keys of a process's attributes
(``user``, ``cwd``, ``umask``...) come from ``ProcessSpec``'s declaration of
each field (``core.specs.Attribute``), through ``VALUE_CHECKS``, so a new
attribute needs no line here.  Checks of a task's structure that relate its
keys (events and their commands, ``requires`` and ``onexit`` targets) are
``TaskSchema``'s methods.

This module must never read a file or touch anything that runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from taskforce.config.checker import one_or_many
from taskforce.config.errors import suggest
from taskforce.config.readiness import READINESS_RULES
from taskforce.config.sockets import SocketsSchema
from taskforce.core.codec import freeze
from taskforce.core.specs import (
    CONTROLS,
    ENVIRONMENTS,
    LIMIT_NAMES,
    PROCESS_ATTRIBUTES,
    Attribute,
)
from taskforce.core.values import limit_pair, parse_limit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

EVENT_TYPES = ("self", "file_change", "python", "stop", "restart", "external")
EVENT_KEYS = ("type", "command", "signal", "path", "name")
ONEXIT_KEYS = ("type", "task")
ONEXIT_TYPES = ("start",)
#: Event commands that need no entry in ``commands``: ``start`` always has
#: one, and ``stop`` falls back to the built-in stop (as in the original).
BUILTIN_COMMANDS = ("start", "stop")


@dataclass
class Task:
    """What the checkers of one task's keys may need to know of it."""

    name: str
    #: its commands, checked first (events name them)
    commands: Mapping[str, Any] = field(default_factory=dict)


if TYPE_CHECKING:
    #: Checks one task key's value: (schema, value, key path, task) -> the
    #: value normalized.  Only called when the value is not null.
    TaskRule = Callable[["TaskSchema", Any, KeyPath, Task], Any]


class TaskSchema(SocketsSchema):
    """The checks of a task and of the parts of it that relate its keys."""

    def task(self, name: str, task: Any, path: KeyPath) -> Any:
        if not isinstance(task, dict):
            self.type_error(path, task, "a mapping (a task with at least commands.start)")
            return freeze(task)
        self.keys(task, path, TASK_KEYS, "task")
        commands = self.commands(task.get("commands"), (*path, "commands"), "commands" in task)
        known = Task(name, commands)
        out: dict[str, Any] = {}
        for key, value in task.items():
            rule = TASK_RULES.get(key) if isinstance(key, str) else None
            if rule is None or (value is None and key != "commands"):
                # null: the key is as good as absent; unknown keys are reported.
                out[key] = freeze(value)
            else:
                out[key] = rule(self, value, (*path, key), known)
        return out

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
                soft, hard = item.get("soft"), item.get("hard")
                if _literal_limit(soft) and _literal_limit(hard):
                    try:
                        limit_pair(soft, hard)  # the core's rule, on what was written
                    except ValueError as exc:
                        self.error(sub, str(exc))
                out[name] = freeze(item)
            else:
                out[name] = self.limit_value(item, sub)
        return out

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
            out[cname] = one_or_many(self.conditional(argv, sub, self.argv_item, multi=True))
        if "start" not in value:
            self.error(
                path,
                "no start command",
                suggest(next((k for k in value if isinstance(k, str)), None), ["start"])
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

        return one_or_many(self.conditional(value, path, leaf, multi=True))

    def entries(
        self,
        value: list[Any] | tuple[Any, ...],
        path: KeyPath,
        keys: tuple[str, ...],
        what: str,
        expected: str,
        out: list[Any],
    ) -> Iterator[tuple[int, KeyPath, dict[Any, Any]]]:
        """(index, path, entry) of each mapping in a list of ``what`` entries,
        its keys checked; anything else is reported and kept in ``out`` as
        it is, so the entries stay in place."""
        for index, entry in enumerate(value):
            sub = (*path, index)
            if not isinstance(entry, dict):
                self.type_error(sub, entry, expected)
                out.append(freeze(entry))
                continue
            self.keys(entry, sub, keys, what)
            yield index, sub, entry

    def events(self, value: Any, path: KeyPath, commands: Mapping[str, Any]) -> Any:
        if not isinstance(value, (list, tuple)):
            self.type_error(path, value, "a list of events ({type: ..., command: ...})")
            return freeze(value)
        out: list[Any] = []
        seen_kinds: dict[str, int] = {}
        expected = "an event mapping with type and command or signal"
        for index, sub, event in self.entries(value, path, EVENT_KEYS, "event", expected, out):
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
                            suggest(item, [*commands, *BUILTIN_COMMANDS]),
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
            norm[key] = one_or_many(
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
        out: list[Any] = []
        expected = "a mapping {type: start, task: NAME}"
        for _, sub, item in self.entries(value, path, ONEXIT_KEYS, "onexit", expected, out):
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


def single(leaf: Callable[[TaskSchema, Any, KeyPath], Any]) -> TaskRule:
    """A rule for one value (no list), maybe conditional, checked by ``leaf``."""

    def rule(schema: TaskSchema, value: Any, path: KeyPath, task: Task) -> Any:
        return schema.conditional(value, path, lambda v, p: leaf(schema, v, p), multi=False)

    return rule


def _no_numbers(schema: TaskSchema, value: Any, path: KeyPath) -> Any:
    return schema.text(value, path, numbers=False)


#: How a process attribute's key is checked, by the ``check`` its
#: ``Attribute`` names; "" is the generic check of its ``parse``.
VALUE_CHECKS: dict[str, Callable[[Attribute], TaskRule]] = {
    # A numeric uid/gid is fine.
    "text": lambda attr: single(TaskSchema.text),
    "path": lambda attr: single(_no_numbers),
    "umask": lambda attr: single(TaskSchema.umask),
    "limits": lambda attr: lambda schema, value, path, task: schema.limits(value, path),
    "output": lambda attr: lambda schema, value, path, task: schema.output(value, path),
    "sockets": lambda attr: lambda schema, value, path, task: schema.socket_names(value, path),
    "": lambda attr: single(
        lambda schema, value, path: schema.parsed(value, path, attr.parse or (lambda v: v))
    ),
}


def _process_rules() -> dict[str, TaskRule]:
    """The rule of each task key that a ``ProcessSpec`` field is read from."""
    return {
        attr.key: VALUE_CHECKS[attr.check](attr)
        for _, attr in PROCESS_ATTRIBUTES
        if attr.key is not None
    }


def _number(schema: TaskSchema, value: Any, path: KeyPath) -> Any:
    return schema.number(value, path)


def _positive(schema: TaskSchema, value: Any, path: KeyPath) -> Any:
    return schema.number(value, path, positive=True)


TASK_RULES: dict[str, TaskRule] = {
    # Checked before the others (events name them): see TaskSchema.task.
    "commands": lambda schema, value, path, task: task.commands,
    "control": single(lambda schema, v, p: schema.choice(v, p, CONTROLS, "control")),
    "requires": lambda schema, value, path, task: schema.names(value, path, task.name, "requires"),
    "start_delay": single(_number),
    "count": single(TaskSchema.count),
    "time_limit": single(_number),
    "stop_timeout": single(_number),
    "check_interval": single(_number),
    "check_timeout": single(_positive),
    "check_failures": single(TaskSchema.at_least_one),
    **_process_rules(),
    "roles": lambda schema, value, path, task: one_or_many(
        schema.conditional(value, path, schema.role_name, multi=True)
    ),
    "defines": lambda schema, value, path, task: schema.scalar_map(value, path, "defines"),
    "role_defines": lambda schema, value, path, task: schema.role_map(value, path, "role_defines"),
    "defaults": lambda schema, value, path, task: schema.scalar_map(value, path, "defaults"),
    "role_defaults": lambda schema, value, path, task: schema.role_map(
        value, path, "role_defaults"
    ),
    "events": lambda schema, value, path, task: schema.events(value, path, task.commands),
    "onexit": lambda schema, value, path, task: schema.onexit(value, path),
    "environment": single(lambda schema, v, p: schema.choice(v, p, ENVIRONMENTS, "environment")),
    "start_limit": lambda schema, value, path, task: schema.start_limit(value, path),
    **READINESS_RULES,
}
TASK_KEYS = tuple(TASK_RULES)


def _literal_limit(value: Any) -> bool:
    """Whether ``value`` is a limit written out (no tags) that parses."""
    if isinstance(value, str) and "{" in value:
        return False
    try:
        parse_limit(value)
    except ValueError:
        return False
    return True
