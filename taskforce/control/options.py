"""The command line's say over the control path, importable without the server.

Kept apart so that a daemon with no listener never loads the HTTP and TLS
machinery (a few MiB of memory).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """The command line's say: ``-w LISTEN``, ``-c CERTFILE``, ``-A``."""

    listen: str | None = None
    certfile: str | None = None
    allow_control: bool = False
