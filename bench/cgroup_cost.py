"""What a cgroup per slot costs: restart latency and 200-task start-up, with
cgroups and without (``TASKFORCE_CGROUPS=off``), side by side in one run.

- Restart latency: two daemons run ``--tasks`` sleepers each, one with a
  cgroup per slot, one without; kills alternate between them (a stable task
  of each in turn, as ``restart_latency.py`` does), so both see the same
  machine at the same time.
- Start-up: a daemon started from cold until all ``--tasks`` tasks have
  exec'd (as ``startup.py`` does), with and without, alternately.
- Moving one process into a cgroup (``cgroup.procs``), alone: the step a
  task's first process takes before its exec when cgroups are on.

Where the host allows it (root, a kernel with ``favordynmods``), each of the
above is also measured with the cgroup2 hierarchy remounted with
``favordynmods``, alternating with the mount as it was; the mount is always
put back as it was.  A move into a cgroup takes cgroup_threadgroup_rwsem for
writing, which waits for an RCU grace period unless the hierarchy favours
dynamic changes (at some cost to every fork and exit).

    python bench/cgroup_cost.py [--tasks 200] [--repeats 40] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import common
import restart_latency
import startup
from common import BenchDaemon, Report, check, summary_ms

TARGET_RATIO = 1.10
TRACKING = {"off": {"TASKFORCE_CGROUPS": "off"}, "cgroups": {"TASKFORCE_CGROUPS": "auto"}}


def cgroup2_mount() -> tuple[str, str] | None:
    """The cgroup2 hierarchy's mount point and its superblock options."""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            at = fields.index("-")
            if fields[at + 1] == "cgroup2":
                return fields[4], fields[at + 3]
    return None


