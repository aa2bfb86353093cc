"""The live streams of the control path (``/status/events``,
``/status/logs/follow``), the page's files and the rules that keep a browser
from forging control requests -- over plain HTTP, no browser (the page
itself is driven in a browser by ``test_page.py``).

Every wait has a deadline; nothing asserts after a fixed sleep.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, task, wait_for
from test_control import (
    call,
    form,
    serve,
    short_dir,
    sleeper,
    start_daemon,
    tasks_json,
    world,
)

from taskforce.control import stream
from taskforce.control.listen import Options
from taskforce.control.server import ControlServer
from taskforce.tfclient import Client, Refused

#: Says hello (with its pid) on stdout and on stderr, then sleeps.
HELLO = (
    "import os, sys, time\n"
    "print('hello from', os.getpid(), flush=True)\n"
    "print('warning from', os.getpid(), file=sys.stderr, flush=True)\n"
    "time.sleep(1000)\n"
)


def events(address: str, path: str, **params: Any) -> Iterator[tuple[str, Any]]:
    """The stream's events, their data read as JSON; ends if nothing (not
    even a keep-alive) comes for 10 s."""
    client = Client(address)
    for kind, data in client.stream(path, list(params.items()), idle=10.0):
        yield kind, json.loads(data)


def next_where(stream: Iterator[tuple[str, Any]], wanted: Any, what: str) -> Any:
    """The first event's data for which ``wanted(data)`` holds."""
    deadline = time.monotonic() + 10
    for _, data in stream:
        if wanted(data):
            return data
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
    raise AssertionError(f"the stream ended before {what}")


def restarted(address: str, name: str) -> int:
    """Restart ``name``'s one slot; the new process's pid."""
    old = tasks_json(address)[name]["processes"][0].get("pid")
    assert call(address, f"/manage/restart?task={name}", "POST")[0] == 202

    def new_pid() -> int | None:
        pid = tasks_json(address)[name]["processes"][0].get("pid")
        return pid if pid not in (None, old) else None

    found: int = wait_for(new_pid, what=f"{name} to run again")
    return found


def metric(address: str, name: str) -> float:
    code, _, text = call(address, "/metrics")
    assert code == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


# =====================================================================
# On a simulated world: what the loop is asked to do.


def test_status_stream_sends_changes_and_leaves_no_timer(tmp_path: Path) -> None:
    """A client gets the status at once and again when a request changed
    it; while it is open the server's only deadline is the rare keep-alive;
    once it has gone, the server has no deadline at all (an idle daemon
    sleeps in one wait)."""
    sim = world({"tasks": {"a": sleeper(count=2)}})
    sock = str(short_dir(tmp_path) / "s.taskforce")
    selector = selectors.DefaultSelector()
    server = ControlServer(sim, selector, Options(listen=sock, allow_control=True))
    try:
        server.tick(time.monotonic())
        assert server.next_deadline() is None, "nobody connected: no timer"
        opened: list[tuple[float | None, float]] = []

        def client() -> tuple[Any, Any]:
            live = events(sock, "/status/events")
            first = next(live)
            opened.append((server.next_deadline(), time.monotonic()))
            assert form(sock, "/manage/count", {"a": "1"}) == (202, "a\tok\n")
            second = next(live)
            live.close()
            return first, second

        first, second = serve(server, selector, client)
        assert first[0] == "tasks" and first[1]["a"]["count"] == 2
        assert second[0] == "tasks" and second[1]["a"]["count"] == 1
        due, asked = opened[0]
        assert due is not None and due - asked > stream.BEAT - 5, (
            "with a stream open, the only deadline is the keep-alive"
        )
        wait = time.monotonic() + 10
        while len(server.streams):
            assert time.monotonic() < wait, "the closed stream was not noticed"
            server.tick(time.monotonic())
            for key, _ in selector.select(0.01):
                key.data()
        server.tick(time.monotonic())
        assert server.next_deadline() is None, "the stream has gone: no timer left"
    finally:
        server.close()
        selector.close()


# =====================================================================
# Against a real daemon.


def test_status_event_follows_a_kill_and_the_replacement(daemon: Daemon) -> None:
    sock = start_daemon(daemon, {"w": task(daemon.marker, "w")})
    live = events(sock, "/status/events")
    first = next_where(live, lambda d: d["w"]["processes"][0].get("pid"), "w to run")
    old = first["w"]["processes"][0]["pid"]
    os.kill(old, signal.SIGKILL)
    after = next_where(
        live,
        lambda d: d["w"]["processes"][0].get("pid") not in (None, old),
        "the replacement's pid",
    )
    slot = after["w"]["processes"][0]
    assert slot["restarts"] == 1 and "SIGKILL" in slot["reason"], slot
    live.close()


def test_log_stream_sends_kept_then_new_lines(daemon: Daemon) -> None:
    sock = start_daemon(daemon, {"talk": task(daemon.marker, "talk", HELLO, output="log")})
    wait_for(lambda: "hello" in call(sock, "/status/logs?task=talk")[2], what="a first line")
    live = events(sock, "/status/logs/follow", task="talk", lines=5)
    kind, first = next(live)
    assert kind == "lines" and first["task"] == "talk"
    texts = [line["text"] for line in first["lines"]]
    assert any(text.startswith("hello from") for text in texts), texts
    assert {"seq", "instance", "time", "text"} <= set(first["lines"][0])
    pid = restarted(sock, "talk")
    later = next_where(
        live,
        lambda d: any(line["text"] == f"hello from {pid}" for line in d["lines"]),
        "the restarted process's line",
    )
    assert later["lines"][0]["seq"] > first["lines"][-1]["seq"]
    live.close()


