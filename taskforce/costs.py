"""What each slot costs: CPU time and rate, memory, open descriptors, OOM kills.

Read from the kernel only when someone asks (a ``/status/tasks`` request,
a ``/metrics`` scrape): there is no timer here, so an idle taskforce still
wakes up zero times.  A sample is kept for ``HOLD`` seconds, so that a
burst of requests reads ``/proc`` once.

Where a slot has a cgroup (see ``taskforce.tracking``), its CPU time is the
cgroup's ``cpu.stat`` ``usage_usec`` (everything the slot's processes have
used since taskforce made the cgroup, restarts included, exited helpers
included), its memory ``memory.current`` and its OOM kills ``memory.events``
``oom_kill`` -- the last two only where the memory controller is enabled
for it; else memory is the summed resident size of the cgroup's processes.
Without a cgroup a slot's processes are its process group (the leader's
pid is the group's id): CPU time is their user and system time, their
reaped children's included, memory their summed resident size.  Open
descriptors are counted under ``/proc/PID/fd`` in either case.

Where there is no ``/proc`` but there is Apple's libproc (macOS), the
figures of each slot's process group come from the OS's own calls through
``taskforce.costs_darwin`` (no OOM kills there); where there is neither
(the BSDs) nothing is read and no figure is given (the keys are absent).
This module only reads; it never signals, decides or changes
anything, and never runs from the core.

A sample of a thousand slots takes tens of milliseconds, so the daemon
takes it off its loop (``begin``: on a worker thread that only reads files
and hands the figures back through the loop's wake-up; ``collect`` takes
them in on the loop): a killed task is replaced meanwhile, and the request
that asked waits for the sample without holding anything else up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

if TYPE_CHECKING:
    from taskforce.costs_darwin import Reader

#: How long a sample answers requests before /proc is read again.
HOLD = 0.5

#: Whether there is a ``/proc`` to read the figures from (a feature of the
#: host, not of its name).
_PROC = os.path.isdir("/proc/self")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_HZ = os.sysconf("SC_CLK_TCK")


def _libproc() -> Reader | None:
    """Without /proc: libproc's calls, if the host has them (macOS).  Only
    then is ``costs_darwin`` (and the ``ctypes.util`` it needs) imported."""
    if _PROC:
        return None
    from taskforce import costs_darwin

    return costs_darwin.load()


_DARWIN = _libproc()

#: (task, instance, pid of the slot's leader)
SlotKey = tuple[str, int, int]
Figures = dict[str, Any]


# ------------------------------------------------------------- parsing


class Stat(NamedTuple):
    """What ``/proc/PID/stat`` tells of one process."""

    pgid: int
    #: user + system time, its reaped children's included, in clock ticks
    ticks: int
    #: when it started, in clock ticks after boot
    start: int
    #: resident pages
    rss: int


def parse_stat(text: str) -> Stat | None:
    """``/proc/PID/stat`` (its command may hold spaces and parentheses:
    the fields are those after the last ``)``)."""
    close = text.rfind(")")
    if close < 0:
        return None
    fields = text[close + 2 :].split()
    try:
        # field N of proc(5) is fields[N - 3] here
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        return Stat(int(fields[2]), ticks, int(fields[19]), int(fields[21]))
    except (IndexError, ValueError):
        return None


def parse_keyed(text: str, key: str) -> int | None:
    """The value of ``key`` in a flat keyed file (``cpu.stat``,
    ``memory.events``: ``name value`` lines)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def parse_cgroup(text: str) -> str | None:
    """The v2 path in ``/proc/PID/cgroup`` (its ``0::`` line)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def parse_cgroup2_mount(mountinfo: str) -> tuple[str, str] | None:
    """(root within the hierarchy, mount point) of the cgroup2 mount in
    ``/proc/self/mountinfo``."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if separator + 1 < len(fields) and fields[separator + 1] == "cgroup2":
            return fields[3], fields[4]
    return None


def slot_folder_in(path: str, task: str, instance: int) -> str | None:
    """The part of a cgroup path up to the slot's own folder
    (``.../taskforce-ID/TASK.N``), or None if the path is not in one."""
    folder = f"{quote(task, safe='-_')}.{instance}"
    parts = path.split("/")
    for i in range(len(parts) - 1):
        if parts[i].startswith("taskforce-") and parts[i + 1] == folder:
            return "/".join(parts[: i + 2])
    return None


