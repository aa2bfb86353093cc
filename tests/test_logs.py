"""``tfctl logs`` and ``/status/logs``: a task's recent captured lines, from a
real daemon with a control socket (``-w SOCKET``).

Each test waits for a condition with a deadline; none asserts after a fixed
sleep.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
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
from test_control import call, short_dir, start_daemon
from test_tfctl import run

from taskforce import loglines, logsetup, output, redact, tflogs
from taskforce.output import RECENT_BYTES, RECENT_LINES, Recent

#: Prints ``line INSTANCE I`` for I in 0..N-1 (N from argv), then sleeps.
COUNTED = (
    "import os, sys, time\n"
    "n = int(sys.argv[3])\n"
    "for i in range(n):\n"
    "    print('line', os.environ['Task_instance'], i, flush=True)\n"
    "time.sleep(1000)\n"
)


def counted(marker: str, name: str, lines: int, **keys: Any) -> dict[str, Any]:
    spec = task(marker, name, COUNTED, **keys)
    spec["commands"]["start"].append(str(lines))
    return spec


def logs(sock: str, name: str, **params: Any) -> dict[str, Any]:
    query = "&".join(f"{key}={value}" for key, value in {"task": name, **params}.items())
    code, _, text = call(sock, f"/status/logs?{query}")
    assert code == 200, text
    answer: dict[str, Any] = json.loads(text)
    return answer


def test_lines_in_order_tail_since_and_instance(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    # -q drops the lines from taskforce's log; the recent lines are kept all the same.
    sock = start_daemon(daemon, {"talk": counted(m, "talk", 30, count=2, output="log")}, "-q")
    wait_for(lambda: len(logs(sock, "talk")["lines"]) == 60, what="60 lines")

    answer = logs(sock, "talk")
    assert answer["task"] == "talk" and answer["next"] == 61 and answer["dropped"] == 0
    lines = answer["lines"]
    assert [line["seq"] for line in lines] == list(range(1, 61))
    assert all(time.time() - 60 < line["time"] <= time.time() for line in lines)
    for instance in (0, 1):
        texts = [line["text"] for line in lines if line["instance"] == instance]
        assert texts == [f"line {instance} {i}" for i in range(30)], "in order"

    # lines=N: the last N; since=SEQ: from SEQ on; instance=N: that slot's only.
    assert [line["seq"] for line in logs(sock, "talk", lines=5)["lines"]] == list(range(56, 61))
    assert logs(sock, "talk", lines=0)["lines"] == []
    tail = logs(sock, "talk", since=58)
    assert [line["seq"] for line in tail["lines"]] == [58, 59, 60] and tail["dropped"] == 0
    assert logs(sock, "talk", since=61)["lines"] == []
    one = logs(sock, "talk", instance=1)["lines"]
    assert [line["text"] for line in one] == [f"line 1 {i}" for i in range(30)]
    last3 = logs(sock, "talk", instance=1, lines=3)["lines"]
    assert [line["text"] for line in last3] == [f"line 1 {i}" for i in (27, 28, 29)]

    code, out, _ = run(capsys, "-s", sock, "logs", "talk:1", "-n", "4")
    printed = out.splitlines()
    assert code == 0 and len(printed) == 4
    assert [line.split(" ", 1)[1] for line in printed] == [
        f"talk[1] line 1 {i}" for i in (26, 27, 28, 29)
    ]
    stamp = printed[0].split(" ", 1)[0]
    assert time.strptime(stamp.split(".")[0], "%Y-%m-%dT%H:%M:%S"), stamp
    code, out, _ = run(capsys, "-s", sock, "logs", "talk[0]", "-n", "2")
    assert code == 0 and out.splitlines()[-1].endswith(" talk[0] line 0 29")
    code, out, _ = run(capsys, "-s", sock, "logs", "talk")
    assert code == 0 and len(out.splitlines()) == 50, "50 lines by default"


def test_file_output_fills_the_same_lines(daemon: Daemon) -> None:
    m = daemon.marker
    path = daemon.root / "talk.log"
    sock = start_daemon(daemon, {"talk": counted(m, "talk", 20, output={"file": str(path)})})
    wait_for(lambda: len(logs(sock, "talk")["lines"]) == 20, what="20 lines")
    texts = [line["text"] for line in logs(sock, "talk")["lines"]]
    assert texts == path.read_text().splitlines() == [f"line 0 {i}" for i in range(20)]


def test_unknown_task_uncaptured_output_and_bad_parameters(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    defs = {
        "quiet": task(m, "quiet", output="discard"),
        "plain": task(m, "plain", output="inherit"),
        "talk": counted(m, "talk", 1),
    }
    sock = start_daemon(daemon, defs, allow=False)  # status only: still allowed
    code, _, text = call(sock, "/status/logs?task=nope")
    assert code == 404 and text == "no such task: nope\n"
    code, _, text = call(sock, "/status/logs?task=quiet")
    assert code == 409 and "output of quiet is not captured (output: discard)" in text
    assert text.count("\n") == 1
    code, _, text = call(sock, "/status/logs?task=plain")
    assert code == 409 and "(output: inherit)" in text
    assert call(sock, "/status/logs")[0] == 400
    assert call(sock, "/status/logs?task=talk&since=-1")[0] == 400
    assert call(sock, "/status/logs?task=talk&lines=many")[0] == 400
    wait_for(lambda: logs(sock, "talk")["lines"], what="talk's line")

    code, _, err = run(capsys, "-s", sock, "logs", "nope")
    assert code == 1 and "no such task: nope" in err
    code, _, err = run(capsys, "-s", sock, "logs", "quiet", "-f")
    assert code == 1 and "not captured" in err
    code, _, err = run(capsys, "-s", sock, "logs", "talk[x]")
    assert code == 1 and "no such task: talk[x]" in err, "taskforce knows the names"
    code, _, err = run(capsys, "-s", sock, "logs", "talk", "-n", "-1")
    assert code == 2
    code, _, err = run(capsys, "-s", str(daemon.root / "nothing"), "logs", "talk")
    assert code == 3


def read_until(proc: subprocess.Popen[bytes], text: str, got: bytearray, timeout: float) -> None:
    """Read ``proc``'s stdout into ``got`` until ``text`` shows, or fail."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while text.encode() not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} from tfctl within {timeout}s: {bytes(got)!r}")
            if selector.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"tfctl ended before {text!r}: {bytes(got)!r}")
                got += chunk


