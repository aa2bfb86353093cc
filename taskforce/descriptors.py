"""Descriptors taskforce inherited: none of them reaches a task (shell side).

Whatever taskforce's parent left open (``exec 5</root/secret; taskforce``, a
socket of an init system, a terminal) is marked close-on-exec once, at
start-up, before anything is spawned.  Python opens its own descriptors
close-on-exec, so from then on a child of any spawn path (posix_spawn, fork,
commands run by events, health checks) starts with only 0, 1 and 2, and
whatever the spawn puts there on purpose.  The fork path also closes
everything above 2 itself; posix_spawn gets ``POSIX_SPAWN_CLOSEFROM`` where
the Python and libc offer it.

This module opens nothing and closes nothing it did not find open.
"""

from __future__ import annotations

import os

#: Without /proc (macOS, BSD): the highest descriptor looked at.
FALLBACK_LIMIT = 65536


def _open_descriptors() -> list[int]:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            # The listing's own descriptor is in it, and closed by now: it is
            # skipped below like any descriptor that is gone.
            return sorted(int(entry) for entry in os.listdir(folder))
        except (OSError, ValueError):
            continue
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        limit = FALLBACK_LIMIT
    return list(range(min(limit if limit > 0 else FALLBACK_LIMIT, FALLBACK_LIMIT)))


def close_inherited_on_exec() -> int:
    """Mark every descriptor above 2 close-on-exec; how many had to be."""
    marked = 0
    for fd in _open_descriptors():
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                marked += 1
        except OSError:
            continue  # not open (or the listing's own, already closed)
    return marked
