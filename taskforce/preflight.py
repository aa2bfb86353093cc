"""Checks made before the daemon starts: listeners that must not run.

``auth_problems`` says why the control listeners asked for would be
unprotected over TCP; ``held_sockets`` says which control socket a live
process already holds.  ``taskforce.cli`` refuses to start (and ``-C``
reports) on either.  Split out of ``taskforce.cli``.

This module only reads the config and the sockets' holders; it never
binds, signals or starts anything.
"""

from __future__ import annotations

import argparse

from taskforce.config import (
    ConfigError,
    load_roles,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def auth_problems(args: argparse.Namespace, config: dict[str, Any]) -> list[str]:
    """Why the listeners asked for (config and ``-w``/``-c``/``-A``) must not
    run: control over TCP that nothing protects (see ``control.listen``)."""
    settings = config.get("settings") or {}
    if not (settings.get("http") or args.http is not None):
        return []  # (before the imports: no listener, no TLS machinery)
    from taskforce.config import host_facts
    from taskforce.control.listen import ListenError, services
    from taskforce.control.listen import auth_problems as problems_of
    from taskforce.control.options import Options

    options = Options(listen=args.http, certfile=args.certfile, allow_control=args.allow_control)
    try:
        found = services(config, options, host_facts(), None, {})
    except ListenError:
        return []  # reported, with its reason, when the server starts
    return problems_of(found)


def held_sockets(
    args: argparse.Namespace, config: dict[str, Any], roles_path: str | None
) -> list[str]:
    """Why the control sockets asked for (config and ``-w``) cannot be
    ours: a live process listens there.  A stale socket (its taskforce was
    killed) is not a reason: the listener takes it over."""
    settings = config.get("settings") or {}
    if not (settings.get("http") or args.http is not None):
        return []  # (before the imports: no listener, no TLS machinery)
    from taskforce.config import host_facts
    from taskforce.control.listen import ListenError, holder, services
    from taskforce.control.options import Options

    options = Options(listen=args.http, certfile=args.certfile, allow_control=args.allow_control)
    try:
        roles = load_roles(roles_path)
        found = services(config, options, host_facts(), roles.names, roles.values)
    except (ConfigError, OSError, ListenError):
        return []  # reported, with its reason, when the server starts
    problems = []
    for service in found:
        who = holder(service.listen) if service.is_unix else None
        if who is not None:
            problems.append(
                f"the control socket {service.listen} is held by {who}; "
                "stop that one first, or listen elsewhere (-w PATH)"
            )
    return problems