def _read(path: str) -> str | None:
    # os.open and os.read rather than open(): a third of the time, at a
    # thousand slots several files each.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, _CHUNK)]
        while len(chunks[-1]) == _CHUNK:  # a short read is the end here
            chunks.append(os.read(fd, _CHUNK))
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


_CHUNK = 65536


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# ------------------------------------------------------------- sampling


class Sampler:
    """Samples slots' costs on demand, keeping each sample ``hold`` seconds."""

    def __init__(self, hold: float = HOLD, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold = hold
        self.clock = clock
        #: bumped at every fresh sample (a cache of answers keys on it)
        self.generation = 0
        self._at: float | None = None
        self._for: tuple[SlotKey, ...] = ()
        self._figures: dict[SlotKey, Figures] = {}
        #: the last CPU reading of each slot: (seconds, when)
        self._last: dict[SlotKey, tuple[float, float]] = {}
        #: each slot's cgroup folder, once found (it never moves), and
        #: whether it has the memory controller's files
        self._folders: dict[tuple[str, int], tuple[str, bool]] = {}
        #: slots' leaders found in no slot cgroup (taskforce runs without
        #: cgroups, or one looked at before it joined its own), by the sample
        #: that found them: looked at again ten samples later
        self._outside: dict[SlotKey, int] = {}
        self._mount: tuple[str, str] | None | bool = False

        #: the sample being taken on a worker thread, if any
        self._job: _Job | None = None

    def sample(self, slots: Iterable[SlotKey]) -> dict[SlotKey, Figures]:
        """The figures of each slot that has any (none without ``/proc``
        and libproc),
        read here and now unless the held sample answers.  (Not while a
        sample is taken off the loop: see ``begin``.)"""
        wanted = tuple(slots)
        figures = self.held(wanted)
        if figures is not None:
            return figures
        now = self.clock()
        self._at, self._for = now, wanted
        self.generation += 1
        self._figures = self._measure(wanted, now)
        return self._figures

    def held(
        self, wanted: tuple[SlotKey, ...], *, any_slots: bool = False
    ) -> dict[SlotKey, Figures] | None:
        """The held sample if it still answers for ``wanted`` (None: a fresh
        one is needed).  ``any_slots``: even if the slots changed since it
        was taken (a request that waited for it is answered with it)."""
        if self._at is None or self.clock() - self._at >= self.hold:
            return None
        return self._figures if any_slots or wanted == self._for else None

    def last(self) -> dict[SlotKey, Figures]:
        """The latest sample, held or not."""
        return self._figures

    @property
    def busy(self) -> bool:
        """Whether a sample is being taken off the loop."""
        return self._job is not None

    @property
    def done(self) -> bool:
        """Whether a sample taken off the loop waits to be collected."""
        return self._job is not None and self._job.done.is_set()

    def begin(self, wanted: tuple[SlotKey, ...], wake: Callable[[], None]) -> None:
        """Take a fresh sample of ``wanted`` on a worker thread (unless one
        is under way); ``wake`` is called from it when the figures are in."""
        if self._job is not None:
            return
        job = self._job = _Job(wanted, self.clock())

        def work() -> None:
            try:
                job.figures = self._measure(wanted, job.at)
            except Exception as exc:  # (MemoryError included: reported on the loop)
                job.failure = exc
            finally:
                job.done.set()
                wake()

        threading.Thread(target=work, name="taskforce-costs", daemon=True).start()

    def collect(self) -> BaseException | bool:
        """On the loop: take in a sample taken off it.  True when one came
        in (the requests that waited may be answered), False when none is
        done, the exception when it failed (it holds no figures then)."""
        job = self._job
        if job is None or not job.done.is_set():
            return False
        self._job = None
        # Held from now: a sample of many slots can take longer than the hold.
        self._at, self._for = self.clock(), job.wanted
        self.generation += 1
        self._figures = job.figures
        return job.failure if job.failure is not None else True

    # ----------------------------------------------------------- /proc

    def _cgroup_of(self, task: str, instance: int, pid: int) -> tuple[str, bool] | None:
        """The slot's cgroup folder, and whether it accounts memory."""
        known = self._folders.get((task, instance))
        if known is not None:
            return known
        if self._mount is False:
            self._mount = parse_cgroup2_mount(_read("/proc/self/mountinfo") or "")
        if not isinstance(self._mount, tuple):
            return None
        path = parse_cgroup(_read(f"/proc/{pid}/cgroup") or "")
        inner = slot_folder_in(path, task, instance) if path else None
        if inner is None:
            return None
        root, mount = self._mount
        root = root.rstrip("/")
        if root and not (inner == root or inner.startswith(root + "/")):
            return None
        folder = os.path.join(mount, inner[len(root) :].lstrip("/"))
        found = self._folders[(task, instance)] = (
            folder,
            os.path.exists(os.path.join(folder, "memory.current")),
        )
        return found

    def _measure(self, wanted: tuple[SlotKey, ...], now: float) -> dict[SlotKey, Figures]:
        if not _PROC:
            return self._measure_groups(wanted, now) if _DARWIN is not None else {}
        present = {(task, instance) for task, instance, _ in wanted}
        for gone in [k for k in self._folders if k not in present]:
            del self._folders[gone]
        asked = set(wanted)
        for key in [k for k in self._outside if k not in asked]:
            del self._outside[key]
        members: dict[SlotKey, list[int]] = {}
        cgroup: dict[SlotKey, tuple[str, bool]] = {}
        by_group: dict[int, SlotKey] = {}
        for key in wanted:
            marked = self._outside.get(key)
            if marked is not None and self.generation - marked < 10:
                where = None
            else:
                where = self._cgroup_of(*key)
                if where is None:
                    self._outside[key] = self.generation
            pids = _pids_below(where[0]) if where is not None else None
            if where is not None and pids is not None:
                cgroup[key], members[key] = where, pids
            else:
                if where is not None:  # the folder went: found again next time
                    del self._folders[key[:2]]
                by_group[key[2]] = key
                members[key] = []
        stats: dict[int, Stat] = {}
        if by_group:
            # One pass over /proc finds every process group's members.
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                stat = parse_stat(_read(f"/proc/{name}/stat") or "")
                if stat is not None and stat.pgid in by_group:
                    stats[int(name)] = stat
                    members[by_group[stat.pgid]].append(int(name))
        uptime = _uptime()
        out: dict[SlotKey, Figures] = {}
        for key in wanted:
            pids = members[key]
            for pid in pids:
                if pid not in stats:
                    stat = parse_stat(_read(f"/proc/{pid}/stat") or "")
                    if stat is not None:
                        stats[pid] = stat
            mine = [stats[pid] for pid in pids if pid in stats]
            if not mine and key not in cgroup:
                continue  # gone since: nothing to show
            figures: Figures = {}
            ticks = sum(stat.ticks for stat in mine)
            cpu = ticks / _HZ
            memory = sum(stat.rss for stat in mine) * _PAGE
            if key in cgroup:
                folder, accounted = cgroup[key]
                usage = parse_keyed(_read(f"{folder}/cpu.stat") or "", "usage_usec")
                if usage is not None:
                    cpu = usage / 1e6
                if accounted:  # else the memory controller is not enabled here
                    current = (_read(f"{folder}/memory.current") or "").strip()
                    if current.isdigit():
                        memory = int(current)
                    oom = parse_keyed(_read(f"{folder}/memory.events") or "", "oom_kill")
                    if oom is not None:
                        figures["oom_kills"] = oom
            figures["cpu_seconds"] = round(cpu, 3)
            leader = stats.get(key[2])
            age = uptime - leader.start / _HZ if leader is not None and uptime else 0.0
            figures["cpu_percent"] = self._percent(key, cpu, now, ticks / _HZ, age)
            figures["memory_bytes"] = memory
            figures["open_fds"] = sum(_fds(pid) for pid in pids)
            out[key] = figures
        for old in [k for k in self._last if k not in out]:
            del self._last[old]
        return out

    def _percent(self, key: SlotKey, cpu: float, now: float, group: float, age: float) -> float:
        """The CPU rate since the slot's last reading; the first time, the
        group's time (``group`` seconds) over its leader's ``age``."""
        last = self._last.get(key)
        if last is not None and cpu >= last[0] and now > last[1]:
            percent = (cpu - last[0]) / (now - last[1]) * 100
        else:
            percent = group / age * 100 if age > 0 else 0.0
        self._last[key] = (cpu, now)
        return round(percent, 1)

    def _measure_groups(self, wanted: tuple[SlotKey, ...], now: float) -> dict[SlotKey, Figures]:
        """Without /proc: each slot's process group, through libproc."""
        assert _DARWIN is not None
        out: dict[SlotKey, Figures] = {}
        for key in wanted:
            group = _DARWIN.group(key[2])
            if group is None:
                continue  # gone since: nothing to show
            cpu = group.cpu_seconds
            out[key] = {
                "cpu_seconds": round(cpu, 3),
                "cpu_percent": self._percent(key, cpu, now, cpu, group.leader_age),
                "memory_bytes": group.memory_bytes,
                "open_fds": group.open_fds,
            }
        for old in [k for k in self._last if k not in out]:
            del self._last[old]
        return out


class _Job:
    """A sample being taken on a worker thread."""

    def __init__(self, wanted: tuple[SlotKey, ...], at: float) -> None:
        self.wanted = wanted
        self.at = at
        self.figures: dict[SlotKey, Figures] = {}
        self.failure: BaseException | None = None
        self.done = threading.Event()


def _pids_below(folder: str) -> list[int] | None:
    """The processes of a cgroup and its sub-cgroups (None: no such cgroup)."""
    top = _read(f"{folder}/cgroup.procs")
    if top is None:
        return None
    found = [int(word) for word in top.split()]
    # Sub-cgroups are rare (a task must be allowed to make them): the
    # folder is listed only when its link count says it has some (kernfs
    # counts them, as any file system does; a stat costs a third of a list).
    try:
        if os.stat(folder).st_nlink <= 2:
            return found
        with os.scandir(folder) as entries:
            inner = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return found
    for path in inner:
        found.extend(_pids_below(path) or ())
    return found


def _uptime() -> float:
    words = (_read("/proc/uptime") or "").split()
    try:
        return float(words[0])
    except (IndexError, ValueError):
        return 0.0


# ------------------------------------------------------------ showing


def slot_keys(tasks: dict[str, Any]) -> list[SlotKey]:
    """The slots of a status answer (``/status/tasks``) that have a process."""
    return [
        (name, int(slot.get("instance", 0)), int(slot["pid"]))
        for name, task in tasks.items()
        for slot in task.get("processes") or ()
        if slot.get("pid") is not None
    ]


_SUMMED = ("cpu_seconds", "cpu_percent", "memory_bytes", "open_fds", "oom_kills")


def annotate(tasks: dict[str, Any], figures: dict[SlotKey, Figures]) -> dict[str, Any]:
    """Add each slot's figures to a status answer, and their sums to its task."""
    for name, task in tasks.items():
        sums: dict[str, float] = {}
        for slot in task.get("processes") or ():
            if slot.get("pid") is None:
                continue
            found = figures.get((name, int(slot.get("instance", 0)), int(slot["pid"])))
            if not found:
                continue
            slot.update(found)
            for key in _SUMMED:
                if key in found:
                    sums[key] = sums.get(key, 0) + found[key]
        for key, value in sums.items():
            task[key] = round(value, 3) if isinstance(value, float) else value
    return tasks


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_METRICS = (
    ("cpu_seconds", "taskforce_task_cpu_seconds_total", "counter", "CPU time (user and system)"),
    ("memory_bytes", "taskforce_task_memory_bytes", "gauge", "Memory in use"),
    ("open_fds", "taskforce_task_open_fds", "gauge", "Open file descriptors"),
    ("oom_kills", "taskforce_task_oom_kills_total", "counter", "Processes killed for memory"),
)


def metrics_text(figures: dict[SlotKey, Figures]) -> str:
    """The Prometheus families of the slots' costs, labelled by task and
    instance (families with no figure at all are left out)."""
    lines: list[str] = []
    for key, metric, kind, text in _METRICS:
        values = sorted((slot, found[key]) for slot, found in figures.items() if key in found)
        if not values:
            continue
        lines.append(f"# HELP {metric} {text} of each slot's processes.")
        lines.append(f"# TYPE {metric} {kind}")
        for (task, instance, _pid), value in values:
            lines.append(f'{metric}{{task="{_label(task)}",instance="{instance}"}} {value}')
    return "\n".join(lines) + "\n" if lines else ""
