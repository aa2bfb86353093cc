"""Daemons that are not our children: find them by pidfile, notice their exit.

``read_pidfile`` answers the core's ``ReadPidfile``: the live pid a pidfile
names, and the facts the core judges it by -- who owns the file and who else
can write it, whether the process is younger than the file (a recycled pid),
and whether it belongs to the slot (asked of ``taskforce.tracking``).  The core accepts
or refuses; nothing here does.
``ProcessWatch`` reports the exit of such a process at once: through the
normal reaping when it is our descendant (we are the subreaper on Linux),
through a pidfd where the kernel has them, and by polling otherwise.

This module decides nothing about tasks; it only observes processes.
"""

from __future__ import annotations

import os
import selectors
import stat
import time
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: How stale a pidfile may be relative to its process's start (clock ticks
#: and file time stamps are coarse).  A measurement fact of this shell, not a
#: policy: the core is told only the outcome (``started_after_file``), since
#: how precise a start time and a file time are depends on the OS that
#: measured them (``/proc`` clock ticks here); the core judges what a
#: recycled pid means.  Reporting the raw times instead would change the
#: record format of ``PidfileRead``.
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
    """When ``pid`` started, in seconds since the epoch; None where there is
    no ``/proc`` to say (macOS, the BSDs): a recycled pid is then not told
    from the daemon that wrote the pidfile."""
    fields = _proc_stat(pid)
    boot = _boot_time()
    if fields is None or boot is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return boot + int(fields[19]) / ticks


def parent_of(pid: int) -> int | None:
    """``pid``'s parent, from ``/proc``; None where there is none."""
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


def _through_foreign_symlink(path: str) -> bool:
    """Whether resolving ``path`` follows a symlink a user other than root
    owns (who could point it at any root-owned pidfile)."""
    todo = list(reversed(os.path.abspath(path).split("/")))
    current = "/"
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        try:
            info = os.lstat(candidate)
            if not stat.S_ISLNK(info.st_mode):
                current = candidate
                continue
            if info.st_uid != 0:
                return True
            target = os.readlink(candidate)
        except OSError:
            return True  # changed under us: not a path to trust
        hops += 1
        if hops > 40:
            return True
        if target.startswith("/"):
            current = "/"
        todo.extend(reversed(target.split("/")))
    return False


def read_pidfile(path: str, belongs: Callable[[int], bool]) -> dict[str, Any]:
    """What ``path`` says for a slot: the ``PidfileRead`` fields after its
    slot and generation (``pid``, ``error``, ``owner``,
    ``writable_by_non_root``, ``started_after_file``, ``in_slot``).
    ``belongs(pid)`` says whether a process is one of the slot's."""
    try:
        with open(path) as handle:
            info = os.fstat(handle.fileno())
            text = handle.read(64).strip()
    except FileNotFoundError:
        return {"error": f"no pidfile {path}"}
    except OSError as exc:
        return {"error": f"cannot read pidfile {path}: {exc.strerror or exc}"}
    try:
        pid = int(text.split()[0]) if text else 0
    except ValueError:
        return {"error": f"pidfile {path} holds no pid"}
    # Below 2 is "no pid", measured here rather than judged by the core: the
    # probes that follow cannot be asked about it (kill(0, ...) and
    # kill(-n, ...) address process groups, /proc/0 does not exist), and pid
    # 1 is init, which no launcher's daemon can be -- probing it would only
    # report facts about the host's init.  The record keeps its meaning: the
    # core has always been told "holds no pid" for these.
    if pid <= 1:
        return {"error": f"pidfile {path} holds no pid"}
    if not alive(pid):
        return {"error": f"pid {pid} from {path} is not running"}
    started = process_start_time(pid)
    return {
        "pid": pid,
        "owner": info.st_uid,
        "writable_by_non_root": (
            info.st_uid != 0
            or bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
            or _through_foreign_symlink(path)
        ),
        "started_after_file": started is not None and started > info.st_mtime + _START_SLACK,
        "in_slot": belongs(pid),
    }


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
    """Whether ``pid`` is our child (adopted as subreaper, or started by us).
    Without ``/proc`` this says no: the process is then watched by polling,
    which tells its exit as surely, only up to ``POLL_INTERVAL`` later."""
    return parent_of(pid) == os.getpid()