#: Prints ``before``, then ``after 0..4`` once the file named in argv exists.
TRIGGERED = (
    "import os, sys, time\n"
    "print('before', flush=True)\n"
    "while not os.path.exists(sys.argv[3]):\n"
    "    time.sleep(0.02)\n"
    "for i in range(5):\n"
    "    print('after', i, flush=True)\n"
    "time.sleep(1000)\n"
)


def test_follow_prints_lines_written_after_it_started(daemon: Daemon) -> None:
    m = daemon.marker
    trigger = daemon.root / "go"
    spec = task(m, "tick", TRIGGERED)
    spec["commands"]["start"].append(str(trigger))
    sock = start_daemon(daemon, {"tick": spec})
    wait_for(lambda: logs(sock, "tick")["lines"], what="the first line")
    follower = subprocess.Popen(
        [sys.executable, "-m", "taskforce.tfctl", "-s", sock, "logs", "-f", "tick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As at a terminal: a test run started in the background (CI, `&`)
        # inherits SIGINT ignored, and Ctrl-C would then not reach tfctl.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        got = bytearray()
        read_until(follower, "tick[0] before\n", got, 10)
        trigger.touch()
        read_until(follower, "tick[0] after 4\n", got, 10)
        texts = [line.split(" ", 1)[1] for line in got.decode().splitlines()]
        assert texts == ["tick[0] before"] + [f"tick[0] after {i}" for i in range(5)]
        follower.send_signal(signal.SIGINT)  # Ctrl-C
        assert follower.wait(10) == 0
        assert follower.stderr is not None and follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


#: Writes N numbered lines as fast as it can, then sleeps.
CHATTY = (
    "import sys, time\n"
    "n = int(sys.argv[3])\n"
    "out = sys.stdout\n"
    "for i in range(n):\n"
    "    out.write(f'chatty line {i:08d} ' + 'x' * 40 + '\\n')\n"
    "out.write('done\\n')\n"
    "out.flush()\n"
    "time.sleep(1000)\n"
)


@pytest.mark.parametrize("mode", ["log", "file"])
def test_the_ring_stays_bounded_under_a_chatty_writer(daemon: Daemon, mode: str) -> None:
    m = daemon.marker
    count = 200_000  # about 12 MB
    out: Any = "log" if mode == "log" else {"file": str(daemon.root / "chatty.log")}
    spec = task(m, "chatty", CHATTY, output=out)
    spec["commands"]["start"].append(str(count))
    # -q: the log lines are dropped, not written to taskforce's log file.
    sock = start_daemon(daemon, {"chatty": spec}, "-q")

    def finished() -> dict[str, Any] | None:
        answer = logs(sock, "chatty", lines=1)
        return answer if answer["lines"] and answer["lines"][0]["text"] == "done" else None

    answer = wait_for(finished, timeout=60, what="the chatty writer's last line")
    assert answer is not None
    assert answer["next"] == count + 2
    everything = logs(sock, "chatty")
    lines = everything["lines"]
    assert 0 < len(lines) <= RECENT_LINES
    assert sum(len(line["text"]) + 1 for line in lines) <= RECENT_BYTES
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(seqs[0], count + 2)), "the most recent lines, none missing"
    assert lines[-2]["text"].startswith(f"chatty line {count - 1:08d} ")
    missed = logs(sock, "chatty", since=1)
    assert missed["dropped"] == seqs[0] - 1 and missed["lines"] == lines


def test_recent_memory_is_bounded() -> None:
    recent = Recent()
    biggest = 0
    for round_ in range(2001):  # the last block: "one"
        if round_ % 3 == 0:
            block = b"".join(b"short %d\n" % i for i in range(500))
        elif round_ % 3 == 1:
            block = b"y" * (output.MAX_LINE - 1) + b"\n"
        else:
            block = b"one\n"
        biggest = max(biggest, len(block))
        recent.add(block, round_ % 2)
        assert recent.bytes <= RECENT_BYTES + biggest
        assert recent.bytes == sum(len(b.data) for b in recent.blocks)
        assert recent.lines < RECENT_LINES + 500
    lines, dropped = recent.read()
    assert dropped == 0 and 0 < len(lines) <= RECENT_LINES
    assert sum(len(line.text) + 1 for line in lines) <= RECENT_BYTES
    assert lines[-1].seq == recent.next - 1 and lines[-1].text == "one"
    lines, dropped = recent.read(since=1)
    assert dropped == lines[0].seq - 1 > 0


# ------------------------------------- the log written a chunk at a time


@pytest.fixture
def fresh_log() -> Iterator[None]:
    """taskforce's loggers as a test leaves them: handlers, level, filters."""
    names = ("taskforce", "taskforce.output")
    saved = [
        (
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).filters[:],
        )
        for n in names
    ]
    saved_propagate = logging.getLogger("taskforce").propagate
    yield
    for name, (handlers, level, filters) in zip(names, saved, strict=True):
        logger = logging.getLogger(name)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
    logging.getLogger("taskforce").propagate = saved_propagate


