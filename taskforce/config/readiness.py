"""The schema of a task's readiness and rollout keys.

``ready`` (how a process shows it is ready: ``notify``, or a probe
``{tcp: PORT}``, ``{http: URL}``, ``{command: [ARGV...]}``),
``ready_interval``, ``ready_timeout``, ``watchdog_sec`` and ``rollout``
(``{max_surge: N, max_unavailable: N}``): their checks, as rules of the task
table (``tasks.TASK_RULES`` takes ``READINESS_RULES``).  What the values
mean is the core's (``core.readiness``); a value with ``{tags}`` is checked
there, once expanded.

This module must never read a file or touch anything that runs.
"""

from __future__ import annotations

from collections.abc import Callable

from taskforce.core.codec import freeze
from taskforce.core.readiness import PROBE_KINDS, ROLLOUT_KEYS, parse_probe_target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath
    from taskforce.config.tasks import Task, TaskSchema

    Rule = Callable[[TaskSchema, Any, KeyPath, Task], Any]


def _tagged(value: Any) -> bool:
    return isinstance(value, str) and "{" in value


def ready(schema: TaskSchema, value: Any, path: KeyPath, task: Task) -> Any:
    """``notify``, or one probe: ``{tcp: ...}``, ``{http: ...}``, ``{command: ...}``."""
    if isinstance(value, str):
        if value != "notify" and not _tagged(value):
            schema.error(
                path,
                f"expected notify or a probe ({{tcp: PORT}}, {{http: URL}}, "
                f"{{command: [PROGRAM, ARG...]}}), got {value!r}",
            )
        return value
    if not isinstance(value, dict):
        schema.type_error(
            path, value, "notify, or a probe such as {tcp: 8080} or {http: URL}", quote=False
        )
        return freeze(value)
    schema.keys(value, path, PROBE_KINDS, "ready probe")
    kinds = [key for key in value if key in PROBE_KINDS]
    if len(kinds) != 1:
        schema.error(
            path,
            "a probe has exactly one of "
            + ", ".join(PROBE_KINDS)
            + (f"; got {', '.join(map(str, kinds))}" if kinds else ""),
        )
        return freeze(value)
    (kind,) = kinds
    item, sub = value[kind], (*path, kind)
    if kind == "command":
        if item is None or item == [] or item == "":
            schema.error(sub, "the probe command is empty", "give it: {command: [PROGRAM, ARG...]}")
            return freeze(value)
        return {kind: schema.conditional(item, sub, schema.argv_item, multi=True)}
    if item is None or isinstance(item, (bool, list, dict)):
        schema.type_error(sub, item, "a port, HOST:PORT" if kind == "tcp" else "a URL")
    elif not _tagged(item):
        try:
            parse_probe_target(kind, item)
        except ValueError as exc:
            schema.error(sub, str(exc))
    return freeze(value)


def rollout(schema: TaskSchema, value: Any, path: KeyPath, task: Task) -> Any:
    """``{max_surge: N, max_unavailable: N}``, whole numbers, not both 0."""
    if not isinstance(value, dict):
        schema.type_error(path, value, "{max_surge: N, max_unavailable: N}", quote=False)
        return freeze(value)
    schema.keys(value, path, ROLLOUT_KEYS, "rollout")
    for key in ROLLOUT_KEYS:
        item = value.get(key)
        if item is None or _tagged(item):
            continue
        if isinstance(item, bool) or not isinstance(item, int):
            schema.type_error((*path, key), item, "a whole number >= 0", quote=False)
        elif item < 0:
            schema.error((*path, key), f"must be >= 0, got {item}")
    if value.get("max_surge") == 0 and value.get("max_unavailable") == 0:
        schema.error(
            path,
            "max_surge and max_unavailable are both 0: no process could ever be replaced",
            "allow one more process (max_surge: 1) or one fewer (max_unavailable: 1)",
        )
    return freeze(value)


def _number(positive: bool) -> Rule:
    def rule(schema: TaskSchema, value: Any, path: KeyPath, task: Task) -> Any:
        return schema.conditional(
            value, path, lambda v, p: schema.number(v, p, positive=positive), multi=False
        )

    return rule


READINESS_RULES: dict[str, Rule] = {
    "ready": ready,
    "ready_interval": _number(positive=True),
    "ready_timeout": _number(positive=False),
    "watchdog_sec": _number(positive=True),
    "rollout": rollout,
}
