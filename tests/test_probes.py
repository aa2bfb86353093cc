"""Readiness probes on a real selector loop against real sockets (no daemon):
each ``Probe`` gets exactly one ``ProbeFinished``, within its timeout."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taskforce import probes
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.simulator import FakeProcess, Simulation


class Loop:
    """A selector and the probes on it, turned as the daemon turns them."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.woken = 0
        self.probes = probes.Probes(self.selector, self._wake)
        self.results: list[ev.ProbeFinished] = []

    def _wake(self) -> None:
        self.woken += 1

    def start(self, kind: str, target: str, timeout: float = 5.0, run: int = 1) -> None:
        effect = fx.Probe("web", 0, run, kind, target, timeout)
        now = self.probes.start(effect)
        if now is not None:
            self.results.append(now)

    def run(self, count: int, limit: float = 10.0) -> list[ev.ProbeFinished]:
        """Turn until ``count`` results are in (failing after ``limit`` s)."""
        deadline = time.monotonic() + limit
        while len(self.results) < count:
            assert time.monotonic() < deadline, f"only {self.results} after {limit}s"
            due = self.probes.next_deadline()
            wait = 0.05 if due is None else min(0.05, max(0.0, due - time.monotonic()))
            for key, _ in self.selector.select(wait):
                key.data()
            self.results.extend(self.probes.take())
        return self.results

    def close(self) -> None:
        self.probes.close()
        self.selector.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    turning = Loop()
    try:
        yield turning
    finally:
        turning.close()


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Answers(BaseHTTPRequestHandler):
    """``GET /CODE`` answers with status CODE; the Host header is echoed."""

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        code = int(self.path.strip("/").split("?")[0] or 200)
        self.send_response(code)
        self.send_header("X-Host", self.headers.get("Host", ""))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tcp_passes_on_a_listening_port(loop: Loop, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    loop.start("tcp", f"127.0.0.1:{port}", run=1)
    loop.start("tcp", str(port), run=2)  # a bare port: 127.0.0.1
    loop.start("tcp", f"localhost:{port}", run=3)
    results = sorted(loop.run(3), key=lambda r: r.run)
    assert [(r.task, r.instance, r.run, r.ok) for r in results] == [
        ("web", 0, 1, True),
        ("web", 0, 2, True),
        ("web", 0, 3, True),
    ]


def test_tcp_over_ipv6(loop: Loop) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no ::1 here")
    with server:
        loop.start("tcp", f"[::1]:{server.getsockname()[1]}")
        assert loop.run(1)[0].ok


def test_tcp_refused_on_a_closed_port(loop: Loop) -> None:
    loop.start("tcp", f"127.0.0.1:{closed_port()}")
    (result,) = loop.run(1)
    assert (result.ok, result.detail) == (False, "connection refused")


@pytest.mark.parametrize(("code", "ok"), [(200, True), (204, True), (503, False), (404, False)])
def test_http_passes_on_2xx(loop: Loop, http_server: int, code: int, ok: bool) -> None:
    loop.start("http", f"http://127.0.0.1:{http_server}/{code}?probe=1")
    (result,) = loop.run(1)
    assert (result.ok, result.detail) == (ok, f"HTTP {code}")


def test_http_times_out_when_nothing_answers(loop: Loop, listening: socket.socket) -> None:
    # The connection is accepted (by the backlog) but no answer ever comes.
    port = listening.getsockname()[1]
    started = time.monotonic()
    loop.start("http", f"http://127.0.0.1:{port}/", timeout=0.3)
    (result,) = loop.run(1)
    assert (result.ok, result.detail) == (False, "timed out after 0.3s")
    assert time.monotonic() - started >= 0.3
    assert not loop.probes.runs and len(loop.selector.get_map()) == 0


def serve_once(loop: Loop, listening: socket.socket, answer: bytes) -> bytes:
    """Take one probe's connection, turning the loop until its request is
    in; answer it with ``answer`` and close; the request."""
    listening.settimeout(5)
    conn, _ = listening.accept()
    conn.settimeout(0.02)
    request = b""
    deadline = time.monotonic() + 5
    with conn:
        while b"\r\n\r\n" not in request:
            assert time.monotonic() < deadline, f"only {request!r}"
            for key, _ in loop.selector.select(0.02):
                key.data()
            try:
                request += conn.recv(4096)
            except TimeoutError:
                pass
        conn.sendall(answer)
    return request


def test_http_refused_and_closed_without_answer(loop: Loop, listening: socket.socket) -> None:
    loop.start("http", f"http://127.0.0.1:{closed_port()}/", run=1)
    port = listening.getsockname()[1]
    loop.start("http", f"http://127.0.0.1:{port}/", run=2)
    serve_once(loop, listening, b"")  # reads the request, answers nothing
    results = sorted(loop.run(2), key=lambda r: r.run)
    assert [(r.ok, r.detail) for r in results] == [
        (False, "connection refused"),
        (False, "connection closed without an answer"),
    ]


def test_the_request_sent(loop: Loop, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    loop.start("http", f"http://user:pw@127.0.0.1:{port}/health?deep=1")
    request = serve_once(loop, listening, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    (result,) = loop.run(1)
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /health?deep=1 HTTP/1.0"
    assert f"Host: 127.0.0.1:{port}" in lines
    assert b"pw" not in request
    assert result.ok


def test_bad_targets_finish_at_once(loop: Loop) -> None:
    for run, (kind, target) in enumerate(
        [("tcp", "nohost"), ("tcp", "x:99999"), ("http", "https://127.0.0.1/"), ("udp", "1")]
    ):
        loop.start(kind, target, run=run)
    assert len(loop.results) == 4 and not any(r.ok for r in loop.results)
    assert "https" in loop.results[2].detail and "udp" in loop.results[3].detail


def test_a_name_is_looked_up_off_the_loop(loop: Loop) -> None:
    loop.start("tcp", "no-such-host.invalid:80", timeout=20)
    (result,) = loop.run(1, limit=25)
    assert not result.ok and result.detail.startswith("cannot resolve no-such-host.invalid")
    assert loop.woken >= 1


def test_pending_probes_are_dropped_on_close(loop: Loop, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    loop.start("http", f"http://127.0.0.1:{port}/", timeout=30)
    loop.probes.close()
    assert loop.probes.take() == [] and loop.probes.next_deadline() is None
    assert len(loop.selector.get_map()) == 0


def test_status_lines() -> None:
    assert probes.status_detail(b"HTTP/1.1 200 OK\r\n") == (True, "HTTP 200")
    assert probes.status_detail(b"HTTP/1.0 503 Service Unavailable\r\n") == (False, "HTTP 503")
    assert probes.status_detail(b"SSH-2.0-OpenSSH\r\n")[0] is False
    assert probes.parse_tcp("[::1]:8080") == ("::1", 8080)
    assert probes.parse_tcp("8080") == ("127.0.0.1", 8080)
    assert probes.parse_tcp("db.example:5432") == ("db.example", 5432)


# ----------------------------------------------- the simulator's answers
# (Until the core asks for probes and notify itself, its readiness helpers
# are driven directly; the property tests drive them through the core.)


def simulated(delay: float | None) -> tuple[Simulation, FakeProcess]:
    sim = Simulation()
    if delay is None:
        sim.never_ready.add("web")
    else:
        sim.ready_delays["web"] = delay
    sim.boot({"tasks": {"web": {"commands": {"start": ["/bin/web"]}}}})
    pid = sim.running()[("web", 0)]
    return sim, sim.processes[pid]


def fed(sim: Simulation, kind: type[ev.Event]) -> list[ev.Event]:
    return [event for event, _ in sim.log if isinstance(event, kind)]


def test_the_simulator_answers_a_probe_once_the_process_is_ready() -> None:
    sim, _ = simulated(2.0)
    sim._probe(fx.Probe("web", 0, 1, "tcp", "8080", 5.0))
    sim.advance(1.0)
    assert not fed(sim, ev.ProbeFinished)
    sim.advance(1.5)
    (answer,) = fed(sim, ev.ProbeFinished)
    assert (answer.at, answer.ok, answer.run) == (2.0, True, 1)  # type: ignore[attr-defined]


def test_the_simulator_times_a_probe_out_and_refuses_without_a_process() -> None:
    sim, proc = simulated(None)
    sim._probe(fx.Probe("web", 0, 1, "http", "http://127.0.0.1/", 3.0))
    sim.advance(10.0)
    sim.kill(proc.pid)
    sim._probe(fx.Probe("web", 1, 2, "tcp", "8080", 3.0))  # no such slot running
    sim.advance(0.0)
    answers = [(e.at, e.ok, e.detail) for e in fed(sim, ev.ProbeFinished)]  # type: ignore[attr-defined]
    assert answers == [(3.0, False, "timed out after 3s"), (10.0, False, "connection refused")]


def test_the_simulator_sends_ready_for_a_notify_process() -> None:
    sim, proc = simulated(1.5)
    sim._notify_ready(proc)
    sim.settle()
    (notified,) = fed(sim, ev.Notified)
    assert (notified.at, notified.pid, notified.message) == (1.5, proc.pid, "READY=1")  # type: ignore[attr-defined]
    # One that dies first never sends.
    sim2, proc2 = simulated(1.5)
    sim2._notify_ready(proc2)
    sim2.kill(proc2.pid)
    sim2.advance(5.0)
    assert not fed(sim2, ev.Notified)
