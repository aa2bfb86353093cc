"""The cost of one spawn, on each side, and how it grows with the descriptors
the daemon holds.

For each count of ``--descriptors`` held open (pipes, close-on-exec, as a
daemon's output captures are), ``--spawns`` sleepers are started one after
another, two ways:

- ``taskforce``: ``taskforce.process.start``, the daemon's own path
  (``posix_spawn`` of the ``/bin/sh`` shim that sets ``Task_pid`` and execs
  the program);
- ``direct``: ``os.posix_spawn`` of the program itself, no shim: the floor
  any way of setting ``Task_pid`` in the child could reach.

Per spawn: the parent's CPU (``time.process_time`` around the spawn calls,
the copy of the descriptor table included) and the child's CPU until it runs
the program (``/proc/PID/schedstat``: the shim's exec and the closing of the
inherited close-on-exec descriptors included), as medians.  CPU times, not
wall times, so that a busy machine moves them little.  Linux only (``/proc``).

    python bench/spawn_cost.py [--descriptors 0,2000,19000] [--spawns 200] [--json]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from common import Report

from taskforce import process

SLEEP = "/bin/sleep"


def child_cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as handle:
        return int(handle.read().split()[0]) / 1e6


def wait_exec(pids: Sequence[int], argv: Sequence[str], deadline: float) -> None:
    """Until every one of ``pids`` runs ``argv`` (its exec is done)."""
    wanted = ("\0".join(argv) + "\0").encode()
    for pid in pids:
        while True:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read() == wanted:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"pid {pid} did not exec {argv[0]}")
            time.sleep(0.001)


def measure(start: Callable[[list[str]], int], spawns: int, tag: int) -> tuple[float, float]:
    """(parent CPU ms, child CPU ms) per spawn, medians over ``spawns``."""
    argv = [SLEEP, str(900_000 + tag)]
    pids: list[int] = []
    parent: list[float] = []
    try:
        for _ in range(spawns):
            t0 = time.process_time()
            pids.append(start(argv))
            parent.append((time.process_time() - t0) * 1e3)
        wait_exec(pids, argv, time.monotonic() + 60 + spawns * 0.05)
        child = [child_cpu_ms(pid) for pid in pids]
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    # process_time has a coarse tick on some kernels: the mean is fairer than the median.
    return statistics.fmean(parent), statistics.median(child)


def start_taskforce(argv: list[str]) -> int:
    pid, report = process.start(argv, dict(os.environ))
    if report is not None:
        process.read_report(report)
    return pid


def start_direct(argv: list[str]) -> int:
    return os.posix_spawn(argv[0], argv, dict(os.environ), setpgroup=0)


def run(options: argparse.Namespace) -> Report:
    report = Report("spawn_cost", {"spawns": options.spawns, "descriptors": options.descriptors})
    figures: dict[str, dict[str, float]] = {}
    held: list[int] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for count in options.descriptors:
            if count + 64 > hard:
                report.row(f"{count} descriptors", f"skipped: the hard limit is {hard}")
                continue
            if count + 64 > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, hard))
            while len(held) < count:
                held.extend(os.pipe())
            for name, start in (("taskforce", start_taskforce), ("direct", start_direct)):
                parent, child = measure(start, options.spawns, count)
                figures[f"{name}@{count}"] = {"parent_cpu_ms": parent, "child_cpu_ms": child}
                report.row(
                    f"{name:9s} {count:6d} fds held",
                    f"parent {parent:6.3f} ms + child {child:6.3f} ms CPU per spawn",
                )
    finally:
        for fd in held:
            os.close(fd)
    report.figures = figures
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--descriptors", default="0,2000,19000")
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    options.descriptors = [int(n) for n in options.descriptors.split(",") if n]
    if not os.path.exists("/proc/self/schedstat"):
        print("spawn_cost.py needs Linux /proc/PID/schedstat", file=sys.stderr)
        return 2
    run(options).print(options.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
