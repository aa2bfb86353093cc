"""Daemons that are not our children: find them by pidfile, notice their exit.

``read_pidfile`` answers the core's ``ReadPidfile``: the pid a pidfile names,
only if that process is alive and is not younger than the file (a process
started after the pidfile was written holds a recycled pid, not the daemon).
``ProcessWatch`` reports the exit of such a process at once: through the
normal reaping when it is our descendant (we are the subreaper on Linux),
through a pidfd where the kernel has them, and by polling otherwise.

This module decides nothing about tasks; it only observes processes.
"""

from __future__ import annotations

import os
import selectors
import sys
import time
from collections.abc import Callable

#: How stale a pidfile may be relative to its process's start (clock ticks
#: and file time stamps are coarse).
_START_SLACK = 1.0
#: Polling interval for exits no pidfd can tell us about.
POLL_INTERVAL = 1.0


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (Linux only)."""
    fields = _proc_stat(pid)
    boot = _boot_time()
    if fields is None or boot is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return boot + int(fields[19]) / ticks


def parent_of(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[1]) if fields else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return fields is None or fields[0] != "Z"


def read_pidfile(path: str) -> tuple[int | None, str]:
    """The live pid ``path`` names and "", or None and why not."""
    try:
        with open(path) as handle:
            text = handle.read(64).strip()
        written = os.stat(path).st_mtime
    except FileNotFoundError:
        return None, f"no pidfile {path}"
    except OSError as exc:
        return None, f"cannot read pidfile {path}: {exc.strerror or exc}"
    try:
        pid = int(text.split()[0]) if text else 0
    except ValueError:
        return None, f"pidfile {path} holds no pid"
    if pid <= 1:
        return None, f"pidfile {path} holds no pid"
    if not alive(pid):
        return None, f"pid {pid} from {path} is not running"
    started = process_start_time(pid)
    if started is not None and started > written + _START_SLACK:
        return None, f"pid {pid} from {path} started after the pidfile was written (a reused pid)"
    return pid, ""


class ProcessWatch:
    """Tells when watched processes that are not our children exit."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit
        self.selector: selectors.BaseSelector | None = None
        self.pidfds: dict[int, int] = {}
        self.polled: set[int] = set()
        self.next_poll: float | None = None

    def attach(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector

    def watch(self, pid: int) -> bool:
        """Start watching ``pid``; False if it is already gone."""
        if not alive(pid):
            return False
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None and self.selector is not None:
            try:
                fd = pidfd_open(pid)
            except ProcessLookupError:
                return False
            except OSError:
                fd = -1
            if fd >= 0:
                self.pidfds[pid] = fd
                self.selector.register(fd, selectors.EVENT_READ, lambda: self._pidfd_ready(pid))
                return True
        self.polled.add(pid)
        if self.next_poll is None:
            self.next_poll = time.monotonic() + POLL_INTERVAL
        return True

    def _pidfd_ready(self, pid: int) -> None:
        self._forget(pid)
        self.on_exit(pid)

    def _forget(self, pid: int) -> None:
        fd = self.pidfds.pop(pid, None)
        if fd is not None and self.selector is not None:
            self.selector.unregister(fd)
            os.close(fd)
        self.polled.discard(pid)

    def next_deadline(self) -> float | None:
        return self.next_poll if self.polled else None

    def poll(self, now: float) -> None:
        if not self.polled or self.next_poll is None or now < self.next_poll:
            return
        for pid in sorted(self.polled):
            if not alive(pid):
                self._forget(pid)
                self.on_exit(pid)
        self.next_poll = now + POLL_INTERVAL if self.polled else None

    def close(self) -> None:
        for pid in list(self.pidfds):
            self._forget(pid)
        self.polled.clear()


def is_our_child(pid: int) -> bool:
    return sys.platform.startswith("linux") and parent_of(pid) == os.getpid()
