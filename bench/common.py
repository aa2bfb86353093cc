"""Shared machinery for the benchmarks: a real taskforce daemon under watch.

Each benchmark starts ``python -m taskforce`` on a generated config in a
temporary folder, watches the daemon and its children through ``/proc``, and
prints a short table (or JSON with ``--json``).  These are measurements, not
tests: nothing here asserts on a timing; a missed target is reported.

Rules every benchmark keeps:

- Bounded in time: every wait has a deadline, and ``bounded()`` arms an alarm
  for the whole run.
- Cleans up whatever it started, on success, on an exception, on Ctrl-C,
  SIGTERM or SIGHUP: the daemon is stopped (SIGTERM, then SIGKILL), then any
  process still carrying the run's marker in its environment is killed.  The
  daemon hands its own environment to every task, so the marker reaches every
  task and every grandchild.

Linux only: everything is read from ``/proc``.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARKER_VAR = "TFBENCH_RUN"
#: The sleepers' durations start here; task ``i`` sleeps ``SLEEP_BASE + i`` so
#: its argv alone tells it apart from every other task.
SLEEP_BASE = 100000


class Interrupted(BaseException):
    """SIGTERM or SIGHUP reached the benchmark; unwind and clean up."""


class BenchTimeout(BaseException):
    """The benchmark ran past its overall time bound."""


# --------------------------------------------------------------------- /proc


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def cmdline(pid: int) -> bytes | None:
    """The raw argv of ``pid`` (NUL-separated, NUL-terminated), or None."""
    return read_bytes(f"/proc/{pid}/cmdline")


def argv_bytes(argv: Sequence[str]) -> bytes:
    """What ``/proc/PID/cmdline`` shows for a process exec'd with ``argv``."""
    return b"".join(os.fsencode(arg) + b"\0" for arg in argv)


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def has_children_file(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


class ChildWatcher:
    """Lists the children of one process as fast as ``/proc`` allows.

    With CONFIG_PROC_CHILDREN it reads ``/proc/PID/task/TID/children`` (one
    file per thread: a child belongs to the thread that forked it); else it
    scans every ``/proc/N/stat`` for the parent pid, which is far slower.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fast = has_children_file(pid)
        self.refresh_threads()

    def refresh_threads(self) -> None:
        tids = threads(self.pid) or [self.pid]
        self.paths = [f"/proc/{self.pid}/task/{tid}/children" for tid in tids]

    def children(self) -> list[int]:
        if not self.fast:
            return scan_children(self.pid)
        found: list[int] = []
        for path in self.paths:
            data = read_bytes(path)
            if data:
                found.extend(int(p) for p in data.split())
        return found


def scan_children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_bytes(f"/proc/{entry}/stat")
        if stat is None:
            continue
        rest = stat[stat.rindex(b")") + 2 :].split()
        if int(rest[1]) == parent:
            found.append(int(entry))
    return found


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of ``/proc/PID/stat`` from field 3 (state) on; None if gone."""
    data = read_bytes(f"/proc/{pid}/stat")
    if data is None:
        return None
    return data[data.rindex(b")") + 2 :].split()


def state(pid: int) -> str | None:
    fields = stat_fields(pid)
    return fields[0].decode() if fields else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    fields = stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    # stat fields 14 and 15 (1-based); ``fields`` starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches summed over every thread."""
    voluntary = involuntary = 0
    for tid in threads(pid):
        data = read_bytes(f"/proc/{pid}/task/{tid}/status")
        if data is None:
            continue
        for line in data.decode().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def memory_kib(pid: int) -> dict[str, int]:
    """Pss, Rss, Uss (private clean + dirty), Swap of ``pid``, in KiB."""
    data = read_bytes(f"/proc/{pid}/smaps_rollup")
    if data is None:
        raise ProcessLookupError(pid)
    values: dict[str, int] = {}
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
            values[parts[0][:-1]] = int(parts[1])
    return {
        "pss_sole_python": values.get("Pss", 0) + python_shared_kib(pid),
        "pss": values.get("Pss", 0),
        "rss": values.get("Rss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
        "swap": values.get("Swap", 0),
        "pss_anon": values.get("Pss_Anon", 0),
        "pss_file": values.get("Pss_File", 0),
    }


def python_shared_kib(pid: int) -> int:
    """What ``pid`` shares with other Python processes: Rss - Pss summed over
    the interpreter's own files (the executable, libpython, extension
    modules).  Added to Pss, it gives the Pss the process would have as the
    only Python process on the host."""
    data = read_bytes(f"/proc/{pid}/smaps")
    if data is None:
        raise ProcessLookupError(pid)
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    exe = os.path.realpath(sys.executable)
    shared = rss = pss = 0
    ours = False
    for line in data.decode(errors="replace").splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            if ours:
                shared += rss - pss
            path = head[5] if len(head) == 6 else ""
            ours = (
                path == exe
                or "libpython" in path
                or (path.endswith(".so") and any(path.startswith(r) for r in roots))
            )
            rss = pss = 0
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    if ours:
        shared += rss - pss
    return shared


def pids_with_marker(marker: str) -> list[int]:
    """Every live process whose environment carries ``MARKER_VAR=marker``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        env = read_bytes(f"/proc/{entry}/environ")
        if env and needle in env.split(b"\0") and state(int(entry)) not in (None, "Z", "X"):
            found.append(int(entry))
    return found


class ProcEvents:
    """The kernel's process events (netlink proc connector), with timestamps.

    Every fork, exec and exit on the host arrives as a datagram stamped with
    CLOCK_MONOTONIC in the kernel -- the clock of ``time.monotonic_ns()`` --
    so latencies are measured without polling and without disturbing the
    CPUs.  Needs CAP_NET_ADMIN and CONFIG_PROC_EVENTS; ``open()`` returns None
    when either is missing.
    """

    FORK, EXEC, EXIT = 0x1, 0x2, 0x80000000
    _NETLINK_CONNECTOR = 11
    _CN_IDX_PROC = 1
    _LISTEN, _IGNORE = 1, 2

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def open(cls) -> ProcEvents | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, cls._NETLINK_CONNECTOR)
        except (OSError, AttributeError):
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, cls._CN_IDX_PROC))
            events = cls(sock)
            events._control(cls._LISTEN)
            sock.settimeout(2.0)
            # The kernel acknowledges the subscription with a "none" event.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                for what, *_ in events._parse(sock.recv(65536)):
                    if what == 0:
                        return events
        except OSError:
            pass
        sock.close()
        return None

    def _control(self, op: int) -> None:
        payload = struct.pack("I", op)
        cn = struct.pack("IIIIHH", self._CN_IDX_PROC, 1, 0, 0, len(payload), 0) + payload
        self.sock.send(struct.pack("IHHII", 16 + len(cn), 3, 0, 0, 0) + cn)  # NLMSG_DONE

    @staticmethod
    def _parse(data: bytes) -> Iterator[tuple[int, int, int, int]]:
        """(what, timestamp_ns, pid_a, pid_b) per event.

        fork: (parent tgid, child pid); exec: (pid, tgid); exit: (pid, tgid).
        """
        offset = 0
        while offset + 16 <= len(data):
            length = struct.unpack_from("I", data, offset)[0]
            if length < 16:
                break
            body = offset + 16 + 20  # nlmsghdr, cn_msg
            if body + 16 <= offset + length:
                what, _cpu, ts = struct.unpack_from("IIQ", data, body)
                if what == ProcEvents.FORK:
                    _ppid, ptgid, cpid, _ctgid = struct.unpack_from("4i", data, body + 16)
                    yield what, ts, ptgid, cpid
                elif what in (ProcEvents.EXEC, ProcEvents.EXIT):
                    pid, tgid = struct.unpack_from("2i", data, body + 16)
                    yield what, ts, pid, tgid
                else:
                    yield what, ts, 0, 0
            offset += (length + 3) & ~3

    def events(self, timeout: float) -> Iterator[tuple[int, int, int, int]]:
        """Events until ``timeout`` seconds pass without one."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            yield from self._parse(data)

    def drain(self) -> None:
        """Drop every event received so far.  A burst that overflowed the
        socket's buffer (10,000 tasks starting) is reported once, as
        ENOBUFS, before what it holds: read on past it, or the buffer stays
        full and the events that matter next are dropped."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    if not self.sock.recv(65536):
                        break
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        break
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        try:
            self._control(self._IGNORE)
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------ figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """median / p90 / max / min / mean of durations in seconds, as ms."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": percentile(ms, 90),
        "max_ms": max(ms),
        "min_ms": min(ms),
        "mean_ms": statistics.fmean(ms),
    }


@dataclass
class Check:
    """One target: what, the limit, the measured value, and whether it passes."""

    what: str
    target: str
    measured: float
    unit: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "target": self.target,
            "measured": self.measured,
            "unit": self.unit,
            "pass": self.passed,
        }