def _stream_log() -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logsetup.LOG_FORMAT))
    root = logging.getLogger("taskforce")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    return stream


def test_a_chunk_reads_as_records_would(fresh_log: None) -> None:
    stream = _stream_log()
    now = 1_800_000_000.25
    assert loglines.log_chunk("t[0]:stderr", b"one\r\ntwo \xff\n\n", now)
    chunked = stream.getvalue()
    stream.seek(0)
    stream.truncate()
    for text in ("one", "two \ufffd", ""):
        record = logging.LogRecord(
            "taskforce.output", logging.INFO, "", 0, "%s %s", ("t[0]:stderr", text), None
        )
        record.created, record.msecs = now, 250.0
        logging.getLogger("taskforce.output").handle(record)
    assert chunked == stream.getvalue()
    assert chunked.splitlines()[0].endswith(",250 INFO t[0]:stderr one")


def test_a_chunk_hides_secrets_and_a_foreign_handler_gets_records(fresh_log: None) -> None:
    stream = _stream_log()
    secrets = redact.LogSecrets()
    secrets.hider.learn(["hunter2-secret"])
    secrets.install()
    try:
        assert loglines.log_chunk("t[0]", b"pw=hunter2-secret\n", 0.0)
        assert "pw=<redacted>" in stream.getvalue() and "hunter2" not in stream.getvalue()
    finally:
        for name in redact.LOGGERS:
            logging.getLogger(name).removeFilter(secrets)
    # Another handler too (a test's, a second destination): not a plain stream.
    logging.getLogger("taskforce").addHandler(logging.NullHandler())
    assert not loglines.log_chunk("t[0]", b"x\n", 0.0)


