"""The process table and what processes run with, the same on every Unix.

Read from ``/proc`` where there is one (Linux: the fastest way), else
through psutil and the platform's own ``ps`` and ``lsof`` (macOS, the
BSDs).  ``TASKFORCE_TEST_PROC=off`` makes these helpers take the psutil
path on Linux too, so the path macOS takes is exercised here.  ``FEATURES``
says which Linux-only facilities a taskforce daemon gets on this host, for
tests that need one to skip by its name (never by the platform's name).

Only the tests use this (and psutil): taskforce itself never does.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import subprocess

#: Read the process table from /proc (else through psutil).
USE_PROC = os.path.isdir("/proc/self") and os.environ.get("TASKFORCE_TEST_PROC", "") != "off"


def proc_table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgid, state, cmdline) for every process; ``state`` is
    ``"Z"`` for a zombie."""
    return _proc_table_linux() if USE_PROC else _proc_table_psutil()


def _proc_table_linux() -> dict[int, tuple[int, int, str, str]]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(rest[1]), int(rest[2]), rest[0], cmdline)
    return table


def _proc_table_psutil() -> dict[int, tuple[int, int, str, str]]:
    import psutil

    table = {}
    for proc in psutil.process_iter(["ppid", "status", "cmdline"]):
        info = proc.info
        zombie = info["status"] == psutil.STATUS_ZOMBIE
        try:
            pgid = os.getpgid(proc.pid)
        except OSError:
            if not zombie:
                continue  # gone meanwhile
            pgid = -1  # macOS will not tell a zombie's group
        # A zombie's argv (or another user's, on macOS) cannot be read.
        cmdline = " ".join(info["cmdline"] or ())
        state = "T" if info["status"] == psutil.STATUS_STOPPED else "R"
        table[proc.pid] = (info["ppid"] or 0, pgid, "Z" if zombie else state, cmdline)
    return table


def process_state(pid: int) -> str | None:
    """``"Z"`` for a zombie, another letter for a live process, None if
    ``pid`` is gone."""
    if USE_PROC:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
    import psutil

    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None
    if status == psutil.STATUS_ZOMBIE:
        return "Z"
    return "T" if status == psutil.STATUS_STOPPED else "R"


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    state = process_state(pid)
    return state is not None and state != "Z"


def parent_of(pid: int) -> int | None:
    entry = proc_table().get(pid) if USE_PROC else None
    if entry is not None:
        return entry[0]
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


def cpu_seconds(pid: int) -> float:
    """User and system time ``pid`` has used, in seconds."""
    if USE_PROC:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def start_time(pid: int) -> float | None:
    """When ``pid`` started (an opaque number: a reused pid has another)."""
    if USE_PROC:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return float(handle.read().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError):
            return None
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


_MASKS = {
    # kind: (/proc/PID/status lines, ps(1) keyword -- the same on Linux's
    # procps and the BSDs', macOS's included; both print hexadecimal)
    "ignored": (("SigIgn:",), "sigignore"),
    "blocked": (("SigBlk:",), "sigmask"),
    "pending": (("SigPnd:", "ShdPnd:"), "sig"),
}


def signal_mask(pid: int, kind: str) -> int:
    """The signals ``pid`` has ``ignored``, ``blocked`` or ``pending``, as a
    bit mask (bit ``n - 1`` for signal ``n``)."""
    lines, keyword = _MASKS[kind]
    if USE_PROC:
        mask = 0
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(lines):
                    mask |= int(line.split()[1], 16)
        return mask
    out = subprocess.run(
        ["ps", "-o", f"{keyword}=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return int(out, 16)


def ignored_signals(pid: int) -> set[int]:
    """The signals ``pid`` ignores (SIG_IGN)."""
    mask = signal_mask(pid, "ignored")
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def environ_of(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` started with (None if it cannot be read)."""
    if USE_PROC:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        pairs = (item.partition(b"=") for item in data.split(b"\0") if item)
        return {os.fsdecode(key): os.fsdecode(value) for key, _, value in pairs}
    import psutil

    try:
        return dict(psutil.Process(pid).environ())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def resident_kib(pid: int) -> int:
    """``pid``'s resident size, KiB."""
    if USE_PROC:
        with open(f"/proc/{pid}/status") as handle:
            line = next(ln for ln in handle if ln.startswith("VmRSS:"))
        return int(line.split()[1])
    import psutil

    return int(psutil.Process(pid).memory_info().rss // 1024)


def open_fd_count(pid: int) -> int:
    """How many descriptors ``pid`` has open."""
    if USE_PROC:
        return len(os.listdir(f"/proc/{pid}/fd"))
    import psutil

    return int(psutil.Process(pid).num_fds())


def socket_count(pid: int) -> int:
    """How many sockets ``pid`` has open."""
    if USE_PROC:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return count
    import psutil

    return len(psutil.Process(pid).net_connections(kind="all"))


def fd_target(pid: int, fd: int) -> str | None:
    """What descriptor ``fd`` of ``pid`` has open, as a path (None: not open
    or not a file)."""
    if USE_PROC:
        try:
            return os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return None
    # lsof ships with macOS; -F n prints the name on a line of its own.
    out = subprocess.run(
        ["lsof", "-w", "-a", "-p", str(pid), "-d", str(fd), "-F", "n"],
        capture_output=True,
        text=True,
    ).stdout
    names = [line[1:] for line in out.splitlines() if line.startswith("n")]
    return os.path.realpath(names[0]) if names else None


class _Features:
    """Which Linux-only facilities this host gives a taskforce daemon, for
    tests that need one to skip by name (never by the platform's name)."""

    @functools.cached_property
    def proc(self) -> bool:
        """The daemon can read /proc: the environment marker finds a slot's
        processes that left its group, and costs are measured."""
        return os.path.isdir("/proc/self")

    @functools.cached_property
    def subreaper(self) -> bool:
        """The daemon becomes its descendants' subreaper (prctl)."""
        try:
            return hasattr(ctypes.CDLL(None), "prctl")
        except OSError:
            return False

    @functools.cached_property
    def pidfd(self) -> bool:
        """A pidfd tells at once when a process that is no child exits."""
        return hasattr(os, "pidfd_open")

    @functools.cached_property
    def peercred(self) -> bool:
        """A Unix socket tells who is at the other end (SO_PEERCRED)."""
        return hasattr(socket, "SO_PEERCRED")

    @functools.cached_property
    def cgroups(self) -> bool:
        """A cgroup per slot: asks taskforce's own probe."""
        from taskforce.tracking import Tracker

        tracker = Tracker("probe-" + os.urandom(4).hex(), lambda slot: None)
        try:
            return tracker.cgroups
        finally:
            tracker.close()

    @property
    def escapers_tracked(self) -> bool:
        """A process that leaves its slot's process group is still found
        and stopped with its slot (by cgroup or environment marker)."""
        return self.proc


FEATURES = _Features()