def check(what: str, measured: float, limit: float, unit: str, *, strict: bool = False) -> Check:
    """``measured <= limit`` (or ``<`` when ``strict``)."""
    passed = measured < limit if strict else measured <= limit
    sign = "<" if strict else "<="
    return Check(what, f"{sign} {limit:g} {unit}", measured, unit, passed)


@dataclass
class Report:
    bench: str
    params: dict[str, Any]
    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, label: str, value: str) -> None:
        self.rows.append((label, value))

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "params": self.params,
            "machine": machine(),
            "figures": self.figures,
            "table": [list(row) for row in self.rows],
            "checks": [c.as_dict() for c in self.checks],
            "notes": self.notes,
        }

    def print(self, as_json: bool) -> None:
        if as_json:
            json.dump(self.as_dict(), sys.stdout, indent=1)
            sys.stdout.write("\n")
            return
        print_table(self.bench, self.params, self.rows, self.notes)
        if self.checks:
            print_checks(self.checks)


def print_table(
    bench: str, params: dict[str, Any], rows: Sequence[Sequence[str]], notes: Sequence[str]
) -> None:
    print(f"== {bench} ({', '.join(f'{k}={v}' for k, v in params.items())})")
    width = max((len(row[0]) for row in rows), default=0)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}".rstrip())
    for note in notes:
        print(f"  note: {note}")


