"""Who may do what: control and status permissions, decided from data.

The shell says who asked (``Who``, a plain dict carried by every
``ControlRequested``) and through which door (the listener's allow list,
carried with it); this module says yes or no.  It must never do IO: user
names and groups arrive already looked up, so a recorded run replays the
same decisions.

A ``who`` dict holds what the shell could prove about the client:

- ``uid``, ``gid``, ``user``, ``groups``: the peer of a Unix socket
  (``SO_PEERCRED``), its names looked up by the shell;
- ``token``: true when the request carried the listener's bearer token;
- ``subject``: the verified client certificate's subject (``CN=ops,O=acme``);
- ``address``: the TCP peer address (shown, never trusted).

An allow list is a tuple of grants, each one of:
``user:NAME``, ``group:NAME``, ``uid:N``, ``gid:N``, ``token``, ``cert``
(any verified client certificate), ``subject:TEXT`` (a certificate whose
subject is exactly TEXT).  ``None`` means "not checked" (the door is open to
whoever reached it: old logs, the simulator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Grants spelled as the config writes them: ``alice``, ``@wheel``, ``1000``.
TOKEN = "token"
CERT = "cert"


def grant_of(entry: str) -> str:
    """One config ``allow`` entry as a grant: ``@wheel`` -> ``group:wheel``,
    ``1000`` -> ``uid:1000``, ``@0`` -> ``gid:0``, ``alice`` -> ``user:alice``."""
    if entry.startswith("@"):
        name = entry[1:]
        return f"gid:{name}" if name.isascii() and name.isdigit() else f"group:{name}"
    if entry.isascii() and entry.isdigit():
        return f"uid:{entry}"
    return f"user:{entry}"


def grants(allow: Iterable[str] | None, who: Mapping[str, Any]) -> bool:
    """Whether ``who`` holds any grant of ``allow`` (``None``: no check)."""
    if allow is None:
        return True
    for grant in allow:
        kind, _, value = grant.partition(":")
        if kind == "user" and who.get("user") == value:
            return True
        if kind == "uid" and str(who.get("uid", "")) == value and "uid" in who:
            return True
        if kind == "group" and value in (who.get("groups") or ()):
            return True
        if kind == "gid" and value in {str(g) for g in who.get("gids") or ()}:
            return True
        if grant == TOKEN and who.get("token") is True:
            return True
        if grant == CERT and who.get("subject"):
            return True
        if kind == "subject" and who.get("subject") == value:
            return True
    return False


def describe(who: Mapping[str, Any]) -> str:
    """Who asked, in a few words, for the audit log."""
    parts = []
    if "uid" in who:
        user = who.get("user")
        parts.append(f"uid {who['uid']}" + (f" ({user})" if user else ""))
    if who.get("subject"):
        parts.append(f"certificate {who['subject']}")
    if who.get("token") is True:
        parts.append("token")
    if not parts:
        parts.append("anonymous")
    address = who.get("address")
    return " ".join(parts) + (f" from {address}" if address else "")
