"""Where the daemon's own log lines go: stderr, or syslog with a fallback.

``setup_logging`` points the ``taskforce`` logger at stderr (``-e``) or at
the syslog socket ``syslog_socket`` finds; ``FallbackHandler`` sends a line
syslog cannot take to stderr, so no line is lost and none becomes a
traceback.  Split out of ``taskforce.cli``, which calls it once at start.

This module decides nothing about tasks and never touches a process.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys

log = logging.getLogger("taskforce")

#: Where syslog listens, in the order tried (Linux, then the BSDs and macOS).
SYSLOG_SOCKETS = ("/dev/log", "/var/run/log")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def syslog_socket() -> str | None:
    """The first of ``SYSLOG_SOCKETS`` that is a socket, or None.

    Only a socket will do: on many hosts (containers) ``/var/run/log`` is a
    folder, and a handler pointed at it fails on every line.
    """
    for path in SYSLOG_SOCKETS:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


class FallbackHandler(logging.Handler):
    """Sends each record to ``primary`` (syslog); a record it cannot take
    goes to ``fallback`` (stderr) instead, so no line is lost to a logging
    error and none becomes a traceback.  The first failure says so, once;
    the next record tries syslog again (the handler reconnects), and the
    first one that gets through says that syslog is back."""

    def __init__(self, primary: logging.Handler, fallback: logging.Handler, where: str) -> None:
        super().__init__()
        self.primary = primary
        self.fallback = fallback
        self.where = where
        self.failing = False
        primary.handleError = self._failed  # type: ignore[method-assign]
        self._failure: BaseException | None = None

    def _failed(self, record: logging.LogRecord) -> None:
        self._failure = sys.exc_info()[1] or OSError("unknown error")

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        self.primary.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        self._failure = None
        self.primary.emit(record)
        if self._failure is None:
            if self.failing:
                self.failing = False
                self._note(f"syslog at {self.where} works again; logging there")
            return
        if not self.failing:
            self.failing = True
            why = getattr(self._failure, "strerror", None) or self._failure
            self._note(f"cannot log to syslog at {self.where} ({why}); logging to stderr")
        self.fallback.handle(record)

    def _note(self, message: str) -> None:
        self.fallback.handle(
            logging.LogRecord("taskforce", logging.WARNING, __file__, 0, message, None, None)
        )

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()
        super().close()


def setup_logging(args: argparse.Namespace, address: str | None = None) -> None:
    """Log to stderr (``-e``), else to syslog at ``address`` (see
    ``syslog_socket``), else to stderr with one warning saying why."""
    name = args.logging_name or "taskforce"
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler: logging.Handler
    warning = None
    if args.log_stderr:
        handler = _stderr_handler()
    elif address is None:
        handler = _stderr_handler()
        warning = (
            f"no syslog socket at {' or '.join(SYSLOG_SOCKETS)}; logging to stderr "
            "(-e says so without this warning)"
        )
    else:
        from logging.handlers import SysLogHandler  # only for syslog: costs memory

        try:
            syslog = SysLogHandler(address=address)
        except OSError as exc:
            handler = _stderr_handler()
            why = exc.strerror or exc
            warning = f"cannot log to syslog at {address} ({why}); logging to stderr"
        else:
            handler = FallbackHandler(syslog, _stderr_handler(), address)
            handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(message)s"))
    root = logging.getLogger("taskforce")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if warning is not None:
        log.warning("%s", warning)
