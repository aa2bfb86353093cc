"""A task's context (the environment its processes see, before tags are
expanded) and whether it is in scope on this host.

Context precedence (later wins): the daemon's environment (less any inherited
``Task_*``, and less what systemd tells taskforce itself: ``SUPERVISOR_KEYS``),
the built-ins, top-level ``defines``, top-level ``role_defines``
of each active role, the task's ``defines``, the task's ``role_defines``.
Then defaults fill only names still absent: the task's ``role_defaults``, the
task's ``defaults``, top-level ``role_defaults``, top-level ``defaults``.
Active roles apply in roles-file order, so a later role wins.

Roles reach the context as the original defines them: a ``name=value`` line
sets ``Task_role_<name>`` to its value in every task's context, and so in
every process's environment.  A bare role is in the context too, but not set
(None): a conditional keyed on it applies, yet it is never exported, so
adding or removing a bare role changes no environment and restarts nothing
that stays in scope.  ``Task_pid``, ``Task_uid``, ``Task_gid`` and
``Task_started`` are facts of one process: not set here, the shell sets them
as it starts it, so they never make two specs differ.

This module must never do IO: the environment and host names arrive as data.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.core.context import ContextError, as_text, expand, resolve, resolve_one
from taskforce.core.specs import (
    CLEAN_ENVIRONMENT_KEEPS,
    ENVIRONMENTS,
    PER_PROCESS_KEYS,
    USER_ENV_KEYS,
    HostFacts,
    SpecError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def in_scope(
    task: Mapping[str, Any],
    roles: tuple[str, ...] | None,
    ctx: Mapping[str, Any],
    all_roles: bool = False,
) -> bool:
    """Whether a task belongs on this host: no roles file, no ``roles`` of
    its own, or a role shared with the host (with ``all_roles``: every one
    of its roles, as in the original's ``settings.all_roles: true``)."""
    if roles is None:
        return True
    wanted = [as_text(r) for r in resolve(task.get("roles"), ctx)]
    if not wanted:
        return True
    if all_roles:
        return all(role in roles for role in wanted)
    return any(role in roles for role in wanted)


def _layer(ctx: dict[str, Any], values: Mapping[str, Any] | None, *, fill: bool) -> None:
    for key, value in (values or {}).items():
        if not fill or key not in ctx:
            ctx[key] = as_text(value)


def _role_layers(
    by_role: Mapping[str, Mapping[str, Any]] | None, roles: tuple[str, ...] | None
) -> list[Mapping[str, Any]]:
    if not roles or not by_role:
        return []
    return [by_role[role] for role in roles if role in by_role]


def task_context(
    name: str,
    task: Mapping[str, Any],
    config: Mapping[str, Any],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str],
) -> dict[str, str | None]:
    """The context of ``task`` before ``Task_instance`` is set.

    With ``environment: clean`` the daemon's environment contributes only
    ``CLEAN_ENVIRONMENT_KEEPS``.  The choice may itself be conditional, so it
    is read from the full context, which is then built again without it.
    """
    ctx = _context(name, task, config, facts.environ, facts, roles, role_values)
    if task.get("environment") is None:
        return ctx
    try:
        choice = expand(as_text(resolve_one(task["environment"], ctx, "inherit")) or "", ctx)
    except ContextError as exc:
        raise SpecError(("environment",), str(exc)) from None
    if choice not in ENVIRONMENTS:
        raise SpecError(
            ("environment",),
            f"environment must be one of {', '.join(ENVIRONMENTS)}, got {choice!r}",
        )
    if choice == "inherit":
        return ctx
    kept = {key: facts.environ[key] for key in CLEAN_ENVIRONMENT_KEEPS if key in facts.environ}
    return _context(name, task, config, kept, facts, roles, role_values)


#: What a supervisor above taskforce (systemd) tells taskforce itself: its
#: notify socket, the sockets it passed and its watchdog.  Never a task's --
#: a task told to notify gets taskforce's own socket, one with sockets gets
#: its own -- or a task could speak for taskforce, or take its sockets.
SUPERVISOR_KEYS = frozenset(
    {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"}
)


def _context(
    name: str,
    task: Mapping[str, Any],
    config: Mapping[str, Any],
    environ: Mapping[str, str],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str],
) -> dict[str, str | None]:
    # A task run as another user gets that user's HOME, USER, LOGNAME and
    # SHELL (from its passwd entry, in the shell), not taskforce's own; the
    # config may still define them.
    skipped = USER_ENV_KEYS if task.get("user") is not None else ()
    ctx: dict[str, str | None] = {
        key: value
        for key, value in environ.items()
        if not key.startswith("Task_") and key not in skipped and key not in SUPERVISOR_KEYS
    }
    ctx.update(
        Task_name=name,
        Task_host=facts.host,
        Task_fqdn=facts.fqdn,
        Task_ppid=str(facts.pid),
        Task_instance=None,
    )
    ctx.update(dict.fromkeys(PER_PROCESS_KEYS))
    for role in roles or ():
        # A bare role is None: present for conditionals, never exported.
        ctx[f"Task_role_{role}"] = role_values.get(role)
    for key in ("user", "group", "pidfile", "cwd", "procname"):
        if task.get(key) is not None:
            ctx[f"Task_{key}"] = as_text(resolve_one(task[key], ctx, None))
    _layer(ctx, config.get("defines"), fill=False)
    for layer in _role_layers(config.get("role_defines"), roles):
        _layer(ctx, layer, fill=False)
    _layer(ctx, task.get("defines"), fill=False)
    for layer in _role_layers(task.get("role_defines"), roles):
        _layer(ctx, layer, fill=False)
    for layer in reversed(_role_layers(task.get("role_defaults"), roles)):
        _layer(ctx, layer, fill=True)
    _layer(ctx, task.get("defaults"), fill=True)
    for layer in reversed(_role_layers(config.get("role_defaults"), roles)):
        _layer(ctx, layer, fill=True)
    _layer(ctx, config.get("defaults"), fill=True)
    return ctx
