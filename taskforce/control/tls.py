"""The names of ``ssl`` the control server needs, without loading it until TLS is used.

Importing ``ssl`` maps OpenSSL's two libraries into the daemon: about 4 MiB
of PSS for a control socket that may never speak TLS (a Unix socket, plain
HTTP on loopback).  The server's connection code catches TLS's errors on
every read and write, so it names them here instead: until ``load`` runs
they are an exception no code raises (nothing TLS can exist before then),
and ``load`` -- called by whatever makes a TLS context -- puts the real
classes in their place.  ``except`` clauses look the names up when an
exception is matched, so they see the real ones from then on.

This module opens nothing and never decides anything.
"""

from __future__ import annotations

import sys


class _NotYet(Exception):
    """Stands for a TLS error before ``ssl`` is loaded: never raised."""


WantReadError: type[Exception] = _NotYet
WantWriteError: type[Exception] = _NotYet
Error: type[Exception] = _NotYet


def load() -> None:
    """Load ``ssl`` (once) and give these names their real classes."""
    global WantReadError, WantWriteError, Error
    import ssl

    WantReadError, WantWriteError, Error = ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLError


def is_tls(sock: object) -> bool:
    """Whether ``sock`` is a TLS socket (never, while ``ssl`` is not loaded)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)
