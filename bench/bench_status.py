"""The control path under load: ``/status/tasks`` latency with 1,000 slots,
and restart latency while 200 clients poll it.

A real taskforce runs a tiny sleeper with ``count`` slots (or ``--tasks``
separate sleepers) and a control socket.  Then:

1. ``GET /status/tasks`` is timed ``--requests`` times on one keep-alive
   connection: computed afresh (an empty control request feeds the core
   before each), then as cached (the daemon keeps an answer until the core
   is next fed), and cached on a new connection each time.  Target: median
   under 20 ms with 1,000 slots, computed afresh.
2. Restart latency: a stable slot's process is sent SIGKILL and the time
   until its replacement has exec'd is measured (the daemon's children are
   read from ``/proc``), first with no clients, then while ``--clients``
   concurrent keep-alive clients (a separate asyncio process) poll
   ``/status/tasks`` as fast as they can.  Target: the load does not delay
   restarts (same order of milliseconds).

Everything is bounded in time and cleaned up (the daemon is stopped, and any
process left with the run's marker in its environment is killed).  Linux
only.  These are measurements, not tests: a missed target is reported.

    python bench/bench_status.py [--count 1000] [--tasks 1] [--clients 200] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import common

from taskforce.tfctl import UnixConnection

LOADER = r"""
import asyncio, json, re, sys, time
path, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
REQUEST = b"GET /status/tasks HTTP/1.1\r\nHost: bench\r\n\r\n"
LENGTH = re.compile(rb"content-length: *(\d+)", re.I)
latencies, errors = [], []

async def client(ready):
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 26)
    except OSError as exc:
        errors.append(repr(exc)); ready.release(); return
    ready.release()
    await start.wait()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            began = time.perf_counter()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(LENGTH.search(head).group(1)))
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head[:40].decode()); break
            latencies.append(time.perf_counter() - began)
    except Exception as exc:
        errors.append(repr(exc))
    writer.close()

async def main():
    global start
    start = asyncio.Event()
    ready = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(client(ready)) for _ in range(clients)]
    for _ in range(clients):
        await ready.acquire()
    print("ready", flush=True)
    start.set()
    await asyncio.gather(*tasks)