def remount(point: str, options: str) -> None:
    """mount(2) with MS_REMOUNT and exactly ``options`` (``mount -o remount``
    of util-linux merges the options in force, so it cannot take one away)."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = 32 | (1 << 21)  # MS_REMOUNT | MS_RELATIME
    data = ",".join(o for o in options.split(",") if o not in ("rw", "ro")).encode()
    if libc.mount(None, point.encode(), None, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"remount {point} with {options!r}")


@contextmanager
def mount_states(wanted: bool) -> Iterator[dict[str, Any]]:
    """{state name: function putting the mount in that state}; restored after."""
    found = cgroup2_mount()
    states: dict[str, Any] = {"as mounted": lambda: None}
    if not wanted or found is None or os.geteuid() != 0:
        yield states
        return
    point, options = found
    if "favordynmods" in options.split(","):
        yield states  # already on: nothing to compare with
        return
    probe = subprocess.run(
        ["mount", "-o", "remount,favordynmods", point], capture_output=True, text=True
    )
    if probe.returncode != 0:
        yield states
        return
    try:
        remount(point, options)
        states["as mounted"] = lambda: remount(point, options)
        states["favordynmods"] = lambda: subprocess.run(
            ["mount", "-o", "remount,favordynmods", point], check=True
        )
        yield states
    finally:
        remount(point, options)


def move_cost(point: str, repeats: int, gap: float) -> list[float]:
    """Seconds to write a fresh child's pid into a cgroup's ``cgroup.procs``."""
    folder = os.path.join(point, f"tfbench-move-{os.getpid()}")
    os.mkdir(folder)
    times = []
    try:
        for _ in range(repeats):
            pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], {})
            try:
                started = time.perf_counter()
                with open(os.path.join(folder, "cgroup.procs"), "w") as handle:
                    handle.write(str(pid))
                times.append(time.perf_counter() - started)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            time.sleep(gap)
    finally:
        os.rmdir(folder)
    return times


def measure(args: argparse.Namespace) -> Report:
    report = Report(
        "cgroup_cost", {"tasks": args.tasks, "repeats": args.repeats, "runs": args.runs}
    )
    argvs = [common.sleeper_argv(i) for i in range(args.tasks)]
    lines = [common.argv_bytes(a) for a in argvs]
    config = common.fleet_config(argvs)
    restart: dict[tuple[str, str], list[float]] = {}
    start: dict[tuple[str, str], list[float]] = {}
    moves: dict[str, list[float]] = {}
    events = common.ProcEvents.open()
    method = "netlink" if events is not None else "poll"
    with ExitStack() as stack:
        states = stack.enter_context(mount_states(args.favordynmods))
        stack.callback(lambda: events and events.close())
        found = cgroup2_mount()
        if found is not None and os.geteuid() == 0:
            for _ in range(2):
                for state, put in states.items():
                    put()
                    moves.setdefault(state, []).extend(move_cost(found[0], args.repeats // 2, 0.2))
        daemons = {
            mode: stack.enter_context(BenchDaemon(config, env=env))
            for mode, env in TRACKING.items()
        }
        fleets = {}
        for mode, daemon in daemons.items():
            daemon.start()
            fleets[mode] = restart_latency.Fleet(daemon, lines, args)
            if "a cgroup per slot" not in daemon.log_text() and mode == "cgroups":
                report.notes.append("no cgroups on this host: both daemons run without")
        for _ in range(args.repeats):
            for state, put in states.items():
                put()
                time.sleep(args.gap)
                for mode, fleet in fleets.items():
                    total = fleet.kill_one(method, events)["total"]
                    restart.setdefault((mode, state), []).append(total)
                    time.sleep(args.gap)
        for daemon in daemons.values():
            daemon.cleanup()
        expected = dict.fromkeys(lines, 1)
        for _ in range(args.runs):
            for state, put in states.items():
                put()
                for mode, env in TRACKING.items():
                    result = startup.one_start(config, expected, args.timeout, None, env)
                    start.setdefault((mode, state), []).append(result["all_running_s"])

    report.row(f"restart latency ({method}), kill -> replacement exec'd", "")
    figures: dict[str, Any] = {"restart": {}, "startup": {}, "move": {}, "method": method}
    for state in states:
        for mode in TRACKING:
            s = summary_ms(restart[(mode, state)])
            figures["restart"][f"{mode}, {state}"] = s
            report.row(
                f"  {mode:8} {state}",
                f"median {s['median_ms']:6.2f} ms  p90 {s['p90_ms']:6.2f} ms  n {s['n']}",
            )
    report.row(f"{args.tasks} tasks: start -> all running (median of {args.runs})", "")
    for state in states:
        for mode in TRACKING:
            values = start[(mode, state)]
            figures["startup"][f"{mode}, {state}"] = values
            report.row(
                f"  {mode:8} {state}",
                f"median {statistics.median(values) * 1000:6.1f} ms  runs "
                + ", ".join(f"{v * 1000:.0f}" for v in values),
            )
    if moves:
        report.row("moving one process into a cgroup (write to cgroup.procs)", "")
        for state, values in moves.items():
            s = summary_ms(values)
            figures["move"][state] = s
            report.row(f"  {state}", f"median {s['median_ms']:6.2f} ms  p90 {s['p90_ms']:6.2f} ms")
    report.figures = figures
    for state in states:
        ratio = statistics.median(restart[("cgroups", state)]) / statistics.median(
            restart[("off", state)]
        )
        report.checks.append(
            check(f"restart median, cgroups/off ({state})", ratio, TARGET_RATIO, "x")
        )
        ratio = statistics.median(start[("cgroups", state)]) / statistics.median(
            start[("off", state)]
        )
        report.checks.append(
            check(f"{args.tasks}-task start-up, cgroups/off ({state})", ratio, TARGET_RATIO, "x")
        )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per daemon (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=40, help="kills per daemon and mount state (default 40)"
    )
    parser.add_argument("--runs", type=int, default=5, help="start-ups of each (default 5)")
    parser.add_argument("--stable", type=float, default=1.5, help="kill only tasks up this long")
    parser.add_argument("--gap", type=float, default=0.2, help="pause between kills (s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per kill and start (s)")
    parser.add_argument("--poll-sleep", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-favordynmods",
        dest="favordynmods",
        action="store_false",
        help="do not remount the cgroup2 hierarchy with favordynmods",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        lambda a: 120 + 4 * a.repeats * (a.stable + a.gap + 1) + 4 * a.runs * (a.timeout + 10),
    )


if __name__ == "__main__":
    os.environ.pop("TASKFORCE_WATCHER", None)
    sys.exit(main())
