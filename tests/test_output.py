"""Task output capture end to end: real processes writing into real pipes.

Each test waits for a condition with a deadline; none asserts after a fixed
sleep.  The fast writers run for a bounded time or amount.
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import Daemon, fd_target, resident_kib, shell_task, task, wait_for

from taskforce import output
from taskforce.core import codec
from taskforce.core import effects as fx
from taskforce.output import LONG_LINE_MARK, MAX_LINE


def tasks(settings: dict | None = None, **defs: dict) -> dict:
    return {"settings": settings or {}, "tasks": defs}


#: Settings under which a run of 0.1 s is stable, so a kill restarts at once.
QUICK = {"stable_after": 0.1, "backoff_initial": 0.05, "backoff_max": 0.1}


def restart_latency(daemon: Daemon, name: str, timeout: float = 5.0) -> float:
    """SIGKILL the process of ``name`` once it has run stably (see QUICK);
    seconds until its replacement runs."""
    (old,) = daemon.wait_pids(name, 1)
    time.sleep(0.15)  # past stable_after: a restart at once, not a backoff
    os.kill(old, signal.SIGKILL)
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if daemon.pids(name) - {old}:
            return time.monotonic() - start
        time.sleep(0.001)
    raise AssertionError(f"{name} not replaced within {timeout}s")


# ------------------------------------------------------------------ sinks


def test_log_mode_prefixes_lines_and_flushes_partial_last_line(daemon: Daemon) -> None:
    m = daemon.marker
    script = 'echo "hello $1"; echo "oops $1" >&2; printf "no newline $1"; sleep 0.2'
    daemon.write_config(tasks(talk=shell_task(m, "talk", script, control="once", output="log")))
    daemon.start()
    daemon.wait_log("talk[0] (pid")  # its exit
    daemon.wait_log("no newline talk")
    text = daemon.log_text()
    assert re.search(r"INFO talk\[0\] hello talk$", text, re.M)
    assert re.search(r"INFO talk\[0\]:stderr oops talk$", text, re.M), "stderr, tagged"
    assert re.search(r"INFO talk\[0\] no newline talk$", text, re.M)


def test_default_output_is_log(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(talk=shell_task(m, "talk", 'echo "said $1"', control="once")))
    daemon.start()
    daemon.wait_log("talk[0] said talk")


def test_settings_output_is_the_default_and_a_task_overrides_it(daemon: Daemon) -> None:
    m = daemon.marker
    out = daemon.root / "out"
    out.mkdir()
    settings = {"output": {"file": f"{out}/{{Task_name}}-{{Task_instance}}.log"}}
    daemon.write_config(
        tasks(
            settings,
            pool=shell_task(m, "pool", 'echo "I am $Task_instance"', control="once", count=2),
            loud=shell_task(m, "loud", 'echo "logged $1"', control="once", output="log"),
        )
    )
    daemon.start()
    wait_for(lambda: (out / "pool-1.log").exists() and (out / "pool-1.log").read_text())
    wait_for(lambda: (out / "pool-0.log").exists() and (out / "pool-0.log").read_text())
    assert (out / "pool-0.log").read_text() == "I am 0\n"
    assert (out / "pool-1.log").read_text() == "I am 1\n"
    daemon.wait_log("loud[0] logged loud")
    assert not (out / "loud-0.log").exists()


def test_discard_and_inherit(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        tasks(
            quiet=task(m, "quiet", output="discard"),
            plain=task(m, "plain", output="inherit"),
        )
    )
    daemon.start()
    (quiet,) = daemon.wait_pids("quiet", 1)
    (plain,) = daemon.wait_pids("plain", 1)
    for fd in (1, 2):
        assert fd_target(quiet, fd) == "/dev/null"
        assert fd_target(plain, fd) == os.path.realpath(daemon.log)


def test_unwritable_output_file_is_a_spawn_failure(daemon: Daemon) -> None:
    m = daemon.marker
    bad = daemon.root / "missing-dir" / "x.log"
    daemon.write_config(tasks(a=task(m, "a", output={"file": str(bad)}), b=task(m, "b")))
    daemon.start()
    daemon.wait_pids("b", 1)
    daemon.wait_log(f"output file {bad}: No such file or directory")
    assert not daemon.pids("a")


def test_file_partial_last_line_is_flushed_and_restarts_do_not_join_lines(
    daemon: Daemon,
) -> None:
    m = daemon.marker
    log = daemon.root / "part.log"
    # Each run writes one whole line and a partial one, then dies quickly;
    # the supervisor restarts it (with backoff) a few times.
    script = 'echo "whole $$"; printf "partial $$"'
    daemon.write_config(
        tasks(
            {"backoff_initial": 0.05, "backoff_max": 0.1},
            part=shell_task(m, "part", script, output={"file": str(log)}),
        )
    )
    daemon.start()
    wait_for(lambda: log.exists() and log.read_text().count("partial") >= 3, what="3 runs")
    assert daemon.stop() == 0
    lines = log.read_text().split("\n")
    assert lines[-1] == "", "the file ends with a complete line"
    for whole, partial in zip(lines[0:-1:2], lines[1:-1:2], strict=True):
        pid = whole.split()[1]
        assert whole == f"whole {pid}"
        assert partial == f"partial {pid}"


def test_a_line_longer_than_the_limit_is_split_with_a_marker(daemon: Daemon) -> None:
    m = daemon.marker
    log = daemon.root / "long.log"
    size = MAX_LINE * 2 + 100
    code = f"import sys; sys.stdout.write('a' * {size} + '\\nshort\\n')"
    daemon.write_config(
        tasks(long=task(m, "long", code, control="once", output={"file": str(log)}))
    )
    daemon.start()
    wait_for(lambda: log.exists() and log.read_bytes().endswith(b"short\n"))
    data = log.read_bytes()
    piece = b"a" * MAX_LINE + LONG_LINE_MARK
    assert data == piece + piece + b"a" * 100 + b"\nshort\n"


# ------------------------------------------------------------- under load


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["file", "log"])
def test_chatty_writer_does_not_delay_restarts(daemon: Daemon, mode: str) -> None:
    m = daemon.marker
    out = daemon.root / "chatty.log"
    output = {"file": str(out), "max_bytes": "8M", "backups": 1} if mode == "file" else "log"
    # yes writes as fast as the pipe takes it; its argv carries the marker.
    chatty = shell_task(m, "chatty", 'exec yes "$0 $1 chatter"', output=output)
    daemon.write_config(tasks(QUICK, chatty=chatty, victim=task(m, "victim")))
    daemon.start()
    daemon.wait_pids("chatty", 1)
    daemon.wait_pids("victim", 1)
    if mode == "file":
        wait_for(lambda: out.exists() and out.stat().st_size > 1_000_000, what="output flowing")
    else:
        daemon.wait_log("chatty[0] ")
    rss_before = resident_kib(daemon.pid)
    latencies = [restart_latency(daemon, "victim") for _ in range(7)]
    rss_after = resident_kib(daemon.pid)
    median = statistics.median(latencies)
    # Generous bounds for a loaded 2-core CI machine (the bench measures the
    # figure); without backpressure the loop would never get to the exit.
    assert median < 0.25, f"restart latencies under load: {latencies}"
    assert max(latencies) < 2.0, f"restart latencies under load: {latencies}"
    assert rss_after - rss_before < 20_000, "the daemon's memory grows with the output"
    assert daemon.pids("chatty"), "the writer keeps running"
    assert daemon.stop() == 0


def _line(number: int) -> bytes:
    # Varying lengths, so that rotations fall at every offset within a line.
    return b"%09d %s\n" % (number, b"x" * (number % 97))


WRITER = """
import sys
total, n, out = int(sys.argv[1]), 0, sys.stdout.buffer
written = 0
while written < total:
    block = b"".join(b"%09d %s\\n" % (i, b"x" * (i % 97)) for i in range(n, n + 2000))
    out.write(block)
    written += len(block)
    n += 2000
