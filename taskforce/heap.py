"""Give the heap a burst freed back to the system (shell side).

A start-up or a reload of a large fleet makes big short-lived things: the
recorder's line of the first step (a spawn per slot, each with its whole
environment: about 20 MB of JSON at 10,000 tasks) and the pieces it is made
of, the config's text and parse.  Once freed, glibc's allocator keeps those
pages, so the daemon's resident memory stays at the burst's peak for good
(148 MiB against 73 MiB after a trim, at 10,000 tasks recorded).
``malloc_trim(0)`` hands every free page in the heap back.

It is asked for only after such a burst, never on a timer (an idle daemon
does nothing).  Where the C library has no ``malloc_trim`` (macOS, musl) it
does nothing.  This module frees nothing Python still holds.
"""

from __future__ import annotations

import ctypes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: None: not looked up yet; False: this libc has no malloc_trim.
_TRIM: Any = None


def trim() -> bool:
    """Return the heap's free pages to the system; whether that was possible."""
    global _TRIM
    if _TRIM is None:
        try:
            # The running process's symbols include libc's (see process.py).
            _TRIM = getattr(ctypes.CDLL(None), "malloc_trim", False)
        except OSError:
            _TRIM = False
    if _TRIM is False:
        return False
    _TRIM(0)
    return True
