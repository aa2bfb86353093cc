"""The control path: an HTTP/1.1 server for status and control on the
daemon's own event loop (Unix socket, TCP, TLS).

``ControlServer`` is what the daemon holds (``Daemon.server``); ``Options``
carries the command line's ``-w``/``-c``/``-A``.  The endpoints are in
``api``, one connection's bytes in ``http``, listening sockets in
``listen``, and what the server needs of the daemon in ``shell`` (the
``Shell`` protocol, which ``taskforce.simulator.Simulation`` keeps too).
Nothing in this package decides about tasks: changes go to the core as
events.

The name is the one the docs, ``tfctl`` and the original taskforce give
this path ("the control path", ``/manage/control``); it is not the task key
``control:`` (a task's start mode), nor the operator requests the core
judges (``core/requests.py``).
"""

from __future__ import annotations

from taskforce.control.options import Options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