def test_tfctl_logs_follow_prints_new_lines_as_they_come(daemon: Daemon) -> None:
    sock = start_daemon(daemon, {"talk": task(daemon.marker, "talk", HELLO, output="log")})
    wait_for(lambda: "hello" in call(sock, "/status/logs?task=talk")[2], what="a first line")
    follower = subprocess.Popen(
        [sys.executable, "-m", "taskforce.tfctl", "-s", sock, "logs", "-f", "talk", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        os.set_blocking(follower.stdout.fileno(), False)
        seen = bytearray()

        def printed(text: str) -> bool:
            try:
                seen.extend(follower.stdout.read() or b"")  # type: ignore[union-attr]
            except BlockingIOError:
                pass
            return text in seen.decode()

        wait_for(lambda: printed("talk[0]"), what="the last kept line")
        pid = restarted(sock, "talk")
        wait_for(lambda: printed(f"from {pid}"), what="the new process's line")
        assert seen.decode().count("talk[0]") >= 2
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, follower.stderr.read() if follower.stderr else ""


#: Waits for a file, then writes about 40 MB of lines, then sleeps.
SPEW = (
    "import os, sys, time\n"
    "flag = sys.argv[3]\n"
    "while not os.path.exists(flag):\n"
    "    time.sleep(0.02)\n"
    "line = 'x' * 199 + '\\n'\n"
    "for _ in range(2000):\n"
    "    sys.stdout.write(line * 100)\n"
    "sys.stdout.flush()\n"
    "time.sleep(1000)\n"
)


def test_a_stalled_log_reader_is_dropped_and_others_go_on(daemon: Daemon) -> None:
    flag = daemon.root / "go"
    spew = task(daemon.marker, "spew", SPEW, args=(str(flag),), output="log")
    sock = start_daemon(daemon, {"spew": spew}, "-q")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect(sock)
        stalled.sendall(b"GET /status/logs/follow?task=spew&lines=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: metric(sock, "taskforce_http_streams") == 1, what="the stream")
        flag.write_text("go")
        wait_for(
            lambda: metric(sock, "taskforce_http_streams_dropped_total") == 1,
            timeout=30,
            what="the stalled reader to be dropped",
        )
        assert metric(sock, "taskforce_http_streams") == 0
        # The daemon is still answering, and what it had queued is gone.
        assert tasks_json(sock)["spew"]["processes"][0]["state"] in ("running", "ready")
        stalled.settimeout(10)
        try:
            while stalled.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
    finally:
        stalled.close()


def test_streams_need_status_permission(daemon: Daemon) -> None:
    sock = str(short_dir(daemon.root) / "s.taskforce")
    allow = {"status": ["nobody"], "control": ["nobody"]}
    daemon.write_config(
        {
            "settings": {"http": [{"listen": sock, "allow_control": True, "allow": allow}]},
            "tasks": {"w": task(daemon.marker, "w", output="log")},
        }
    )
    daemon.start()

    def refused() -> bool:
        try:
            return call(sock, "/status/version")[0] == 403
        except OSError:
            return False

    wait_for(refused, what="the control socket")
    for path in ("/status/events", "/status/logs/follow?task=w", "/status/access"):
        code, _, text = call(sock, path)
        assert code == 403 and "not allowed" in text, (path, code, text)
    with pytest.raises(Refused) as refused:
        next(Client(sock).stream("/status/events"))
    assert refused.value.code == 403


def test_browser_requests_must_come_from_the_page(daemon: Daemon) -> None:
    sock = start_daemon(daemon, {"w": task(daemon.marker, "w")})
    code, headers, page = call(sock, "/")
    assert code == 200 and "page/app.js" in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    code, headers, _ = call(sock, "/page/app.js")
    assert code == 200 and headers["content-type"].startswith("text/javascript")
    code, _, text = call(sock, "/status/access")
    assert code == 200 and json.loads(text)["control"] is True  # root or our own user
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Host": "localhost:8080"}
    for extra in (
        {},  # a form or an <img> from any page: no page header
        {"Sec-Fetch-Site": "cross-site", "X-Taskforce-Request": "page"},
        {"Origin": "http://evil.example", "X-Taskforce-Request": "page"},
    ):
        code, _, text = call(sock, "/manage/restart?task=w", "POST", headers={**browser, **extra})
        assert code == 403 and text.startswith("refused:"), (extra, code, text)
    code, _, text = call(
        sock, "/status/events", headers={**browser, "Sec-Fetch-Site": "cross-site"}
    )
    assert code == 403, text
    page_request = {
        **browser,
        "Origin": "http://localhost:8080",
        "Sec-Fetch-Site": "same-origin",
        "X-Taskforce-Request": "page",
    }
    code, _, text = call(sock, "/manage/restart?task=w", "POST", headers=page_request)
    assert code == 202, text
    # Clients that are not browsers are not affected.
    assert call(sock, "/manage/restart?task=w", "POST")[0] == 202
    assert metric(sock, 'taskforce_http_refused_total{reason="cross_site"}') == 4
