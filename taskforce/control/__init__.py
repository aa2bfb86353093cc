"""The control path: an HTTP/1.1 server for status and control on the
daemon's own event loop (Unix socket, TCP, TLS).

``ControlServer`` is what the daemon holds; ``Options`` carries the command
line's ``-w``/``-c``/``-A``.  The endpoints are in ``api``, one connection's
bytes in ``http``, listening sockets in ``listen``.  Nothing in this package
decides about tasks: changes go to the core as events.
"""

from __future__ import annotations

from typing import Any

from taskforce.control.options import Options

__all__ = ["DEFAULT_LISTEN", "ControlServer", "Options", "Service"]


def __getattr__(name: str) -> Any:
    # The server, HTTP and TLS load only when a listener is configured.
    if name == "ControlServer":
        from taskforce.control.server import ControlServer

        return ControlServer
    if name in ("DEFAULT_LISTEN", "Service"):
        from taskforce.control import listen

        return getattr(listen, name)
    raise AttributeError(name)
