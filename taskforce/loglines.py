"""Task output lines into taskforce's own log, a chunk at a time.

``log_chunk`` writes many lines of one pipe as records of the
``taskforce.output`` logger at info level would read: a record is formatted
once for the chunk, with a mark where the text goes, and every line is put
in the mark's place.  So the lines keep what ``taskforce.logsetup``
configured (the format, stderr or syslog, the level) and the secrets filter
of ``taskforce.redact`` applies, while formatting a record per line -- which
would cost far more than the rest of the output path -- is left to handlers
it does not know (``log_chunk`` then says False and the caller logs a
record per line).  To a stream the chunk goes in one write; to syslog each
line is still one datagram, as syslog takes one message per datagram.

This module only writes log lines: it never reads a pipe, opens a file or
touches a process.
"""

from __future__ import annotations

import logging
import socket
import sys

from taskforce.logsetup import FallbackHandler
from taskforce.redact import LogSecrets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

output_log = logging.getLogger("taskforce.output")

#: Stands for the text of the lines when a log record is formatted once.
_MARK = "\x00taskforce-lines\x00"


def _log_handler() -> logging.Handler | None:
    """The one handler lines of ``taskforce.output`` reach, if it is a plain
    stream (``-e``, or a test's) or taskforce's syslog handler, and nothing
    but the secrets' filter stands on the way (``taskforce.redact``:
    ``log_chunk`` applies it); else None."""
    if not all(isinstance(f, LogSecrets) for f in output_log.filters):
        return None
    found: list[logging.Handler] = []
    logger: logging.Logger | None = output_log
    while logger is not None:
        found += logger.handlers
        if not logger.propagate:
            break
        logger = logger.parent
    if len(found) != 1:
        return None
    handler = found[0]
    if handler.filters or handler.level > logging.INFO:
        return None
    if type(handler) is logging.StreamHandler:
        return handler
    if type(handler) is FallbackHandler and not handler.failing:
        handlers = sys.modules.get("logging.handlers")  # imported only for syslog
        if handlers is not None and type(handler.primary) is handlers.SysLogHandler:
            return handler
    return None


def log_chunk(label: str, lines: bytes | bytearray, now: float) -> bool:
    """Write ``lines`` (whole ones) to the daemon's log as records of
    ``taskforce.output`` at info level would read, formatted once for the
    chunk rather than once per line; False if the log is neither a plain
    stream nor syslog (the caller then logs a record per line)."""
    handler = _log_handler()
    if handler is None:
        return False
    record = logging.LogRecord(
        output_log.name, logging.INFO, __file__, 0, "%s %s", (label, _MARK), None
    )
    record.created = now
    record.msecs = (now - int(now)) * 1000
    text = bytes(lines).decode(errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    for secrets in output_log.filters:
        text = secrets.hide_text(text)  # type: ignore[union-attr]
    if isinstance(handler, FallbackHandler):
        _to_syslog(handler, record, label, text)
        return True
    assert isinstance(handler, logging.StreamHandler)
    head, _, tail = handler.format(record).partition(_MARK)
    glue = tail + handler.terminator + head
    body = head + text[:-1].replace("\n", glue) + tail + handler.terminator
    handler.acquire()
    try:
        handler.stream.write(body)
        handler.flush()
    except Exception:
        handler.handleError(record)
    finally:
        handler.release()
    return True


def _to_syslog(handler: FallbackHandler, record: logging.LogRecord, label: str, text: str) -> None:
    """One datagram per line, as ``SysLogHandler`` sends a record, with the
    formatting done once; from the first line syslog does not take on, a
    record per line (``FallbackHandler`` then reconnects or falls back)."""
    syslog: Any = handler.primary
    head, _, tail = syslog.format(record).partition(_MARK)
    priority = syslog.encodePriority(syslog.facility, syslog.mapPriority("INFO"))
    start = f"<{priority}>{syslog.ident or ''}{head}".encode()
    end = (tail + ("\000" if syslog.append_nul else "")).encode()
    pieces = text[:-1].encode().split(b"\n")
    sent = 0
    try:
        if not syslog.socket:
            syslog.createSocket()
        sock = syslog.socket
        if syslog.unixsocket:
            for piece in pieces:
                sock.send(start + piece + end)
                sent += 1
        elif syslog.socktype == socket.SOCK_DGRAM:
            for piece in pieces:
                sock.sendto(start + piece + end, syslog.address)
                sent += 1
        else:
            sock.sendall(b"".join(start + piece + end for piece in pieces))
            sent = len(pieces)
    except OSError:
        for piece in pieces[sent:]:
            output_log.info("%s %s", label, piece.decode(errors="replace"))
