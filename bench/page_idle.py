"""The status page left open: taskforce's wake-ups and memory, with nobody
looking and with the page open.

taskforce runs ``--tasks`` sleepers (never exiting) and, with ``--churn S``,
one task ``churn`` that prints a line and exits every S seconds (so the page
has something to show: a status event and a log line each time).  Once
start-up has settled:

0. with ``--churn``: the churn task alone, nobody looking (for scale);
1. nobody looking, the churn stopped: wake-ups (context switches) and CPU
   over ``--seconds``;
2. the page open in headless Chromium (``/usr/bin/chromium``; with
   ``--client sse``, or when Chromium is missing, a plain client reading
   ``/status/events`` instead), the churn task stopped: the same figures,
   so the only difference is the open page;
3. the page open for ``--long`` seconds with the churn on and the churn
   task's output open on the page (``/status/logs/follow``): taskforce's RSS
   at the start and the end (sampled every ``--long/10``), and wake-ups.

Wake-ups are read as in ``bench/idle.py``: every wake-up of a sleeping
daemon is a context switch.

    python bench/page_idle.py [--tasks 50] [--seconds 60] [--long 600] [--churn 5] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from common import BenchDaemon, Report, check

sys.path.insert(0, str(common.REPO / "tests"))

CHURN = "import sys, time; print('churn', flush=True); time.sleep(float(sys.argv[1]))"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config(tasks: int, port: int, control: str, churn: float) -> dict[str, Any]:
    conf = common.fleet_config([common.sleeper_argv(i) for i in range(tasks)])
    http = [{"listen": f"127.0.0.1:{port}"}, {"listen": control, "allow_control": True}]
    conf["settings"] = {"http": http, "stable_after": 0.5}
    if churn:
        conf["tasks"]["churn"] = {
            "control": "wait",
            "output": "log",
            "commands": {"start": [sys.executable, "-c", CHURN, str(churn)]},
        }
    return conf


def window(pid: int, seconds: float) -> dict[str, float]:
    v0, i0 = common.context_switches(pid)
    c0 = common.cpu_seconds(pid)
    time.sleep(seconds)
    v1, i1 = common.context_switches(pid)
    return {
        "seconds": seconds,
        "wakeups": (v1 - v0) + (i1 - i0),
        "cpu_s": common.cpu_seconds(pid) - c0,
        "rss_kib": common.memory_kib(pid)["rss"],
    }


def request(control: str, method: str, path: str) -> int:
    from taskforce.tfclient import UnixConnection

    conn = UnixConnection(control, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class SseViewer:
    """A plain client of ``/status/events`` (and, with ``logs``, of the
    churn task's log stream), reading on a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events = 0
        self.conns: list[http.client.HTTPConnection] = []

    def follow(self, path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=None)
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        self.conns.append(conn)

        def read() -> None:
            try:
                while line := response.readline():
                    if line.startswith(b"event:"):
                        self.events += 1
            except (OSError, ValueError, http.client.HTTPException):
                pass

        threading.Thread(target=read, daemon=True).start()

    def open(self) -> None:
        self.follow("/status/events")

    def open_logs(self, task: str) -> None:
        self.follow(f"/status/logs/follow?task={task}&lines=50")

    def close(self) -> None:
        for conn in self.conns:
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()


class BrowserViewer:
    """The status page in headless Chromium."""

    def __init__(self, port: int) -> None:
        from browser import chromium

        self.profile = Path(tempfile.mkdtemp(prefix="tfpage-"))
        self.driver = chromium(self.profile)
        self.port = port

    def open(self) -> None:
        self.driver.get(f"http://127.0.0.1:{self.port}/")
        deadline = time.monotonic() + 30
        while not self.driver.find_elements("css selector", "tr.slot"):
            if time.monotonic() > deadline:
                raise RuntimeError("the page did not show the tasks")
            time.sleep(0.1)

    def open_logs(self, task: str) -> None:
        self.driver.find_element(
            "css selector", f"button[data-action=logs][data-target={task}]"
        ).click()

    def errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def measure(args: argparse.Namespace) -> Report:
    from browser import missing

    client = args.client
    if client == "chromium" and missing() is not None:
        client = "sse"
    report = Report(
        "page_idle",
        {"tasks": args.tasks, "seconds": args.seconds, "long": args.long, "client": client},
    )
    if client != args.client:
        report.notes.append(f"no browser here ({missing()}): a plain SSE client stood in")
    port = free_port()
    control = str(Path(tempfile.mkdtemp(prefix="tfpage-")) / "s")
    lines = dict.fromkeys((common.argv_bytes(common.sleeper_argv(i)) for i in range(args.tasks)), 1)
    # It stops on its own (--expires) only once the run is surely over.
    expires = 3 * args.seconds + args.long + args.churn + 600
    with BenchDaemon(config(args.tasks, port, control, args.churn), expires=expires) as daemon:
        daemon.start()
        daemon.wait_running(lines, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                request(control, "GET", "/status/version")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the control socket did not answer") from None
                time.sleep(0.1)
        churning: dict[str, float] | None = None
        if args.churn:
            # The churn alone, for scale: what the page adds is the difference.
            time.sleep(args.settle)
            churning = window(daemon.pid, args.seconds)
            assert request(control, "POST", "/manage/control?churn=off") in (200, 202)
        time.sleep(args.settle)
        nobody = window(daemon.pid, args.seconds)
        viewer: SseViewer | BrowserViewer = (
            BrowserViewer(port) if client == "chromium" else SseViewer(port)
        )
        try:
            viewer.open()
            time.sleep(args.settle)
            page = window(daemon.pid, args.seconds)
            report.figures.update(nobody=nobody, page=page)
            if churning is not None:
                report.figures["churn_nobody"] = churning
                report.row(
                    f"churn every {args.churn:g} s, nobody looking",
                    f"wake-ups {churning['wakeups']:4d} "
                    f"({churning['wakeups'] * 60 / churning['seconds']:.1f}/min)  "
                    f"CPU {churning['cpu_s']:.3f} s  over {churning['seconds']:.0f} s",
                )
            report.row(
                "nobody looking",
                f"wake-ups {nobody['wakeups']:4d}  CPU {nobody['cpu_s']:.3f} s  "
                f"over {nobody['seconds']:.0f} s",
            )
            report.row(
                "page open",
                f"wake-ups {page['wakeups']:4d}  CPU {page['cpu_s']:.3f} s  "
                f"over {page['seconds']:.0f} s",
            )
            if args.long:
                if args.churn:
                    assert request(control, "POST", "/manage/start?task=churn") in (200, 202)
                    time.sleep(args.churn + 1)
                    viewer.open_logs("churn")
                time.sleep(args.settle)
                rss = [common.memory_kib(daemon.pid)["rss"]]
                v0, i0 = common.context_switches(daemon.pid)
                c0 = common.cpu_seconds(daemon.pid)
                step = args.long / 10
                for _ in range(10):
                    time.sleep(step)
                    rss.append(common.memory_kib(daemon.pid)["rss"])
                v1, i1 = common.context_switches(daemon.pid)
                woke = (v1 - v0) + (i1 - i0)
                long = {
                    "seconds": args.long,
                    "rss_kib": rss,
                    "wakeups": woke,
                    "cpu_s": common.cpu_seconds(daemon.pid) - c0,
                    "churn_s": args.churn,
                }
                report.figures["long"] = long
                report.row(
                    f"page open {args.long:.0f} s, churn every {args.churn:g} s",
                    f"RSS {rss[0] / 1024:.1f} -> {rss[-1] / 1024:.1f} MiB "
                    f"(max {max(rss) / 1024:.1f}), wake-ups {woke} "
                    f"({woke * 60 / args.long:.1f}/min), CPU {long['cpu_s']:.2f} s",
                )
                report.checks.append(
                    check(
                        "RSS growth with the page open",
                        (rss[-1] - rss[0]) / 1024,
                        1.0,
                        "MiB",
                    )
                )
            if isinstance(viewer, BrowserViewer):
                errors = viewer.errors()
                if errors:
                    report.notes.append(f"browser console errors: {errors}")
        finally:
            viewer.close()
        if not daemon.alive():
            raise RuntimeError(f"taskforce exited during the run; log:\n{daemon.log_tail()}")
    report.checks.append(check("wake-ups, nobody looking", nobody["wakeups"], 0, "wake-ups"))
    # A keep-alive every 30 s: the timer, then at most a write that waits
    # for room and a preemption or two on a busy host (context switches).
    beats = (args.seconds / 30 + 1) * 4
    report.checks.append(
        check("wake-ups, page open, nothing changing", page["wakeups"], beats, "wake-ups")
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50, help="idle tasks (default 50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="each idle window (default 60)")
    parser.add_argument(
        "--long", type=float, default=600.0, help="the page left open (s, default 600; 0: skip)"
    )
    parser.add_argument(
        "--churn", type=float, default=5.0, help="a task exits every S seconds (0: none)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="wait before each window (s)")
    parser.add_argument("--client", choices=("chromium", "sse"), default="chromium")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        lambda a: 2 * a.seconds + a.long + 4 * a.settle + a.churn + 300,
    )


if __name__ == "__main__":
    sys.exit(main())