asyncio.run(main())
latencies.sort()
n = len(latencies)
print(json.dumps({
    "requests": n,
    "errors": len(errors),
    "first_error": errors[0] if errors else None,
    "median_ms": latencies[n // 2] * 1000 if n else None,
    "p90_ms": latencies[int(n * 0.9)] * 1000 if n else None,
    "max_ms": latencies[-1] * 1000 if n else None,
}), flush=True)
"""


# ------------------------------------------------------------------ helpers


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def sleepers(watcher: common.ChildWatcher) -> set[int]:
    """The daemon's children that run ``sleep``."""
    return {p for p in watcher.children() if (common.cmdline(p) or b"").startswith(b"sleep\0")}


@contextlib.contextmanager
def daemon(count: int, tasks: int, folder: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    run = uuid.uuid4().hex
    sock = str(folder / "s.tf")
    defs = {
        f"t{i}": {"commands": {"start": ["sleep", str(100000 + i)]}, "count": count}
        for i in range(tasks)
    }
    config = folder / "tf.conf"
    config.write_text(json.dumps({"tasks": defs}))
    # Run a snapshot of the package: taskforce resets itself when its own
    # code changes, and an edit in the work tree must not reset a measurement.
    source = common.snapshot_package(folder)
    env = {**os.environ, common.MARKER_VAR: run, "PYTHONPATH": str(source)}
    argv = [sys.executable, "-m", "taskforce", "-e", "-f", str(config), "-r", "-"]
    argv += ["-w", sock, "-A", "--expires", "600"]
    log = open(folder / "taskforce.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_until(lambda: os.path.exists(sock), 30, "the control socket")
        yield proc, sock
    except BaseException:
        # Say what the daemon said (less the line per process started or gone).
        log.flush()
        lines = (folder / "taskforce.log").read_text(errors="replace").splitlines()
        tail = [line for line in lines if "started as pid" not in line and " after " not in line]
        tail = tail[-20:]
        print("taskforce's log ends:", *tail, sep="\n  ", file=sys.stderr)
        raise
    finally:
        common.terminate(proc, 60)
        for pid in common.pids_with_marker(run):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


def status_latency(sock: str, requests: int) -> dict[str, Any]:
    """Timed GETs: computed afresh (the core was just fed), then as cached.

    The daemon keeps an answer until the core is next fed an event; an empty
    control request (untimed) between two GETs forces a fresh answer.
    """
    kept = UnixConnection(sock, timeout=30)
    poke = UnixConnection(sock, timeout=30)
    cold_times, kept_times, fresh_times = [], [], []
    size = 0
    for _ in range(requests):
        poke.request("POST", "/manage/control")
        poke.getresponse().read()
        began = time.perf_counter()
        kept.request("GET", "/status/tasks")
        body = kept.getresponse().read()
        cold_times.append(time.perf_counter() - began)
        size = len(body)
    poke.close()
    for _ in range(requests):
        began = time.perf_counter()
        kept.request("GET", "/status/tasks")
        kept.getresponse().read()
        kept_times.append(time.perf_counter() - began)
    kept.close()
    for _ in range(requests):
        began = time.perf_counter()
        conn = UnixConnection(sock, timeout=30)
        conn.request("GET", "/status/tasks")
        conn.getresponse().read()
        conn.close()
        fresh_times.append(time.perf_counter() - began)
    return {
        "bytes": size,
        "computed": common.summary_ms(cold_times),
        "cached": common.summary_ms(kept_times),
        "cached_new_connection": common.summary_ms(fresh_times),
    }


def restart_once(daemon_pid: int, victim: int, timeout: float = 10.0) -> float:
    """SIGKILL ``victim``; seconds until a new child of the daemon has exec'd."""
    watcher = common.ChildWatcher(daemon_pid)
    before = set(watcher.children())
    began = time.perf_counter()
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        return bool(sleepers(watcher) - before)

    deadline = time.monotonic() + timeout
    while not replaced():
        if time.monotonic() > deadline:
            raise TimeoutError("no replacement within 10s")
        time.sleep(0.0005)
    return time.perf_counter() - began


def restarts(daemon_pid: int, rounds: int, spacing: float) -> list[float]:
    results = []
    used: set[int] = set()
    for _ in range(rounds):
        candidates = sorted(sleepers(common.ChildWatcher(daemon_pid)) - used)
        victim = candidates[len(candidates) // 2]
        used.add(victim)
        results.append(restart_once(daemon_pid, victim))
        time.sleep(spacing)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="slots per task (default 1000)")
    parser.add_argument("--tasks", type=int, default=1, help="sleeper tasks (default 1)")
    parser.add_argument("--requests", type=int, default=200, help="timed status requests")
    parser.add_argument("--clients", type=int, default=200, help="concurrent pollers")
    parser.add_argument("--rounds", type=int, default=20, help="kills per phase")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench_status: Linux only (reads /proc)", file=sys.stderr)
        return 2
    slots = args.count * args.tasks
    result: dict[str, Any] = {"slots": slots, "tasks": args.tasks, "clients": args.clients}
    with (
        tempfile.TemporaryDirectory(prefix="tfb") as folder,
        daemon(args.count, args.tasks, Path(folder)) as (proc, sock),
    ):
        wait_until(
            lambda: len(sleepers(common.ChildWatcher(proc.pid))) == slots,
            120,
            f"{slots} sleepers",
        )
        time.sleep(1.2)  # every slot past stable_after (1 s): restarts are immediate
        result["status"] = status_latency(sock, args.requests)
        result["restart_idle"] = common.summary_ms(restarts(proc.pid, args.rounds, 0.05))
        seconds = max(5.0, args.rounds * 0.3 + 3)
        loader = subprocess.Popen(
            [sys.executable, "-c", LOADER, sock, str(args.clients), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert loader.stdout is not None
            if loader.stdout.readline().strip() != "ready":
                raise RuntimeError("the load generator did not start")
            time.sleep(0.5)  # let the flood build up
            result["restart_loaded"] = common.summary_ms(restarts(proc.pid, args.rounds, 0.2))
            output, _ = loader.communicate(timeout=seconds + 60)
            result["load"] = json.loads(output.strip().splitlines()[-1])
        finally:
            if loader.poll() is None:
                loader.kill()
                loader.wait()
        result["daemon_alive"] = proc.poll() is None
    median = result["status"]["computed"]["median_ms"]
    result["targets"] = {
        "status_median_under_20ms": median < 20.0,
        "restarts_not_delayed_by_load": result["restart_loaded"]["median_ms"]
        < max(50.0, 3 * result["restart_idle"]["median_ms"]),
        "load_errors": result["load"]["errors"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    status = result["status"]
    print(f"taskforce control path: {slots} slots ({args.tasks} task(s) x {args.count})")
    print(f"GET /status/tasks ({status['bytes']} bytes), {args.requests} requests each:")
    for kind in ("computed", "cached", "cached_new_connection"):
        row = status[kind]
        print(
            f"  {kind:<21} median {row['median_ms']:.2f} ms  p90 {row['p90_ms']:.2f} ms"
            f"  max {row['max_ms']:.2f} ms"
        )
    for kind, label in (("restart_idle", "no clients"), ("restart_loaded", "while polled")):
        row = result[kind]
        print(
            f"restart after SIGKILL, {label:<12}: median {row['median_ms']:.2f} ms"
            f"  p90 {row['p90_ms']:.2f} ms  max {row['max_ms']:.2f} ms  ({row['n']} kills)"
        )
    load = result["load"]
    rate = load["requests"] / max(5.0, args.rounds * 0.3 + 3)
    print(
        f"{args.clients} concurrent clients: {load['requests']} responses "
        f"(~{rate:.0f}/s), median {load['median_ms'] or 0:.1f} ms, "
        f"p90 {load['p90_ms'] or 0:.1f} ms, errors {load['errors']}"
    )
    print("targets:", ", ".join(f"{k}={v}" for k, v in result["targets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
