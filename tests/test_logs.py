"""``tfctl logs`` and ``/status/logs``: a task's recent captured lines, from a
real daemon with a control socket (``-w SOCKET``).

Each test waits for a condition with a deadline; none asserts after a fixed
sleep.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from daemon_harness import Daemon, task, wait_for
from test_control import call, start_daemon
from test_tfctl import run

from taskforce import output
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