def print_checks(checks: Iterable[Check], *, bench: str | None = None) -> None:
    rows = [
        (
            *([bench] if bench is not None else []),
            c.what,
            c.target,
            f"{c.measured if isinstance(c.measured, int) else format(c.measured, '#.3g')} {c.unit}",
            "PASS" if c.passed else "MISS",
        )
        for c in checks
    ]
    heads = (*(["bench"] if bench is not None else []), "target", "limit", "measured", "")
    widths = [max(len(str(r[i])) for r in [heads, *rows]) for i in range(len(heads))]
    for r in [heads, *rows]:
        print("  " + "  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths, strict=True)).rstrip())


_MACHINE: dict[str, Any] | None = None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    global _MACHINE
    if _MACHINE is None:
        model = "?"
        text = read_bytes("/proc/cpuinfo") or b""
        for line in text.decode(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        try:
            rev = subprocess.run(
                ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            rev = "?"
        _MACHINE = {
            "cpu": model,
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "executable": sys.executable,
            "taskforce_rev": rev or "?",
            "loadavg": os.getloadavg(),
            "proc_children": has_children_file(os.getpid()),
        }
    return _MACHINE


# ---------------------------------------------------------------- the daemon


def sleeper_argv(i: int) -> list[str]:
    """A tiny task: ``sleep N`` with an N that names task ``i``."""
    return [shutil.which("sleep") or "/bin/sleep", str(SLEEP_BASE + i)]


def python_argv(i: int) -> list[str]:
    """A minimal Python task (no site, blocked in pause), named by ``i``."""
    return [sys.executable, "-S", "-c", "import signal; signal.pause()", f"tfbench-{i}"]


CHILDREN: dict[str, Callable[[int], list[str]]] = {"sleep": sleeper_argv, "python": python_argv}


def fleet_config(argvs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """One ``wait`` task per argv, named t000, t001, ..."""
    return {
        "tasks": {
            f"t{i:04d}": {"control": "wait", "commands": {"start": list(argv)}}
            for i, argv in enumerate(argvs)
        }
    }


def snapshot_package(root: Path) -> Path:
    """Copy ``taskforce/`` (sources only) under ``root``, byte-compiled; the
    folder to put on PYTHONPATH."""
    import compileall

    dest = root / "src"
    shutil.copytree(
        REPO / "taskforce",
        dest / "taskforce",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    compileall.compile_dir(dest, quiet=2)
    return dest


def installed_python(root: Path, python: str = sys.executable) -> str:
    """An interpreter that sees ``python``'s packages as a wheel install
    would; the path of its executable.

    A development install (``pip install -e .``) adds a finder that every
    start of that venv's interpreter imports, and with it ``pathlib``,
    ``ipaddress`` and ``urllib.parse``: 0.66 MiB of each daemon's memory that
    taskforce installed from its wheel, as an operator runs it, does not
    carry. So a venv without pip is made under ``root``, whose site-packages
    names ``python``'s on a line of a ``.pth`` file: a line naming a folder
    only extends ``sys.path``, and the ``.pth`` files in that folder (the
    finder's among them) are not run. taskforce itself must come from
    ``PYTHONPATH`` (a snapshot).
    """

    def site_packages(interpreter: str) -> list[str]:
        probe = (
            "import json, sysconfig\n"
            "print(json.dumps(sorted({sysconfig.get_path(k) for k in ('purelib', 'platlib')})))"
        )
        done = subprocess.run([interpreter, "-c", probe], capture_output=True, check=True)
        return list(json.loads(done.stdout))

    venv = root / "installed-venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    made = str(venv / "bin" / "python")
    lines = "".join(f"{folder}\n" for folder in site_packages(python))
    Path(site_packages(made)[0], "bench-dependencies.pth").write_text(lines)
    return made


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``proc`` and give it ``timeout`` seconds to go; then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class BenchDaemon:
    """One ``python -m taskforce`` run on ``config``, always cleaned up.

    Use as a context manager.  Logs go to ``self.log`` (``-e`` to a file).
    With ``snapshot`` (the default) the daemon is a copy of the package run
    as if installed from its wheel (``installed_python``).
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        expires: float = 900.0,
        extra_args: Sequence[str] = (),
        python: Sequence[str] = (),
        snapshot: bool = True,
        command: Sequence[str] | None = None,
    ) -> None:
        self.marker = uuid.uuid4().hex[:16]
        self.root = Path(tempfile.mkdtemp(prefix="tfbench-"))
        self.config_path = self.root / "taskforce.conf"
        self.config_path.write_text(json.dumps(config, indent=1))
        #: How long a stop may take before the daemon is SIGKILLed: a killed
        #: taskforce leaves its cgroup tree (until the next one to start
        #: removes it), so a big fleet is given the time its stop takes.
        self.stop_deadline = 20.0 + len(config.get("tasks") or ()) / 200
        self.log = self.root / "taskforce.log"
        self.env = {**os.environ, **(env or {}), MARKER_VAR: self.marker}
        if snapshot:
            # Run a private copy of the package, so that edits to the working
            # tree during a run (which make the daemon reset itself: its own
            # code changed) cannot disturb the measurement.
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(snapshot_package(self.root)), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
            if not python:
                python = [installed_python(self.root)]
        if env is None or "TASKFORCE_WATCHER" not in env:
            self.env.pop("TASKFORCE_WATCHER", None)
        self.argv = [
            *(python or [sys.executable]),
            "-m",
            "taskforce",
            "-e",
            "-f",
            str(self.config_path),
            "-r",
            "-",
            # A safety net: even if this benchmark is SIGKILLed, the daemon
            # stops everything and exits on its own.
            "--expires",
            str(expires),
            *extra_args,
        ]
        if command is not None:
            self.argv = list(command)  # another supervisor, for calibration
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.children: ChildWatcher | None = None

    def __enter__(self) -> BenchDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Launch the daemon; the ``perf_counter`` just before the launch."""
        with open(self.log, "ab") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=self.env,
                start_new_session=True,  # Ctrl-C on the terminal is ours to handle
            )
        self.children = ChildWatcher(self.proc.pid)
        return self.started_at

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def running(self, expected: dict[bytes, int]) -> dict[int, bytes]:
        """Children whose cmdline is one of ``expected`` (cmdline -> count).

        A child counts as running once it has exec'd: before the exec its
        cmdline is still the daemon's.
        """
        assert self.children is not None
        found = {}
        for pid in self.children.children():
            line = cmdline(pid)
            if line in expected:
                found[pid] = line
        return found

    def wait_running(
        self, expected: dict[bytes, int], timeout: float, *, interval: float = 0.002
    ) -> tuple[float, dict[int, bytes]]:
        """Wait until every expected cmdline runs ``count`` times.

        Returns the ``perf_counter`` when it was first seen so, and the pids.
        """
        total = sum(expected.values())
        deadline = time.monotonic() + timeout
        while True:
            found = self.running(expected)
            now = time.perf_counter()
            if len(found) >= total:
                counts: dict[bytes, int] = {}
                for line in found.values():
                    counts[line] = counts.get(line, 0) + 1
                if counts == expected:
                    return now, found
            if not self.alive():
                raise RuntimeError(f"taskforce exited early; its log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out after {timeout:g}s: {len(found)} of {total} tasks running; "
                    f"log:\n{self.log_tail()}"
                )
            if interval:
                time.sleep(interval)

    def cleanup(self) -> list[int]:
        """Stop the daemon and kill anything left; the pids that had to be killed."""
        with signals_deferred():
            killed: list[int] = []
            if self.proc is not None:
                terminate(self.proc, self.stop_deadline)
                # Processes signalled a moment ago may still be on their way
                # out; give them a moment before calling them left behind.
                settle = time.monotonic() + 2.0
                while pids_with_marker(self.marker) and time.monotonic() < settle:
                    time.sleep(0.05)
                for _ in range(3):
                    left = pids_with_marker(self.marker)
                    if not left:
                        break
                    for pid in left:
                        killed.append(pid)
                        for kill in (os.killpg, os.kill):
                            try:
                                kill(pid, signal.SIGKILL)
                            except OSError:
                                pass
                    time.sleep(0.2)
            shutil.rmtree(self.root, ignore_errors=True)
            if killed:
                print(
                    f"bench: killed {len(set(killed))} process(es) still running "
                    "after the supervisor exited",
                    file=sys.stderr,
                )
            return killed


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold off SIGINT/SIGTERM/SIGHUP/SIGALRM so a cleanup always finishes;
    the first one that came is raised afterwards."""
    got: list[int] = []
    previous = {}

    def note(signum: int, frame: object) -> None:
        got.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        previous[signum] = signal.signal(signum, note)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:
        if got[0] == signal.SIGINT:
            raise KeyboardInterrupt
        if got[0] == signal.SIGALRM:
            raise BenchTimeout("benchmark ran past its time bound")
        raise Interrupted(got[0])


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _timed_out(signum: int, frame: object) -> None:
    raise BenchTimeout("benchmark ran past its time bound")


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception and bound the whole run."""
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)
    signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(max(1, math.ceil(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def run_main(
    measure: Callable[[argparse.Namespace], Report],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    bound: Callable[[argparse.Namespace], float],
) -> int:
    """Parse, measure within the bound, print; exit 0 even when a target is missed."""
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench: needs Linux (/proc)", file=sys.stderr)
        return 2
    try:
        with bounded(bound(args)):
            report = measure(args)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except Interrupted as exc:
        print(
            f"bench: got signal {exc.args[0]}; everything it started was stopped", file=sys.stderr
        )
        return 128 + int(exc.args[0])
    except BenchTimeout as exc:
        print(f"bench: {exc}; everything it started was stopped", file=sys.stderr)
        return 3
    except RuntimeError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    report.print(args.json)
    return 0