def test_syslog_gets_a_datagram_per_line(fresh_log: None, tmp_path: Path) -> None:
    address = str(short_dir(tmp_path) / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(5)
    try:
        args = argparse.Namespace(logging_name="tf", verbose=False, quiet=False, log_stderr=False)
        logsetup.setup_logging(args, address)
        assert loglines.log_chunk("t[0]:stderr", b"a\nb b\n", 0.0)
        got = [server.recv(4096) for _ in range(2)]
        assert got == [
            b"<14>tf[%d]: t[0]:stderr a\0" % os.getpid(),
            b"<14>tf[%d]: t[0]:stderr b b\0" % os.getpid(),
        ]
        server.close()  # syslog gone: the lines go to stderr, said once
        os.unlink(address)
        handler = logging.getLogger("taskforce").handlers[0]
        assert isinstance(handler, logsetup.FallbackHandler)
        fallback = io.StringIO()
        handler.fallback = logging.StreamHandler(fallback)
        assert loglines.log_chunk("t[0]", b"c\nd\n", 0.0)
        assert fallback.getvalue().splitlines()[-2:] == ["t[0] c", "t[0] d"]
        assert "cannot log to syslog" in fallback.getvalue()
    finally:
        server.close()


# --------------------------------------------- tfctl logs: times and files


NOW = datetime.datetime(2026, 12, 7, 12, 30, 0).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-5m", NOW - 300),
        ("+1h", NOW + 3600),
        ("1h ago", NOW - 3600),
        ("1h 30min ago", NOW - 5400),
        ("2 days ago", NOW - 2 * 86400),
        ("today", datetime.datetime(2026, 12, 7).timestamp()),
        ("yesterday", datetime.datetime(2026, 12, 6).timestamp()),
        ("2026-12-07 01:00:00", datetime.datetime(2026, 12, 7, 1).timestamp()),
        ("2026-12-07 01:00", datetime.datetime(2026, 12, 7, 1).timestamp()),
        ("2026-12-07", datetime.datetime(2026, 12, 7).timestamp()),
        ("01:15", datetime.datetime(2026, 12, 7, 1, 15).timestamp()),
        ("2026-12-07T01:00:00.5+00:00", 1796605200.5),
        ("@1796605200", 1796605200.0),
    ],
)
def test_times_read_as_journalctl_reads_them(text: str, expected: float) -> None:
    assert tflogs.parse_time(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "soon", "-5 parsecs", "2026-13-01", "1h ago ago"])
def test_a_bad_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        tflogs.parse_time(text, NOW)


@pytest.mark.parametrize("ending", [b"", b"\n"])
def test_files_are_read_backwards_whole(tmp_path: Path, ending: bytes) -> None:
    path = tmp_path / "f"
    lines = [b"%d %s" % (i, b"x" * (i * 37 % 3000)) for i in range(2000)]
    path.write_bytes(b"\n".join(lines) + ending)
    assert list(tflogs.backwards(str(path)))[::-1] == lines + ([b""] if ending else [])
    entry = {"path": str(path), "backups": 0, "timestamps": False, "instance": 0, "stream": None}
    problems: list[str] = []
    read = list(tflogs.file_lines(entry, problems))
    assert [line.text.encode() for line in read[::-1]] == lines and not problems
    missing = {**entry, "path": str(tmp_path / "nothing")}
    assert not list(tflogs.file_lines(missing, problems)) and "no such file" in problems[0]


def test_a_ring_holds_nothing_until_its_first_lines() -> None:
    recent = Recent("quiet")
    assert recent.blocks == () and recent.watchers == ()
    assert recent.read() == ([], 0) and recent.read(since=1) == ([], 0)
    assert recent.last_time == 0.0
    seen: list[int] = []
    recent.watch(lambda block: seen.append(block.lines))
    recent.add(b"one\ntwo\n", 0, now=5.0)
    assert [line.text for line in recent.read()[0]] == ["one", "two"] and seen == [2]
    assert recent.last_time == 5.0
    (watcher,) = recent.watchers
    recent.unwatch(watcher)
    recent.add(b"three\n", 0)
    assert seen == [2] and recent.watchers == ()
