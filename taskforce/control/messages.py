"""What the control server's endpoints take and give: a complete request,
the response to it (or a ``Deferred`` one), and the status texts.

Plain data, shared by ``http`` (which parses and sends them) and the
endpoints (``api``, ``manage``, ``site``); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from taskforce.control.listen import Listener

#: The media type of every JSON answer.
JSON = "application/json"

REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    """A complete request: ``target`` as sent, ``path`` and ``query`` split from it."""

    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""
    #: what the client proved (see ``taskforce.core.access``), set when routed
    who: dict[str, object] = field(default_factory=dict)
    #: the listener it came through
    listener: Listener | None = None


@dataclass
class Response:
    """What to send back; ``after`` runs once it is queued (stop, reset)."""

    code: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: list[tuple[str, str]] = field(default_factory=list)
    after: Callable[[], None] | None = None
    close: bool = False


@dataclass
class Deferred:
    """An answer that takes long to compute, so not on the loop that supervises.

    ``work`` runs on a worker thread and must only compute (no core, no
    sockets); ``finish`` gets what it returned and makes the ``Response``,
    back on the loop.
    """

    work: Callable[[], object]
    finish: Callable[[object], Response]


def text(
    code: int,
    body: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    after: Callable[[], None] | None = None,
    close: bool = False,
) -> Response:
    """A ``text/plain`` response."""
    return Response(
        code, body.encode("utf-8", "replace"), "text/plain", headers or [], after, close
    )
