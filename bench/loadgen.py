"""Loopback HTTP load: N clients, a new connection for every request.

Each client (a thread) connects, sends ``GET /`` with ``Connection:
close``, reads the answer to its end, and starts again at once.  A fresh
connection per request is the point: a moment when nothing listens shows
as refused connections, which keep-alive would hide.

Every request is kept as a ``Sample``: when it started and ended, how it
went (``ok``, or a failure kind: ``refused``, ``reset``, ``timeout``,
``bad_status``, ``error``), and the version and pid that answered (the
body of ``examples/httpworker.py`` and of the benchmark's Node worker is
``VERSION PID``).  ``Result`` turns them into counts, latency percentiles
(overall or within a window) and the time until every answer comes from
a new version.

As a library::

    load = Load("127.0.0.1", 18080, clients=4)
    load.start()
    ...                       # change something
    result = load.stop()
    result.summary(window=(t0, t1))

As a program: ``python bench/loadgen.py --port 18080 --seconds 10``.

It measures; it never asserts and never retries a failed request (a retry
would hide the failure it exists to count).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("refused", "reset", "timeout", "bad_status", "error")


@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic() when the connect began
    end: float
    outcome: str  # "ok" or one of KINDS
    version: str = ""
    pid: int = 0
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def request(host: str, port: int, timeout: float) -> Sample:
    """One ``GET /`` on a new connection."""
    start = time.monotonic()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionRefusedError:
        return Sample(start, time.monotonic(), "refused")
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
        return Sample(start, time.monotonic(), "reset", detail=type(exc).__name__)
    except TimeoutError:
        return Sample(start, time.monotonic(), "timeout")
    except OSError as exc:
        return Sample(start, time.monotonic(), "error", detail=str(exc))
    finally:
        sock.close()
    end = time.monotonic()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not data:
        # Accepted, then closed without a word: the worker went away.
        return Sample(start, end, "reset", detail="empty answer")
    if len(status) < 2 or status[1] != b"200":
        return Sample(start, end, "bad_status", detail=head[:80].decode(errors="replace"))
    words = body.split()
    version = words[0].decode(errors="replace") if words else ""
    pid = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
    return Sample(start, end, "ok", version, pid)


class Load:
    """``clients`` threads sending requests until ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        clients: int = 4,
        *,
        timeout: float = 5.0,
        pause: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.clients = clients
        self.timeout = timeout
        self.pause = pause
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    def _run(self) -> None:
        out = self.samples  # list.append is atomic: no lock needed
        while not self._stop.is_set():
            out.append(request(self.host, self.port, self.timeout))
            if self.pause:
                self._stop.wait(self.pause)

    def start(self) -> Load:
        self.started = time.monotonic()
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, name=f"loadgen-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def mark(self) -> float:
        """Now, on the samples' clock: note when a change is made."""
        return time.monotonic()

    def wait_version(self, version: str, pids: int, timeout: float) -> bool:
        """Wait until the last answers came from ``pids`` distinct processes,
        all of ``version`` (and nothing failed among them); False at the
        deadline.  Looks only at the samples, so it needs the load running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.converged(version, pids):
                return True
            time.sleep(0.05)
        return False

    def converged(self, version: str, pids: int) -> bool:
        recent = self.samples[-max(30, pids * 10) :]
        return (
            len(recent) >= pids
            and all(s.outcome == "ok" and s.version == version for s in recent)
            and len({s.pid for s in recent}) >= pids
        )

    def stop(self) -> Result:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return Result(list(self.samples), self.started, time.monotonic())


@dataclass
class Result:
    samples: list[Sample]
    started: float
    stopped: float
    extra: dict[str, Any] = field(default_factory=dict)

    def within(self, window: tuple[float, float] | None) -> list[Sample]:
        """Requests that were under way at any moment of ``window``."""
        if window is None:
            return self.samples
        low, high = window
        return [s for s in self.samples if s.end >= low and s.start <= high]

    def failures(self, window: tuple[float, float] | None = None) -> Counter[str]:
        return Counter(s.outcome for s in self.within(window) if s.outcome != "ok")

    def latency_ms(self, window: tuple[float, float] | None = None) -> dict[str, float]:
        values = [s.latency * 1000 for s in self.within(window) if s.outcome == "ok"]
        if not values:
            return {}
        return {
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values),
        }

    def versions(self) -> list[tuple[float, str, int]]:
        """(end, version, pid) of every answer, in order of their end."""
        return sorted((s.end, s.version, s.pid) for s in self.samples if s.outcome == "ok")

    def pids(self, version: str, after: float = 0.0) -> set[int]:
        return {
            s.pid
            for s in self.samples
            if s.outcome == "ok" and s.version == version and s.end >= after
        }

    def converged_after(
        self, changed: float, version: str, until: float | None = None
    ) -> float | None:
        """Seconds from ``changed`` until the last answer of another version
        was received, among requests started from ``changed`` until
        ``until`` (the next change, say): from then on every answer came from
        ``version``.  None when no answer of ``version`` came."""
        answers = [
            s
            for s in self.samples
            if s.outcome == "ok" and s.start >= changed and (until is None or s.start < until)
        ]
        if not any(s.version == version for s in answers):
            return None
        others = [s.end for s in answers if s.version != version]
        first_new = min(s.end for s in answers if s.version == version)
        return max([first_new, *others]) - changed

    def summary(
        self,
        window: tuple[float, float] | None = None,
        *,
        changed: float | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        chosen = self.within(window)
        failures = self.failures(window)
        out: dict[str, Any] = {
            "requests": len(chosen),
            "ok": sum(1 for s in chosen if s.outcome == "ok"),
            "failed": sum(failures.values()),
            "failures": {kind: failures[kind] for kind in KINDS if failures[kind]},
            "seconds": (window[1] - window[0]) if window else self.stopped - self.started,
            **self.latency_ms(window),
        }
        if changed is not None and version is not None:
            out["converged_s"] = self.converged_after(changed, version)
            out["new_pids"] = len(self.pids(version, changed))
        return out


def merge(results: Iterable[Result]) -> Result:
    chosen = list(results)
    samples = sorted((s for r in chosen for s in r.samples), key=lambda s: s.start)
    return Result(samples, min(r.started for r in chosen), max(r.stopped for r in chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback HTTP load, a new connection a request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    load = Load(options.host, options.port, options.clients, timeout=options.timeout).start()
    try:
        time.sleep(options.seconds)
    except KeyboardInterrupt:
        pass
    result = load.stop()
    summary = result.summary()
    summary["versions"] = dict(Counter(s.version for s in result.samples if s.outcome == "ok"))
    if options.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
