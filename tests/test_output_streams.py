"""stdout and stderr kept apart end to end, and kept in files.

Real processes write to both streams, interleaved; their lines come back
apart and each stream in order from the ring (``/status/logs``), taskforce's
log, the output files and ``tfctl logs`` -- which reads older lines back
from the files (rotated ones too) with ``--since``, ``--until``, ``--grep``.
Then hostile writers (binary, no newline, huge lines, a flood while killed)
and the config errors of the ``output`` keys.

Each test waits for a condition with a deadline; none asserts after a fixed
sleep, and the daemon fixture ends every process a test started.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, task, wait_for
from test_control import call, start_daemon
from test_tfctl import run

from taskforce.config import SCHEMA_ONLY, validate_all
from taskforce.core.model import HostFacts, build
from taskforce.output import LONG_LINE_MARK

#: Writes ``o I`` to stdout and ``e I`` to stderr for I in 0..N-1, in turn,
#: each flushed, then sleeps.
BOTH = (
    "import sys, time\n"
    "n = int(sys.argv[3])\n"
    "for i in range(n):\n"
    "    print('o', i, flush=True)\n"
    "    print('e', i, file=sys.stderr, flush=True)\n"
    "time.sleep(1000)\n"
)


def both(marker: str, name: str, lines: int, **keys: Any) -> dict[str, Any]:
    return task(marker, name, BOTH, args=(str(lines),), **keys)


def logs(sock: str, name: str, **params: Any) -> dict[str, Any]:
    query = "&".join(f"{key}={value}" for key, value in {"task": name, **params}.items())
    code, _, text = call(sock, f"/status/logs?{query}")
    assert code == 200, text
    answer: dict[str, Any] = json.loads(text)
    return answer


def numbers(lines: list[str], tag: str) -> list[int]:
    """The I of every ``tag I`` line, in order."""
    return [int(line.split()[-1]) for line in lines if line.split()[-2:-1] == [tag]]


def tfctl_lines(capsys: pytest.CaptureFixture[str], sock: str, *argv: str) -> list[str]:
    code, out, err = run(capsys, "-s", sock, "logs", *argv)
    assert code == 0, err
    return out.splitlines()


def test_log_mode_keeps_the_streams_apart_in_ring_log_and_tfctl(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"t": both(m, "t", 300, output="log")})
    wait_for(lambda: len(logs(sock, "t")["lines"]) == 600, what="600 lines in the ring")

    lines = logs(sock, "t")["lines"]
    for stream, tag in (("stdout", "o"), ("stderr", "e")):
        texts = [line["text"] for line in lines if line["stream"] == stream]
        assert texts == [f"{tag} {i}" for i in range(300)], f"{stream} apart and in order"
    assert all(line["time"] <= later["time"] for line, later in zip(lines, lines[1:], strict=False))
    only = logs(sock, "t", stream="stderr")["lines"]
    assert [line["text"] for line in only] == [f"e {i}" for i in range(300)]
    assert call(sock, "/status/logs?task=t&stream=both")[0] == 400

    text = daemon.log_text()
    assert numbers(re.findall(r"INFO t\[0\] (o \d+)$", text, re.M), "o") == list(range(300))
    assert numbers(re.findall(r"INFO t\[0\]:stderr (e \d+)$", text, re.M), "e") == list(range(300))
    assert not re.search(r"INFO t\[0\] e \d", text), "no stderr line untagged"

    printed = tfctl_lines(capsys, sock, "t", "-n", "1000")
    assert numbers([p for p in printed if " t[0]:stderr " in p], "e") == list(range(300))
    assert numbers([p for p in printed if " t[0] " in p], "o") == list(range(300))
    printed = tfctl_lines(capsys, sock, "t", "--stream", "stderr", "-n", "3")
    assert [p.split(" ", 1)[1] for p in printed] == [f"t[0]:stderr e {i}" for i in (297, 298, 299)]
    # --grep: smart case as journalctl's, -i, --case-sensitive.
    assert len(tfctl_lines(capsys, sock, "t", "-g", r"^o 1\d$")) == 10
    assert tfctl_lines(capsys, sock, "t", "-g", r"^O 12$") == []
    assert len(tfctl_lines(capsys, sock, "t", "-g", r"^O 12$", "-i")) == 1
    assert tfctl_lines(capsys, sock, "t", "-g", r"^o 12$", "--case-sensitive=yes")[0].endswith(
        "t[0] o 12"
    )
    code, _, err = run(capsys, "-s", sock, "logs", "t", "-g", "(")
    assert code == 2 and "--grep" in err
    code, _, err = run(capsys, "-s", sock, "logs", "t", "--since", "someday")
    assert code == 2 and "not a time: 'someday'" in err


def test_files_split_stamped_rotated_and_read_back(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    out, err = daemon.root / "t.out", daemon.root / "t.err"
    # 3,000 lines a stream: far more than the ring keeps, rotated many times.
    output = {"file": str(out), "stderr": str(err), "timestamps": True}
    output |= {"max_bytes": "16K", "backups": 40}
    sock = start_daemon(daemon, {"t": both(m, "t", 3000, output=output)})

    def texts(path: Path) -> list[str]:
        names = [path.with_name(f"{path.name}.{n}") for n in range(40, 0, -1)] + [path]
        return [line for name in names if name.exists() for line in name.read_text().splitlines()]

    wait_for(lambda: len(texts(err)) == 3000 and len(texts(out)) == 3000, what="all lines")
    assert len(list(daemon.root.glob("t.out.*"))) > 5, "rotated"
    for path, stream, tag in ((out, "stdout", "o"), (err, "stderr", "e")):
        lines = texts(path)
        assert [line.split(" ", 2)[2] for line in lines] == [f"{tag} {i}" for i in range(3000)]
        assert {line.split(" ")[1] for line in lines} == {stream}
        stamp = lines[0].split(" ")[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", stamp)

    # Read back: the ring has the last 1,000 lines; the files all the rest.
    printed = tfctl_lines(capsys, sock, "t", "-n", "6000")
    assert len(printed) == 6000
    assert numbers([p for p in printed if ":stderr " in p], "e") == list(range(3000))
    assert numbers([p for p in printed if ":stderr " not in p], "o") == list(range(3000))
    assert tfctl_lines(capsys, sock, "t", "-g", "^e 17$")[0].endswith("t[0]:stderr e 17")
    assert len(tfctl_lines(capsys, sock, "t", "--since", "today")) == 6000
    assert tfctl_lines(capsys, sock, "t", "--until", "1 h ago") == []
    # --since/--until at the time of a line of the file: that line on, or up to it.
    first = texts(out)[100].split(" ")[0]
    moment = datetime.datetime.fromisoformat(first)
    since = tfctl_lines(capsys, sock, "t", "--since", first, "--stream", "stdout")
    assert since and numbers(since, "o")[0] <= 100 and numbers(since, "o")[-1] == 2999
    local = moment.astimezone().replace(tzinfo=None).isoformat(sep=" ")
    until = tfctl_lines(capsys, sock, "t", "--until", local, "--stream", "stdout")
    assert until and numbers(until, "o")[0] == 0 and numbers(until, "o")[-1] >= 100

    # A restarted taskforce has an empty ring: the files still have it all.
    assert daemon.stop() == 0
    sock = start_daemon(daemon, {"t": both(m, "t", 2, output=output)})
    wait_for(lambda: len(logs(sock, "t")["lines"]) == 4, what="the new run's lines")
    printed = tfctl_lines(capsys, sock, "t", "-n", "6004", "--stream", "stdout")
    assert numbers(printed, "o") == [*range(3000), 0, 1]


def test_one_file_for_both_streams_with_and_without_timestamps(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    stamped, plain = daemon.root / "stamped.log", daemon.root / "plain.log"
    defs = {
        "s": both(m, "s", 1500, output={"file": str(stamped), "timestamps": True}),
        "p": both(m, "p", 1500, output={"file": str(plain)}),
    }
    sock = start_daemon(daemon, defs)

    def count(path: Path) -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    wait_for(lambda: count(stamped) == 3000 and count(plain) == 3000, what="all lines")
    lines = stamped.read_text().splitlines()
    for stream, tag in (("stdout", "o"), ("stderr", "e")):
        mine = [line.split(" ", 2)[2] for line in lines if line.split(" ")[1] == stream]
        assert mine == [f"{tag} {i}" for i in range(1500)]
    printed = tfctl_lines(capsys, sock, "s", "-n", "3000")
    assert numbers([p for p in printed if ":stderr " in p], "e") == list(range(1500))
    assert numbers([p for p in printed if ":stderr " not in p], "o") == list(range(1500))

    # Undated: the file stands in for the ring when more is asked than it has.
    printed = tfctl_lines(capsys, sock, "p", "-n", "3000")
    assert len(printed) == 3000 and all(p.startswith("- p[0] ") for p in printed)
    assert numbers(printed, "o") == list(range(1500)) and numbers(printed, "e") == list(range(1500))
    printed = tfctl_lines(capsys, sock, "p", "-n", "4")
    assert len(printed) == 4 and not printed[0].startswith("- "), "the ring, dated"


#: Binary and a line without its end on stdout, a 200 KB line on stderr.
HOSTILE = (
    "import os, sys, time\n"
    "os.write(1, b'bin \\xff\\xfe\\x00 end\\nno newline')\n"
    "os.write(2, b'L' * 200000 + b'\\n')\n"
    "os.write(2, b'after\\n')\n"
    "sys.exit(0)\n"
)


@pytest.mark.parametrize("mode", ["log", "file"])
def test_hostile_output_comes_back_whole(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    m = daemon.marker
    path = daemon.root / "h.out"
    output: Any = "log" if mode == "log" else {"file": str(path), "timestamps": True}
    sock = start_daemon(daemon, {"h": task(m, "h", HOSTILE, control="once", output=output)})
    wait_for(lambda: len(logs(sock, "h")["lines"]) == 7, what="every line and piece")
    lines = logs(sock, "h")["lines"]
    out = [line["text"] for line in lines if line["stream"] == "stdout"]
    err = [line["text"] for line in lines if line["stream"] == "stderr"]
    assert out == ["bin \ufffd\ufffd\x00 end", "no newline"]
    assert [len(text) for text in err[:4]] == [65536 + len(LONG_LINE_MARK) - 1] * 3 + [
        200000 - 3 * 65536
    ]
    assert err[-1] == "after"
    printed = tfctl_lines(capsys, sock, "h", "--stream", "stderr", "-g", "^after$")
    assert len(printed) == 1 and printed[0].endswith("h[0]:stderr after")
    if mode == "log":
        assert "INFO h[0] no newline\n" in daemon.log_text()
    else:
        assert path.read_bytes().count(b" stderr L") == 4


#: Floods both streams with numbered lines until killed.
FLOOD = (
    "import os, sys, itertools\n"
    "tag = str(os.getpid()).encode()\n"
    "for i in itertools.count():\n"
    "    block = b''.join(b'%s %d\\n' % (tag, j) for j in range(i * 100, i * 100 + 100))\n"
    "    os.write(1 + i % 2, block)\n"
)


@pytest.mark.parametrize("mode", ["log", "file"])
def test_a_flood_while_killed_keeps_lines_of_each_process_apart(daemon: Daemon, mode: str) -> None:
    m = daemon.marker
    path = daemon.root / "f.out"
    output: Any = "log" if mode == "log" else {"file": str(path), "max_bytes": "64M"}
    sock = start_daemon(daemon, {"f": task(m, "f", FLOOD, output=output)}, "-q")
    first = next(iter(daemon.wait_pids("f", 1)))
    wait_for(lambda: len(logs(sock, "f")["lines"]) > 500, what="the flood")
    daemon_pid = daemon.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: daemon.pids("f") - {first}, what="a replacement")
    second = next(iter(daemon.pids("f") - {first}))
    wait_for(
        lambda: any(line["text"].startswith(f"{second} ") for line in logs(sock, "f")["lines"]),
        what="the replacement's lines",
    )
    assert os.kill(daemon_pid, 0) is None
    for line in logs(sock, "f")["lines"]:
        pid, _, number = line["text"].partition(" ")
        assert pid in (str(first), str(second)) and number.isdigit(), line


FACTS = HostFacts(environ={"PATH": "/usr/bin:/bin"}, host="h1", fqdn="h1.example", pid=42)


@pytest.mark.parametrize(
    ("output", "path", "message"),
    [
        ("{file: /a.log, stderr: b.log}", "tasks.t.output.stderr", "must be an absolute path"),
        ("{file: /a.log, timestamps: 'yes'}", "tasks.t.output.timestamps", "true or false"),
        ("{file: /a.log, stamps: true}", "tasks.t.output.stamps", "unknown output key"),
        ("{stderr: /b.log}", "tasks.t.output", "output to a file needs file: PATH"),
        ("{file: /a.log, stderr: [x]}", "tasks.t.output.stderr", "expected a single value"),
    ],
)
def test_output_key_errors_name_the_line_and_key(output: str, path: str, message: str) -> None:
    text = textwrap.dedent(
        f"""\
        tasks:
          t:
            commands: {{start: [x]}}
            output: {output}
        """
    )
    found = validate_all(text, "t.conf", SCHEMA_ONLY, facts=FACTS)
    assert found, output
    assert any(e.path == path and e.line == 4 and message in str(e) for e in found), [
        str(e) for e in found
    ]
    assert str(found[0]).startswith("t.conf:4: tasks.t.output")


def test_split_files_and_timestamps_reach_the_spec() -> None:
    output = {"file": "/l/{Task_name}.out", "stderr": "/l/{Task_name}.err", "timestamps": True}
    config = {
        "settings": {"output": output},
        "tasks": {
            "t": {"commands": {"start": ["/bin/true"]}},
            "u": {"commands": {"start": ["/bin/true"]}, "output": {"file": "/l/u.log"}},
        },
    }
    specs = build(config, HostFacts(environ={"PATH": "/bin"}), None)
    t, u = specs["t"].process(0), specs["u"].process(0)
    assert (t.output_file, t.output_stderr, t.output_timestamps) == ("/l/t.out", "/l/t.err", True)
    assert (u.output_file, u.output_stderr, u.output_timestamps) == ("/l/u.log", None, False)
