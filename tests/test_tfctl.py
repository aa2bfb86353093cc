"""tfctl against a real daemon: every command, on a Unix socket and over TLS,
with the exit codes scripts rely on (0 done, 1 refused, 2 usage, 3 cannot
connect) and clear messages when nothing listens or control is not allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Daemon, shell_task, task, wait_for
from test_control import (
    answers,
    call,
    form,
    short_dir,
    start_daemon,
    start_tls_daemon,
)

from taskforce import tfclient, tfctl


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """tfctl in this process: (exit code, stdout, stderr)."""
    try:
        code = tfctl.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_over_a_unix_socket(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    hups, poked = daemon.root / "hups", daemon.root / "poked"
    defs = {
        "a": task(m, "a", count=2),
        "h": shell_task(m, "h", f"trap 'echo hup >> {hups}' HUP; while :; do sleep 0.05; done"),
        "p": {
            "commands": {
                "start": [sys.executable, "-c", "import time; time.sleep(1000)", m, "p"],
                "poke": ["sh", "-c", f"echo poked >> {poked}"],
            },
            "events": [{"type": "external", "name": "poke", "command": "poke"}],
        },
        "dormant": task(m, "dormant", control="off"),
    }
    sock = start_daemon(daemon, defs)
    daemon.wait_pids("a", 2)
    daemon.wait_pids("h", 1)
    daemon.wait_pids("p", 1)
    s = ("-s", sock)

    code, out, _ = run(capsys, *s, "status")
    lines = out.splitlines()
    header = "TASK STATE PID UPTIME RESTARTS CPU MEM INFO".split()  # CPU, MEM: Linux
    assert code == 0 and lines[0].split() == header
    assert any(line.startswith("a[0]") and " ready " in line for line in lines)
    assert any(line.startswith("dormant") and " off " in line for line in lines)
    code, out, _ = run(capsys, *s, "status", "--json", "a")
    assert code == 0 and list(json.loads(out)) == ["a"]
    code, _, err = run(capsys, *s, "status", "nope")
    assert code == 1 and "no such task: nope" in err

    code, out, _ = run(capsys, *s, "stop", "a")
    assert (code, out) == (0, "a\tok\n")
    wait_for(lambda: not daemon.pids("a"), what="a stopped")
    code, out, _ = run(capsys, *s, "status", "a")
    assert "override control=off (config: wait) for " in out
    assert "until undone, a reload request or an edit of this task" in out
    code, out, _ = run(capsys, *s, "start", "a", "dormant")
    assert (code, out) == (0, "a\tok (control wait)\ndormant\tok (control wait)\n")
    daemon.wait_pids("a", 2)
    daemon.wait_pids("dormant", 1)

    before = daemon.pids("a")
    code, out, _ = run(capsys, *s, "restart", "a[1]")
    assert (code, out) == (0, "a[1]\trestarting\n")
    wait_for(lambda: len(daemon.pids("a") - before) == 1, what="a[1] restarted")
    code, _, err = run(capsys, *s, "restart", "nope")
    assert (code, err) == (1, "tfctl: refused (404): nope: not found\n"), "on one line"

    code, out, _ = run(capsys, *s, "signal", "HUP", "h")
    assert code == 0 and "sent SIGHUP" in out
    wait_for(lambda: hups.exists(), what="h got SIGHUP")
    code, _, err = run(capsys, *s, "signal", "--signal", "NOPE", "h")
    assert (code, err) == (1, "tfctl: refused (400): bad signal 'NOPE'\n")
    code, _, err = run(capsys, *s, "signal", "NOPE", "h")
    assert code == 2 and "neither 'NOPE' nor 'h' names a signal" in err

    assert run(capsys, *s, "control", "a=suspend")[:2] == (0, "a\tok\n")
    code, _, err = run(capsys, *s, "control", "a=bogus", "h=off")
    assert (code, err) == (1, "tfctl: refused (404): a: bad control 'bogus'; h: ok\n")
    assert daemon.pids("h"), "a refused request changes nothing"
    assert run(capsys, *s, "control", "a=wait")[:2] == (0, "a\tok\n")
    assert run(capsys, *s, "count", "a=3")[:2] == (0, "a\tok\n")
    daemon.wait_pids("a", 3)
    code, _, err = run(capsys, *s, "count", "a=zero")
    assert code == 1 and 'a: bad count "zero"' in err

    assert run(capsys, *s, "event", "poke")[:2] == (0, "p\tcommand 'poke'\n")
    wait_for(lambda: poked.exists(), what="the external event's command")
    code, _, err = run(capsys, *s, "event", "unheard")
    assert code == 1 and "unheard" in err

    new = daemon.root / "new.conf"
    new.write_text(json.dumps({"tasks": {**defs, "extra": task(m, "extra")}}))
    code, out, _ = run(capsys, *s, "plan", "-f", str(new))
    assert code == 0
    assert "start    extra[0]  new in the config" in out
    assert "a[2]" not in out, "an edit elsewhere keeps the count override"
    code, out, _ = run(capsys, *s, "plan", "-f", str(new), "--json")
    assert code == 0 and json.loads(out)["start"][-1]["task"] == "extra"
    bad = daemon.root / "bad.conf"
    bad.write_text("tasks: {x: {commands: {}}}\n")
    code, _, err = run(capsys, *s, "plan", "-f", str(bad))
    assert code == 1 and f"{bad}:1: tasks.x.commands" in err
    assert run(capsys, *s, "plan", "-f", str(daemon.root / "missing"))[0] == 2
    assert not daemon.pids("extra"), "plan applies nothing"

    code, out, _ = run(capsys, *s, "health")
    assert code == 0 and out.startswith("ok")
    code, out, _ = run(capsys, *s, "version")
    assert code == 0 and out.startswith("taskforce ") and "(Python " in out
    assert len(out.splitlines()) == 1, "a line for people"
    code, out, _ = run(capsys, *s, "version", "--json")
    assert code == 0 and "taskforce" in json.loads(out)

    code, out, _ = run(capsys, *s, "reload")
    assert (code, out) == (0, "Taskforce config reload initiated\n")
    daemon.wait_pids("a", 2)  # the reload ended the count override
    good = daemon.config.read_text()
    daemon.write_config("tasks: [broken\n")
    code, _, err = run(capsys, *s, "reload")
    assert code == 1 and "rejected" in err and "nothing was changed" in err
    daemon.write_config(good)

    before = daemon.pids("a")
    assert run(capsys, *s, "reset")[:2] == (0, "Taskforce reset initiated\n")
    wait_for(lambda: len(daemon.pids("a") - before) == 2 and answers(sock), what="reset")
    assert run(capsys, *s, "shutdown")[:2] == (0, "Taskforce exit initiated\n")
    assert daemon.proc is not None and daemon.proc.wait(20) == 0
    code, _, err = run(capsys, *s, "status")
    assert code == 3 and "cannot connect" in err


def test_exit_codes_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "none.sock")
    code, _, err = run(capsys, "-s", missing, "status")
    assert code == 3
    assert f"cannot connect to {missing}" in err and "taskforce -w PATH" in err
    monkeypatch.setenv("TASKFORCE_SOCKET", missing)
    code, _, err = run(capsys, "reload")
    assert code == 3 and missing in err, "TASKFORCE_SOCKET is the default"
    monkeypatch.delenv("TASKFORCE_SOCKET")
    assert tfctl.build_parser().parse_args(["status"]).socket == "/var/run/s.taskforce"
    assert run(capsys, "-s", missing, "control", "a")[0] == 2
    assert run(capsys, "-s", missing, "frobnicate")[0] == 2
    assert run(capsys)[0] == 2
    code, _, err = run(capsys, "-s", "127.0.0.1:1", "status")
    assert code == 3 and "cannot connect to 127.0.0.1:1" in err


def test_a_socket_name_with_no_such_file_here_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-s taskforce.sock`` from a folder without that socket is read as a
    host; the message says which file was looked for and how to name it,
    not the resolver's "Name or service not known"."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "-s", "taskforce.sock", "status")
    assert code == 3
    assert "no socket file 'taskforce.sock' here" in err, err
    assert "./taskforce.sock" in err and "host:port" in err
    assert "Name or service not known" not in err
    # No port and no such host: the same hint, whatever the name ends in.
    code, _, err = run(capsys, "-s", "no-such-host.invalid", "status")
    assert code == 3 and "no socket file 'no-such-host.invalid' here" in err, err
    # A host with a port is a host: no talk of socket files.
    code, _, err = run(capsys, "-s", "no-such-host.invalid:8080", "status")
    assert code == 3 and "socket file" not in err, err
    # Resolving but refusing, a name ending in .sock still gets the hint.
    refused = ConnectionRefusedError(111, "Connection refused")
    said = tfclient._why("tf.sock", refused)
    assert "no socket file 'tf.sock' here" in said and "Connection refused" in said


def test_control_not_allowed_is_a_clear_refusal(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")}, allow=False)
    daemon.wait_pids("a", 1)
    code, _, err = run(capsys, "-s", sock, "stop", "a")
    assert code == 1
    assert "Control not permitted on this path" in err and "-A" in err
    assert run(capsys, "-s", sock, "status")[0] == 0
    assert daemon.pids("a")


def test_tfctl_over_tls(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    m = daemon.marker
    address, ca = start_tls_daemon(daemon, {"a": task(m, "a")})
    daemon.wait_pids("a", 1)
    code, out, _ = run(capsys, "-s", address, "--cafile", ca, "status")
    assert code == 0 and "a[0]" in out
    code, _, err = run(capsys, "-s", address, "status")
    assert code == 3 and "TLS" in err, "an unknown certificate is refused"
    code, _, err = run(capsys, "-s", address, "-k", "stop", "a")
    assert code == 1 and "--token-file" in err, "control over TCP needs the token"
    token = daemon.root / "token"
    assert run(capsys, "-s", address, "-k", "--token-file", str(token), "stop", "a")[:2] == (
        0,
        "a\tok\n",
    )
    wait_for(lambda: not daemon.pids("a"), what="a stopped over TLS")
    os.environ["TASKFORCE_TOKEN_FILE"] = str(token)
    try:
        assert run(capsys, "-s", address, "--cafile", ca, "shutdown")[0] == 0
    finally:
        del os.environ["TASKFORCE_TOKEN_FILE"]
    assert daemon.proc is not None and daemon.proc.wait(20) == 0


def test_tfctl_as_a_command(daemon: Daemon, tmp_path: Path) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")})
    daemon.wait_pids("a", 1)
    env = {**os.environ, "TASKFORCE_SOCKET": sock}
    done = subprocess.run(
        [sys.executable, "-m", "taskforce.tfctl", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and "a[0]" in done.stdout
    # A socket in the current folder, named without a slash, is that file.
    done = subprocess.run(
        [sys.executable, "-m", "taskforce.tfctl", "-s", os.path.basename(sock), "status"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(sock),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and "a[0]" in done.stdout, done.stderr
    nowhere = {**env, "TASKFORCE_SOCKET": str(short_dir(tmp_path) / "nothing")}
    done = subprocess.run(
        [sys.executable, "-m", "taskforce.tfctl", "status"],
        capture_output=True,
        text=True,
        env=nowhere,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3 and "cannot connect" in done.stderr


def test_slots_and_signals_as_the_readme_writes_them(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """``web:0`` and ``web[0]`` name a slot everywhere, tfctl and the control
    requests alike (a task named ``b:1`` is still that task), and ``tfctl
    signal`` takes the signal after the tasks, as the README shows, or
    before them."""
    m = daemon.marker
    hups = daemon.root / "hups"
    defs = {
        "a": task(m, "a", count=2),
        "b": task(m, "b", count=2),
        "b:1": task(m, "b:1"),
        "h": shell_task(m, "h", f"trap 'echo hup >> {hups}' HUP; while :; do sleep 0.05; done"),
    }
    sock = start_daemon(daemon, defs)
    daemon.wait_pids("a", 2)
    daemon.wait_pids("b", 2)
    daemon.wait_pids("b:1", 1)
    daemon.wait_pids("h", 1)
    s = ("-s", sock)

    for slot in ("a:1", "a[1]"):
        before = daemon.pids("a")
        assert run(capsys, *s, "restart", slot)[:2] == (0, "a[1]\trestarting\n"), slot
        wait_for(lambda b=before: len(daemon.pids("a") - b) == 1, what=f"{slot} restarted")
        daemon.wait_pids("a", 2)
    before = daemon.pids("b:1")
    assert run(capsys, *s, "restart", "b:1")[:2] == (0, "b:1[0]\trestarting\n"), "the task"
    wait_for(lambda: daemon.pids("b:1") - before, what="the task b:1 restarted")
    assert run(capsys, *s, "restart", "b[1]")[:2] == (0, "b[1]\trestarting\n"), "the slot"

    code, form_text = form(sock, "/manage/restart", {"task": "a:0"})
    assert (code, form_text) == (202, "a[0]\trestarting\n")
    daemon.wait_pids("a", 2)
    code, form_text = form(sock, "/manage/restart", {"task": "a[0]", "instance": "1"})
    assert (code, form_text) == (400, "a[0]: instance=1 names another slot\n")

    def hupped() -> int:
        return len(hups.read_text().split()) if hups.exists() else 0

    # One at a time: signals sent faster than the trap runs merge into one.
    for count, words in enumerate((("h", "HUP"), ("h:0", "SIGHUP"), ("HUP", "h[0]"), ("1", "h"))):
        code, out, _ = run(capsys, *s, "signal", *words)
        assert (code, out) == (0, f"h[0]\tsent SIGHUP to pid {min(daemon.pids('h'))}\n"), words
        wait_for(lambda n=count + 1: hupped() == n, what=f"SIGHUP {count + 1}")
    code, _, err = run(capsys, *s, "signal", "HUP", "TERM")
    assert code == 2 and "--signal" in err, "both ends name signals: ambiguous"
    code, form_text = form(sock, "/manage/signal", {"task": "h:0", "signal": "USR1"})
    assert code == 200 and form_text.startswith("h[0]\tsent SIGUSR1")

    code, _, err = run(capsys, *s, "stop", "a:0")
    assert code == 1 and err == (
        "tfctl: refused (404): a:0: start, stop and control act on a whole task (a); "
        "restart and signal take one slot\n"
    )
    assert len(daemon.pids("a")) == 2, "a refused request changes nothing"
    code, _, err = run(capsys, *s, "start", "a[0]")
    assert code == 1 and "act on a whole task (a)" in err

    code, _, text = call(sock, "/status/logs?task=a%5B1%5D")
    assert code == 200 and json.loads(text)["task"] == "a"
    assert run(capsys, *s, "logs", "a:1")[0] == 0
    assert run(capsys, *s, "logs", "a[1]")[0] == 0
