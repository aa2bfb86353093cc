"""The status page's files, and the rules that keep a browser from being
turned against the control path.

``PAGE`` maps ``/`` and the page's script and style sheet to their answers:
files of the package (``taskforce/control/page/``), read once, sent with a
Content-Security-Policy that lets them load nothing but each other and talk
to nothing but this server (no inline script or style, no frames around
them, no other site's assets).  They hold no data: the page asks
``/status/access``, ``/status/tasks``, ``/status/events`` and
``/status/logs/follow`` for it, with the permissions every client has.

A browser attaches what it holds by itself (a Unix socket reached through
``ssh -L`` makes every local page a peer with the tunnel's uid), so a
request that comes from a browser must prove it comes from our page:
``forged`` refuses a ``/manage/...`` request from a browser without the
``X-Taskforce-Request: page`` header (another site's page cannot send it:
that takes a CORS preflight, which this server never grants) or whose
``Origin`` is not this server; ``cross_site`` refuses a stream opened by
another site's page.  Clients that are not browsers (tfctl, curl, the
original's scripts) send neither marker and are not affected.

This module reads only its own package files; it decides nothing about
tasks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import urlsplit

from taskforce.control.http import Request, Response, text

#: The header the page sends with every control request.
PAGE_HEADER = "x-taskforce-request"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/page/style.css": ("style.css", "text/css; charset=utf-8"),
}


@functools.cache
def _read(name: str) -> bytes:
    # importlib.resources is loaded by the first page served, not at start.
    from importlib import resources

    return resources.files("taskforce.control").joinpath("page").joinpath(name).read_bytes()


def _serve(name: str, media: str) -> Callable[[], Response]:
    def answer() -> Response:
        try:
            body = _read(name)
        except OSError as exc:
            return text(500, f"the status page's {name} is missing from the package: {exc}\n")
        return Response(200, body, media, list(_HEADERS))

    return answer


PAGE: dict[str, Callable[[], Response]] = {
    path: _serve(name, media) for path, (name, media) in _FILES.items()
}


def _from_browser(request: Request) -> bool:
    headers = request.headers
    return (
        "origin" in headers
        or "sec-fetch-site" in headers
        or headers.get("user-agent", "").startswith("Mozilla/")
    )


def cross_site(request: Request) -> str | None:
    """Why a browser's request comes from another site's page (None: it does not)."""
    site = request.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"a {site} request from a browser"
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request.headers.get("host")):
        return f"a request from another origin ({origin[:100]})"
    return None


def forged(request: Request) -> str | None:
    """Why a control request cannot be trusted to come from a person at the
    status page or from a program (None: it can)."""
    if not _from_browser(request):
        return None
    why = cross_site(request)
    if why is not None:
        return why
    if request.headers.get(PAGE_HEADER) != "page":
        return "a control request from a browser must come from the status page"
    return None


def _same_origin(origin: str, host: str | None) -> bool:
    if origin == "null" or host is None:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return netloc.lower() == host.strip().lower()
