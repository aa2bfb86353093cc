"""The macOS costs reader (``taskforce.costs_darwin``), run here under a fake
libproc: a test double whose functions take the same arguments as Apple's
and fill the buffers the module passes them (by address, as the kernel
does), laid out from <sys/proc_info.h> independently of the module's own
structures.  Only the macOS CI job proves the real calls."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from taskforce import costs, costs_darwin

TASKINFO = struct.Struct("<6Q12i")  # struct proc_taskinfo
BSDINFO = struct.Struct("<12I16s32s6i2Q")  # struct proc_bsdinfo
FDINFO = struct.Struct("<iI")  # struct proc_fdinfo
TIMEBASE = struct.Struct("<II")  # struct mach_timebase_info


class Function:
    """A C function of the fake library: checks the call against the
    argtypes the module declared, as ctypes would."""

    def __init__(self, body: Callable[..., int]) -> None:
        self.body = body
        self.argtypes: list[Any] | None = None
        self.restype: Any = None

    def __call__(self, *args: Any) -> int:
        assert self.argtypes is not None and len(args) == len(self.argtypes), "declared first"
        assert self.restype is ctypes.c_int
        return self.body(*args)


class Proc:
    def __init__(self, pgid: int, user: int, system: int, resident: int, fds: int, start: float):
        self.pgid, self.user, self.system = pgid, user, system
        self.resident, self.fds, self.start = resident, fds, start


class FakeLibproc:
    """Apple's three calls over a table of processes (times in Mach units)."""

    def __init__(self, numer: int = 125, denom: int = 3) -> None:
        self.numer, self.denom = numer, denom
        self.procs: dict[int, Proc] = {}
        #: pids listed in their group but gone before they are read
        self.vanished: dict[int, int] = {}
        self.proc_listpgrppids = Function(self._listpgrppids)
        self.proc_pidinfo = Function(self._pidinfo)
        self.mach_timebase_info = Function(self._timebase)

    def _timebase(self, address: int) -> int:
        ctypes.memmove(address, TIMEBASE.pack(self.numer, self.denom), TIMEBASE.size)
        return 0

    def _listpgrppids(self, pgid: int, address: int, size: int) -> int:
        pids = [pid for pid, proc in self.procs.items() if proc.pgid == pgid]
        pids += [pid for pid, group in self.vanished.items() if group == pgid]
        pids = pids[: size // 4]  # the kernel fills no more than there is room for
        data = struct.pack(f"<{len(pids)}i", *pids)
        ctypes.memmove(address, data, len(data))
        return len(pids)

    def _pidinfo(self, pid: int, flavor: int, arg: int, address: int | None, size: int) -> int:
        proc = self.procs.get(pid)
        if proc is None:
            return 0
        if flavor == 4:
            if size < TASKINFO.size:
                return 0
            data = TASKINFO.pack(
                proc.resident * 3, proc.resident, proc.user, proc.system, 1, 1, *([7] * 12)
            )
        elif flavor == 3:
            if size < BSDINFO.size:
                return 0
            seconds = int(proc.start)
            data = BSDINFO.pack(
                *([0] * 12),
                b"x",
                b"x",
                *([proc.pgid] * 6),
                seconds,
                round((proc.start - seconds) * 1e6),
            )
        elif flavor == 1:
            if address is None:
                return (proc.fds + 20) * FDINFO.size  # an estimate with room
            count = min(proc.fds, size // FDINFO.size)
            data = b"".join(FDINFO.pack(fd, 1) for fd in range(count))
        else:
            return 0
        assert address is not None
        ctypes.memmove(address, data, len(data))
        return len(data)


def test_the_structures_have_the_kernel_sizes() -> None:
    assert ctypes.sizeof(costs_darwin.TaskInfo) == 96 == TASKINFO.size
    assert ctypes.sizeof(costs_darwin.BsdInfo) == 136 == BSDINFO.size
    assert ctypes.sizeof(costs_darwin.FdInfo) == 8 == FDINFO.size
    assert ctypes.sizeof(costs_darwin.Timebase) == 8
    assert costs_darwin.TaskInfo.pti_resident_size.offset == 8
    assert costs_darwin.TaskInfo.pti_total_user.offset == 16
    assert costs_darwin.TaskInfo.pti_total_system.offset == 24
    assert costs_darwin.BsdInfo.pbi_start_tvsec.offset == 120


def test_a_group_is_summed_in_seconds_and_bytes() -> None:
    lib = FakeLibproc(numer=125, denom=3)  # Apple silicon's: 125/3 ns a unit
    lib.procs[500] = Proc(
        500, user=24_000_000, system=12_000_000, resident=4096, fds=5, start=990.5
    )
    lib.procs[501] = Proc(500, user=2_400_000, system=0, resident=1024, fds=3, start=995.0)
    lib.procs[600] = Proc(600, user=10**12, system=0, resident=10**9, fds=100, start=0.0)
    reader = costs_darwin.Reader(lib, clock=lambda: 1000.0)
    group = reader.group(500)
    assert group is not None
    # (24e6 + 12e6 + 2.4e6) units * 125 / 3 ns = 1.6 s
    assert group.cpu_seconds == pytest.approx(1.6)
    assert group.memory_bytes == 5120, "the other group is not counted"
    assert group.open_fds == 8, "what the second call filled, not the estimate"
    assert group.leader_age == pytest.approx(9.5)


def test_intel_units_are_nanoseconds() -> None:
    lib = FakeLibproc(numer=1, denom=1)
    lib.procs[7] = Proc(7, user=1_500_000_000, system=500_000_000, resident=1, fds=0, start=0.0)
    group = costs_darwin.Reader(lib).group(7)
    assert group is not None and group.cpu_seconds == pytest.approx(2.0)
    assert group.open_fds == 0


def test_a_process_gone_mid_sample_is_skipped_and_an_empty_group_is_none() -> None:
    lib = FakeLibproc()
    lib.procs[40] = Proc(40, user=3, system=0, resident=100, fds=1, start=0.0)
    lib.vanished[41] = 40
    group = costs_darwin.Reader(lib).group(40)
    assert group is not None and group.memory_bytes == 100 and group.open_fds == 1
    del lib.procs[40]
    assert costs_darwin.Reader(lib).group(40) is None, "all gone: no figures"
    assert costs_darwin.Reader(lib).group(12345) is None


def test_a_large_group_is_listed_whole() -> None:
    lib = FakeLibproc()
    for pid in range(1000, 1200):
        lib.procs[pid] = Proc(1000, user=0, system=0, resident=1, fds=0, start=0.0)
    reader = costs_darwin.Reader(lib)
    assert sorted(reader.members(1000)) == list(range(1000, 1200))
    group = reader.group(1000)
    assert group is not None and group.memory_bytes == 200


def test_no_library_no_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert costs_darwin.load() is None


def _hide_proc(monkeypatch: pytest.MonkeyPatch, lib: FakeLibproc, wall: list[float]) -> None:
    monkeypatch.setattr(costs, "_PROC", False)
    monkeypatch.setattr(costs, "_DARWIN", costs_darwin.Reader(lib, clock=lambda: wall[0]))


def test_the_sampler_uses_libproc_where_there_is_no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLibproc(numer=1, denom=1)
    lib.procs[300] = Proc(300, user=1_000_000_000, system=0, resident=2048, fds=4, start=90.0)
    wall = [100.0]
    _hide_proc(monkeypatch, lib, wall)
    now = [50.0]
    sampler = costs.Sampler(hold=0.5, clock=lambda: now[0])
    slot, gone = ("web", 0, 300), ("db", 0, 301)
    first = sampler.sample([slot, gone])
    assert first == {
        slot: {"cpu_seconds": 1.0, "cpu_percent": 10.0, "memory_bytes": 2048, "open_fds": 4}
    }, "the first rate: the group's time over its leader's age; no oom_kills key"
    lib.procs[300].system = 500_000_000  # half a second more in two
    now[0] += 2.0
    again = sampler.sample([slot])
    assert again[slot]["cpu_seconds"] == 1.5 and again[slot]["cpu_percent"] == 25.0
    tasks = costs.annotate({"web": {"processes": [{"instance": 0, "pid": 300}]}}, again)
    assert tasks["web"]["memory_bytes"] == 2048
    assert 'taskforce_task_memory_bytes{task="web",instance="0"} 2048' in costs.metrics_text(again)
    assert "oom_kills" not in costs.metrics_text(again)


def test_a_sample_off_the_loop_uses_libproc_too(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLibproc()
    lib.procs[300] = Proc(300, user=3, system=0, resident=10, fds=1, start=0.0)
    _hide_proc(monkeypatch, lib, [1.0])
    sampler = costs.Sampler()
    woken = threading.Event()
    sampler.begin((("web", 0, 300),), woken.set)
    assert woken.wait(10)
    assert sampler.collect() is True
    assert sampler.last()[("web", 0, 300)]["memory_bytes"] == 10