out.flush()
"""


@pytest.mark.slow
def test_rotation_under_load_keeps_every_line_in_order(daemon: Daemon) -> None:
    m = daemon.marker
    log = daemon.root / "rot.log"
    total = 50_000_000
    max_bytes = 1_000_000
    writer = {
        "commands": {"start": [sys.executable, "-c", WRITER, str(total), m, "rot"]},
        "control": "once",
        "output": {"file": str(log), "max_bytes": max_bytes, "backups": 60},
    }
    expected_lines = 0
    expected_size = 0
    while expected_size < total:
        block = b"".join(_line(i) for i in range(expected_lines, expected_lines + 2000))
        expected_size += len(block)
        expected_lines += 2000
    daemon.write_config(tasks(rot=writer))
    daemon.start()
    daemon.wait_log("rot[0] (pid", timeout=60)

    def files() -> list[Path]:
        rotated = sorted(
            daemon.root.glob("rot.log.*"), key=lambda p: int(p.suffix[1:]), reverse=True
        )
        return [*rotated, log]

    wait_for(lambda: sum(p.stat().st_size for p in files()) == expected_size, 30, "all output")
    number = 0
    for path in files():
        data = path.read_bytes()
        assert len(data) <= max_bytes, f"{path.name} is over max_bytes"
        assert data.endswith(b"\n"), f"{path.name} was rotated inside a line"
        for line in data.split(b"\n")[:-1]:
            assert line + b"\n" == _line(number), f"{path.name}: line {number} is {line[:40]!r}"
            number += 1
    assert number == expected_lines
    assert len(files()) > 40


@pytest.mark.slow
def test_lines_stay_whole_when_a_fast_writer_is_killed(daemon: Daemon) -> None:
    m = daemon.marker
    log = daemon.root / "kill.log"
    code = (
        "import os, sys\n"
        "line = (str(os.getpid()) + ':' + 'x' * 200 + '\\n').encode()\n"
        "while True: sys.stdout.buffer.write(line * 50)\n"
    )
    daemon.write_config(
        tasks(
            QUICK,
            fast=task(m, "fast", code, output={"file": str(log), "max_bytes": "4M", "backups": 3}),
        )
    )
    daemon.start()
    for _ in range(3):
        wait_for(lambda: log.exists() and log.stat().st_size > 100_000, what="output")
        restart_latency(daemon, "fast")
    assert daemon.stop() == 0
    data = b"".join(p.read_bytes() for p in sorted(daemon.root.glob("kill.log*"), reverse=True))
    cut: set[bytes] = set()
    for line in data.split(b"\n")[:-1]:
        pid, _, rest = line.partition(b":")
        assert pid.isdigit(), f"a line of one process ran into another's: {line[:60]!r}"
        if rest != b"x" * 200:
            # Only a process's very last line may be short (it was killed).
            assert pid not in cut and b"x" * len(rest) == rest, line[:60]
            cut.add(pid)
        else:
            assert pid not in cut, f"pid {pid!r} wrote after its cut line"


# ------------------------------------------------- the capture, in-process


def _spawn_effect(**keys: object) -> fx.Spawn:
    return fx.Spawn(task="t", instance=0, generation=1, argv=("x",), **keys)  # type: ignore[arg-type]


def test_spawn_with_output_and_limits_survives_the_codec() -> None:
    effect = _spawn_effect(
        output="file",
        output_file="/x/{a}.log",
        output_max_bytes=5,
        output_backups=0,
        umask=0o22,
        limits=(("core", None, None), ("nofile", 10, 20)),
    )
    assert codec.decode(json.loads(json.dumps(codec.encode(effect)))) == effect


def test_a_slow_sink_stops_reading_rather_than_buffering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    selector = selectors.DefaultSelector()
    out = output.Output(selector)
    write_end, _, done = out.prepare(_spawn_effect(output="log"))
    assert write_end is not None
    sent = 10_000  # 50 KB: many turns of logging, and within any pipe's buffer
    os.write(write_end, b"line\n" * sent)
    keep = os.dup(write_end)
    done(True)
    (capture,) = [c for c in out.captures if c.stream == "stdout"]
    with caplog.at_level(logging.INFO, logger="taskforce.output"):
        capture.on_readable()
        assert len(caplog.records) == output.LOG_LINES_PER_TURN
        assert out.busy and capture.fd not in selector.get_map(), "paused: off the selector"
        assert len(capture.buf) <= output.CHUNK
        turns = 0
        while out.busy:
            out.pump()
            for key, _ in selector.select(0):
                key.data()
            turns += 1
        assert capture.fd in selector.get_map(), "reading again once the backlog is written"
        os.close(keep)
        while out.captures:
            for key, _ in selector.select(1):
                key.data()
            out.pump()
    assert len(caplog.records) == sent
    assert {r.getMessage() for r in caplog.records} == {"t[0] line"}
    assert turns > 1
    out.close()
    selector.close()


def test_rotation_with_no_backups_starts_the_file_again(tmp_path: Path) -> None:
    selector = selectors.DefaultSelector()
    out = output.Output(selector)
    path = tmp_path / "x.log"
    write_end, _, done = out.prepare(
        _spawn_effect(output="file", output_file=str(path), output_max_bytes=10, output_backups=0)
    )
    assert write_end is not None
    os.write(write_end, b"aaaa\nbbbb\ncccc\nlonger than ten\ndd")
    done(True)  # closes our write end: EOF after the data
    while out.captures:
        for key, _ in selector.select(1):
            key.data()
        out.pump()
    while out.busy:
        out.pump()
    assert path.read_bytes() == b"dd\n"
    assert not list(tmp_path.glob("x.log.*"))
    out.close()
    selector.close()


RAISE_LIMIT = """
import logging, resource, selectors, sys
from taskforce import output
from taskforce.core import effects as fx
logging.basicConfig(level=logging.WARNING, format="%(message)s")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
out = output.Output(selectors.DefaultSelector())
for i in range(40):  # 4 descriptors each until done(): 160 > 64
    out.prepare(fx.Spawn(task="t", instance=i, generation=1, argv=("x",), output="log"))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_out_of_descriptors_raises_the_soft_limit_once_needed() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 256:
        pytest.skip(f"hard limit of open files is {hard}")
    done = subprocess.run(
        [sys.executable, "-c", RAISE_LIMIT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 128
    assert "out of open files (64): raised taskforce's limit to " in done.stderr


def test_close_finishes_every_open_pipe_reading_or_paused(caplog: pytest.LogCaptureFixture) -> None:
    selector = selectors.DefaultSelector()
    out = output.Output(selector)
    write_ends = []
    for _ in range(2):
        write_end, _, done = out.prepare(_spawn_effect(output="log"))
        assert write_end is not None
        write_ends.append(os.dup(write_end))
        done(True)
    os.write(write_ends[1], b"line\n" * 1000)
    assert len(out.captures) == 4, "two pipes each, all on the selector"
    with caplog.at_level(logging.INFO, logger="taskforce.output"):
        for capture in out.captures:
            capture.on_readable()  # (the chatty one logs a turn's worth and pauses)
    (chatty,) = out.backlog
    assert chatty.fd not in selector.get_map(), "paused: off the selector"
    # (the stderr pipes were at their end: finished) one reading, one paused
    assert len(out.captures) == 2 and chatty in out.captures
    fds = [capture.fd for capture in out.captures]
    out.close()
    assert not out.captures
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    for fd in write_ends:
        os.close(fd)
    selector.close()
