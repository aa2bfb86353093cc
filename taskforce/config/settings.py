"""The schema of ``settings``: a table of its keys, each with its checker,
and the checks of an HTTP service.

``SETTINGS_RULES`` and ``HTTP_RULES`` map each key to the function that
checks its value; ``SETTINGS_KEYS`` and ``HTTP_KEYS`` are derived from them.
Unlike a task's, a setting takes no ``{tags}`` (there is no task context to
expand them in), except the values of an HTTP service that say so.

This module must never read a file or touch anything that runs.
"""

from __future__ import annotations

from collections.abc import Callable

from taskforce.config.checker import ROLE_NAME, Checker, is_float, is_num
from taskforce.config.errors import describe
from taskforce.core.codec import freeze

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

ALLOW_KEYS = ("status", "control")
RECORD_KEYS = ("file", "max_bytes", "backups", "checkpoint_bytes")

#: What a rule returns for a key to leave out of the normalized settings
#: (null meaning "the default", which the core fills in).
OMIT: Any = object()

if TYPE_CHECKING:
    #: Checks one settings key's value: (schema, value, key path) -> the
    #: value normalized, or OMIT.
    SettingsRule = Callable[["SettingsSchema", Any, KeyPath], Any]


class SettingsSchema(Checker):
    """The checks of ``settings`` and of its HTTP services."""

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
            rule = SETTINGS_RULES.get(key) if isinstance(key, str) else None
            if rule is not None:
                checked = rule(self, item, (*path, key))
                if checked is not OMIT:
                    out[key] = checked
        low: Any = out.get("backoff_initial")
        high: Any = out.get("backoff_max")
        if is_num(low) and is_num(high) and high < low:
            self.error(
                (*path, "backoff_max"), f"backoff_max ({high}) is below backoff_initial ({low})"
            )
        return out

    def all_roles(self, item: Any, path: KeyPath) -> Any:
        spelled_bool = isinstance(item, str) and item.lower() in ("true", "false")
        if isinstance(item, (list, tuple)) or isinstance(item, str) and not spelled_bool:
            # Before it meant what the original never did: the list of the
            # fleet's roles.  That list is known_roles now.
            self.error(
                path,
                "all_roles is true or false (true: a task needs all of its roles, "
                "not just one, as in the original); the list of the fleet's "
                "roles is settings.known_roles",
                "rename this key to known_roles",
            )
            return OMIT
        return OMIT if item is None else self.boolean(item, path)

    def known_roles(self, item: Any, path: KeyPath) -> Any:
        if item is None:
            return OMIT
        items = (item,) if isinstance(item, str) else item
        if not isinstance(items, (list, tuple)):
            self.type_error(path, item, "a list of role names")
            return OMIT
        names = []
        for index, role in enumerate(items):
            role_path = (*path, index) if items is item else path
            role = self.text(role, role_path, what="a role name")
            if isinstance(role, str) and not ROLE_NAME.match(role):
                self.error(role_path, f"{role!r} is not a role name")
            names.append(str(role))
        return tuple(names)

    def seconds(self, item: Any, path: KeyPath) -> Any:
        if item is None:
            return OMIT  # null means the default; the core would choke on it
        self.number(item, path, tags=False)
        return float(item) if isinstance(item, str) and is_float(item) else item

    def record_setting(self, item: Any, path: KeyPath) -> Any:
        if isinstance(item, dict):
            return self.record(item, path)
        if item is not None and not isinstance(item, str):
            self.type_error(
                path, item, "a file path, {file: PATH, max_bytes: ...} or null", quote=False
            )
            return OMIT
        return item

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
                rule = HTTP_RULES.get(key) if isinstance(key, str) else None
                if rule is None or item is None:
                    out[key] = freeze(item)
                else:
                    out[key] = rule(self, item, (*sub, key))
            self.http_auth(out, sub)
            services.append(out)
        return tuple(services)

    def listen(self, item: Any, path: KeyPath) -> Any:
        if isinstance(item, int) and not isinstance(item, bool):
            self.error(
                path,
                f"expected an address, got {describe(item)}",
                f'for a TCP port write ":{item}"',
            )
            return item
        return self.conditional(item, path, self.plain_text, multi=False)

    def plain_text(self, value: Any, path: KeyPath) -> Any:
        return self.text(value, path, numbers=False)

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


def _unless_null(rule: SettingsRule) -> SettingsRule:
    """``rule``, with null meaning the default (the key is left out)."""
    return lambda schema, item, path: OMIT if item is None else rule(schema, item, path)


def _one(leaf: Callable[[SettingsSchema, Any, KeyPath], Any]) -> SettingsRule:
    """One value (no list), maybe conditional, checked by ``leaf``."""
    return lambda schema, item, path: schema.conditional(
        item, path, lambda v, p: leaf(schema, v, p), multi=False
    )


SETTINGS_RULES: dict[str, SettingsRule] = {
    "http": SettingsSchema.http,
    "all_roles": SettingsSchema.all_roles,
    "known_roles": SettingsSchema.known_roles,
    "stop_timeout": SettingsSchema.seconds,
    "stable_after": SettingsSchema.seconds,
    "backoff_initial": SettingsSchema.seconds,
    "backoff_max": SettingsSchema.seconds,
    "pidfile_timeout": SettingsSchema.seconds,
    "record": SettingsSchema.record_setting,
    "output": _unless_null(SettingsSchema.output),
    "secret_names": _unless_null(
        lambda schema, item, path: schema.text_list(item, path, "a name pattern such as *PASSWORD*")
    ),
    "file_group": _unless_null(
        lambda schema, item, path: schema.text(item, path, what="a group name or number")
    ),
    "start_limit": _unless_null(
        lambda schema, item, path: schema.start_limit(item, path, tags=False)
    ),
}
SETTINGS_KEYS = tuple(SETTINGS_RULES)

#: The keys of one ``settings.http`` service; rules see no null values.
HTTP_RULES: dict[str, SettingsRule] = {
    "listen": SettingsSchema.listen,
    "certfile": _one(SettingsSchema.plain_text),
    "allow_control": _one(SettingsSchema.boolean),
    "timeout": _one(lambda schema, v, p: schema.number(v, p, positive=True)),
    "allow": SettingsSchema.allow,
    "token_file": _one(SettingsSchema.plain_text),
    "cafile": _one(SettingsSchema.plain_text),
    "client_subject": lambda schema, item, path: schema.text_list(item, path, "text"),
    "server_names": lambda schema, item, path: schema.text_list(item, path, "text"),
    "public_status": _one(SettingsSchema.boolean),
}
HTTP_KEYS = tuple(HTTP_RULES)
