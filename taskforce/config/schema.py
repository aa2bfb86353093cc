"""The whole config's schema: the top level, and what relates its parts.

``Schema`` joins the checks of tasks (``tasks``) and of settings
(``settings``) with those of the top level, then checks what spans them:
that ``requires`` and ``onexit`` name tasks that exist, and that every role
used is in ``settings.known_roles`` when that is given.  ``check_text`` runs
one pass over a document and returns the normalized config with every
problem found.

This module reads nothing but the text it is given and never touches
anything that runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.config import entries
from taskforce.config.document import LoadedConfig, Parsed, parse
from taskforce.config.errors import ConfigError, describe, suggest, suggest_key
from taskforce.config.settings import SettingsSchema
from taskforce.config.tasks import TASK_KEYS, TaskSchema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.entries import Entry
    from taskforce.config.errors import KeyPath

TOP_KEYS = (
    "tasks",
    "settings",
    "sockets",
    "defines",
    "role_defines",
    "defaults",
    "role_defaults",
)


class Schema(TaskSchema, SettingsSchema):
    """One validation pass over a whole document.

    ``checked``: the tasks already checked one by one (``entries``), by
    name; their entries are taken as they are, and only the checks that
    relate them to the rest run again.
    """

    def __init__(
        self, source: str, parsed: Parsed, checked: Mapping[str, Entry] | None = None
    ) -> None:
        super().__init__(source, parsed)
        self.checked = checked

    def task(self, name: str, task: Any, path: KeyPath) -> Any:
        if self.checked is None:
            return super().task(name, task, path)
        entry = self.checked[name]
        if entry.refs is not None:
            task_refs, socket_refs, role_uses = entry.refs
            self.task_refs += task_refs
            self.socket_refs += socket_refs
            self.role_uses += role_uses
        return entry.value

    def misplaced(self, key: str, what: str) -> str | None:
        if what == "top-level" and key in TASK_KEYS:
            return "task keys belong under tasks.NAME"
        if what == "task" and key in ("settings", "tasks"):
            return f"{key} belongs at the top level"
        return None

    def top(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            what = "empty" if data is None else describe(data)
            self.error((), f"the config must be a mapping with a 'tasks' key, got {what}")
            return {}
        self.keys(data, (), TOP_KEYS, "top-level")
        out: dict[str, Any] = {}
        tasks = data.get("tasks")
        if "tasks" not in data:
            self.error((), "the config has no 'tasks'", suggest_key(data, "tasks"))
        elif not isinstance(tasks, dict):
            self.type_error(("tasks",), tasks, "a mapping of task names to tasks")
        out["settings"] = self.settings(data.get("settings"))
        out["sockets"] = self.sockets(data.get("sockets"))
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
        self.socket_references(out["sockets"])
        self.undeclared_roles(out["settings"].get("known_roles"))
        # Order the keys as documented, tasks first.
        return {key: out[key] for key in TOP_KEYS}

    def references(self, tasks: Mapping[str, Any]) -> None:
        for path, target, key in self.task_refs:
            if "{" in target or target in tasks:
                continue  # tags are expanded by the core, which checks again
            what = "requires" if key == "requires" else "onexit starts"
            self.error(path, f"{what} unknown task {target!r}", suggest(target, tasks))

    def undeclared_roles(self, declared: tuple[str, ...] | None) -> None:
        if declared is None:
            return
        for path, role in self.role_uses:
            if role not in declared:
                self.error(
                    path,
                    f"role {role!r} is not in settings.known_roles",
                    suggest(role, declared) or "add it to settings.known_roles",
                )


def check_text(text: str, source: str) -> tuple[LoadedConfig, list[ConfigError]]:
    """The normalized config in ``text`` and every problem of its schema.

    Raises ConfigError only for a document that cannot be read as YAML.
    A document read before with few changes is read piece by piece
    (``entries``), when that is sure to give the same.
    """
    config = entries.check(text, source)
    if config is not None:
        return config, []
    parsed = parse(text, source)
    schema = Schema(source, parsed)
    config = LoadedConfig(schema.top(parsed.data))
    config.source = source
    config.text = text  # (its lines are read again from it when asked for)
    return config, schema.errors
