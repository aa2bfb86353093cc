"""What a slot's process group costs, where there is no ``/proc`` (macOS).

``taskforce.costs`` reads its figures from ``/proc`` and the slots'
cgroups; a host without them that has Apple's libproc answers through it
instead, here: the slot's processes are its process group
(``proc_listpgrppids``, the group's id being the slot leader's pid), and
each one's CPU time, resident size and open descriptors come from
``proc_pidinfo``.  There is no OOM kill count on macOS (no such figure is
given), and CPU time is the live processes' own (threads that ended
included, exited children not: the kernel keeps no such sum).

This module calls the C library through ctypes only.  It must never run a
subprocess (``ps``, ``lsof``): the daemon reaps every child it has, and one
it did not start would confuse it.  It only reads; it never signals,
decides or changes anything, and never runs from the core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from typing import Any, NamedTuple

# <sys/proc_info.h> flavours of proc_pidinfo
PROC_PIDLISTFDS = 1
PROC_PIDTBSDINFO = 3
PROC_PIDTASKINFO = 4


class TaskInfo(ctypes.Structure):
    """``struct proc_taskinfo`` (96 bytes; times in Mach absolute units)."""

    _fields_ = [
        ("pti_virtual_size", ctypes.c_uint64),
        ("pti_resident_size", ctypes.c_uint64),
        ("pti_total_user", ctypes.c_uint64),
        ("pti_total_system", ctypes.c_uint64),
        ("pti_threads_user", ctypes.c_uint64),
        ("pti_threads_system", ctypes.c_uint64),
        ("pti_policy", ctypes.c_int32),
        ("pti_faults", ctypes.c_int32),
        ("pti_pageins", ctypes.c_int32),
        ("pti_cow_faults", ctypes.c_int32),
        ("pti_messages_sent", ctypes.c_int32),
        ("pti_messages_received", ctypes.c_int32),
        ("pti_syscalls_mach", ctypes.c_int32),
        ("pti_syscalls_unix", ctypes.c_int32),
        ("pti_csw", ctypes.c_int32),
        ("pti_threadnum", ctypes.c_int32),
        ("pti_numrunning", ctypes.c_int32),
        ("pti_priority", ctypes.c_int32),
    ]


class BsdInfo(ctypes.Structure):
    """``struct proc_bsdinfo`` (136 bytes): only the start time is used."""

    _fields_ = [
        ("pbi_flags", ctypes.c_uint32),
        ("pbi_status", ctypes.c_uint32),
        ("pbi_xstatus", ctypes.c_uint32),
        ("pbi_pid", ctypes.c_uint32),
        ("pbi_ppid", ctypes.c_uint32),
        ("pbi_uid", ctypes.c_uint32),
        ("pbi_gid", ctypes.c_uint32),
        ("pbi_ruid", ctypes.c_uint32),
        ("pbi_rgid", ctypes.c_uint32),
        ("pbi_svuid", ctypes.c_uint32),
        ("pbi_svgid", ctypes.c_uint32),
        ("rfu_1", ctypes.c_uint32),
        ("pbi_comm", ctypes.c_char * 16),  # MAXCOMLEN
        ("pbi_name", ctypes.c_char * 32),  # 2 * MAXCOMLEN
        ("pbi_nfiles", ctypes.c_uint32),
        ("pbi_pgid", ctypes.c_uint32),
        ("pbi_pjobc", ctypes.c_uint32),
        ("e_tdev", ctypes.c_uint32),
        ("e_tpgid", ctypes.c_uint32),
        ("pbi_nice", ctypes.c_int32),
        ("pbi_start_tvsec", ctypes.c_uint64),
        ("pbi_start_tvusec", ctypes.c_uint64),
    ]


class FdInfo(ctypes.Structure):
    """``struct proc_fdinfo`` (8 bytes): one open descriptor."""

    _fields_ = [("proc_fd", ctypes.c_int32), ("proc_fdtype", ctypes.c_uint32)]


class Timebase(ctypes.Structure):
    """``struct mach_timebase_info``: Mach time units * numer / denom = ns."""

    _fields_ = [("numer", ctypes.c_uint32), ("denom", ctypes.c_uint32)]


class Group(NamedTuple):
    """What one process group costs now."""

    cpu_seconds: float
    memory_bytes: int
    open_fds: int
    #: seconds since the group's leader started (0.0: not known)
    leader_age: float


class Reader:
    """Reads process groups' costs through libproc (``lib``: the loaded
    library, or a test double with the same three functions)."""

    def __init__(self, lib: Any, clock: Callable[[], float] = time.time) -> None:
        self.lib = lib
        self.clock = clock
        for name, restype, argtypes in (
            ("proc_listpgrppids", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]),
            (
                "proc_pidinfo",
                ctypes.c_int,
                [ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int],
            ),
            ("mach_timebase_info", ctypes.c_int, [ctypes.c_void_p]),
        ):
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        base = Timebase()
        if lib.mach_timebase_info(ctypes.addressof(base)) != 0 or not base.denom:
            base.numer = base.denom = 1  # (Intel's: the units are ns)
        #: seconds per Mach time unit
        self.unit = base.numer / base.denom / 1e9
        self._pids = (ctypes.c_int * 64)()

    def members(self, pgid: int) -> list[int]:
        """The pids of a process group (empty: it is gone)."""
        while True:
            room = len(self._pids)
            count = self.lib.proc_listpgrppids(
                pgid, ctypes.addressof(self._pids), ctypes.sizeof(self._pids)
            )
            if count < room:  # (a full buffer may have cut the list short)
                return [pid for pid in self._pids[: max(count, 0)] if pid > 0]
            self._pids = (ctypes.c_int * (room * 2))()

    def group(self, pgid: int) -> Group | None:
        """The summed figures of a process group's processes (None: none
        of them could be read, the group is gone)."""
        cpu = 0
        memory = fds = 0
        seen = False
        info = TaskInfo()
        size = ctypes.sizeof(info)
        for pid in self.members(pgid):
            got = self.lib.proc_pidinfo(pid, PROC_PIDTASKINFO, 0, ctypes.addressof(info), size)
            if got != size:
                continue  # exited since it was listed
            seen = True
            cpu += info.pti_total_user + info.pti_total_system
            memory += info.pti_resident_size
            fds += self._fds(pid)
        if not seen:
            return None
        return Group(cpu * self.unit, memory, fds, self._age(pgid))

    def _fds(self, pid: int) -> int:
        # The size asked for first is an estimate with room to spare; the
        # second call says how much it filled.
        need = self.lib.proc_pidinfo(pid, PROC_PIDLISTFDS, 0, None, 0)
        if need <= 0:
            return 0
        buffer = (FdInfo * (need // ctypes.sizeof(FdInfo) + 1))()
        got: int = self.lib.proc_pidinfo(
            pid, PROC_PIDLISTFDS, 0, ctypes.addressof(buffer), ctypes.sizeof(buffer)
        )
        return max(got, 0) // ctypes.sizeof(FdInfo)

    def _age(self, pid: int) -> float:
        info = BsdInfo()
        size = ctypes.sizeof(info)
        if self.lib.proc_pidinfo(pid, PROC_PIDTBSDINFO, 0, ctypes.addressof(info), size) != size:
            return 0.0
        started: float = info.pbi_start_tvsec + info.pbi_start_tvusec / 1e6
        return max(self.clock() - started, 0.0)


def load() -> Reader | None:
    """A reader over the system's libproc, or None where there is none."""
    for name in ("proc", "System"):
        path = ctypes.util.find_library(name)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path)
            return Reader(lib)
        except (OSError, AttributeError):
            continue  # not there, or not the functions wanted
    return None
