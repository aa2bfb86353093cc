"""The control path: the pure core side (control requests, status, health,
metrics, plan), then the HTTP server against a real daemon -- every endpoint,
the original taskforce's codes and texts, the Unix socket's permissions, TLS
on loopback, and hostile clients that must never stall supervision.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from daemon_harness import Daemon, alias_bomb, shell_task, task, wait_for

from taskforce.config import load_config_text
from taskforce.control.listen import (
    DEFAULT_LISTEN,
    Listener,
    ListenError,
    Options,
    Service,
    clear_stale_staging,
    parse_tcp,
    services,
)
from taskforce.control.server import ControlServer
from taskforce.control.shell import Shell
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core import status
from taskforce.core.lifecycle import LIFECYCLE
from taskforce.core.model import HostFacts
from taskforce.simulator import IGNORE_TERM, Simulation
from taskforce.tfctl import UnixConnection

T = TypeVar("T")

# =====================================================================
# The pure core, in a simulated world where no process ends until the test
# says so: a SIGTERM is noted, not obeyed (``IGNORE_TERM``), so that what a
# request changed can be looked at before the process is gone.


def built(config: dict[str, Any]) -> dict[str, Any]:
    return dict(load_config_text(json.dumps(config), "<test>"))


def world(config: dict[str, Any], roles: tuple[str, ...] | None = None) -> Simulation:
    sim = Simulation(start=1.0, host="h", fqdn="h", default_behaviour=IGNORE_TERM)
    sim.boot(built(config), roles, environ={"PATH": "/bin"})
    return sim


def request(
    sim: Simulation, action: str, args: Any = None, rid: int = 7
) -> tuple[fx.Reply, tuple[fx.Effect, ...]]:
    """The core's one ``Reply`` to a request, and every effect it gave for it."""
    out = sim.feed(ev.ControlRequested(sim.now, rid, action, args or {}))
    replies = [e for e in out if isinstance(e, fx.Reply)]
    assert len(replies) == 1, f"one Reply per request, got {replies}"
    assert replies[0].request == rid
    return replies[0], out


def slot_pids(sim: Simulation, name: str) -> list[int | None]:
    return [slot.pid for slot in sim.core.tasks[name].slots]


def stopped(sim: Simulation, pid: int | None) -> None:
    """``pid`` ends of the SIGTERM it was sent."""
    assert pid is not None
    sim.exit(pid, signal="SIGTERM")


def sleeper(**keys: Any) -> dict[str, Any]:
    return {"commands": {"start": ["sleep", "100", "{Task_instance}"]}, **keys}


def test_control_lines_codes_and_nothing_changed_on_error() -> None:
    sim = world({"tasks": {"a": sleeper(), "b": sleeper(), "c": sleeper()}})
    reply, _ = request(sim, "control", {"b": "off", "a": "wait", "zz": "off"})
    assert (reply.code, reply.body) == (404, "a\tno change\nb\tok\nzz\tnot found\n")
    reply, _ = request(sim, "control", {"b": "sometimes"})
    assert (reply.code, reply.body) == (404, "b\tbad control 'sometimes'\n")
    assert sim.core.tasks["b"].control_override is None, "an error changes nothing"
    reply, _ = request(sim, "control", {"a": "wait"})
    assert (reply.code, reply.body) == (200, "a\tno change\n")
    reply, _ = request(sim, "control", {})
    assert (reply.code, reply.body) == (200, "")
    (pid,) = slot_pids(sim, "b")
    reply, out = request(sim, "control", {"b": "off", "a": "wait"})
    assert (reply.code, reply.body) == (202, "a\tno change\nb\tok\n")
    assert fx.Signal("b", 0, pid, "SIGTERM") in out
    slot = sim.core.tasks["b"].slots[0]
    assert slot.reason == "stopped: control request (control off)"


def test_override_shows_in_status_and_outlasts_unrelated_config_events() -> None:
    config = {"tasks": {"a": sleeper(), "b": sleeper()}}
    sim = world(config)
    sim.advance(3.0)
    request(sim, "control", {"a": "off"})
    stopped(sim, slot_pids(sim, "a")[0])
    shown = status.tasks_status(sim.core)["a"]
    assert shown["control"] == "off" and shown["overrides"] == {"control": "off"}
    assert shown["overrides_at"] == {"control": sim.now}
    assert shown["configured"] == {"control": "wait", "count": 1}
    assert shown["state"] == "off"
    # The same config again, and another task's entry edited: kept, and said so.
    sim.advance(5.0)
    out = sim.reload(built(config))
    edited = {"tasks": {"a": sleeper(), "b": sleeper(count=2)}}
    out += sim.reload(built(edited))
    shown = status.tasks_status(sim.core)["a"]
    assert shown["overrides"] == {"control": "off"} and shown["state"] == "off"
    assert not slot_pids(sim, "a")
    kept = [e.message for e in out if isinstance(e, fx.Log) and "override" in e.message]
    assert kept and all("kept" in m and "set 5s ago" in m for m in kept), kept
    # A reload asked for over the control path reverts to the config.
    out = sim.reload(built(edited), requested=True)
    shown = status.tasks_status(sim.core)["a"]
    assert shown["overrides"] == {} and shown["state"] == "running"
    assert any("dropped: a reload was asked for" in getattr(e, "message", "") for e in out)


def test_override_ends_when_the_tasks_own_entry_changes() -> None:
    config = {"tasks": {"a": sleeper(), "b": sleeper()}}
    sim = world(config)
    request(sim, "count", {"a": "3"})
    assert len(slot_pids(sim, "a")) == 3
    sim.reload(built(config))
    assert status.tasks_status(sim.core)["a"]["overrides"] == {"count": 3}
    assert len(slot_pids(sim, "a")) == 3, "a kept count override keeps its slots"
    out = sim.reload(built({"tasks": {"a": sleeper(count=2), "b": sleeper()}}))
    assert status.tasks_status(sim.core)["a"]["overrides"] == {}
    assert any("dropped: its config entry changed" in getattr(e, "message", "") for e in out)


def test_control_turns_a_configured_off_task_on_and_off_again() -> None:
    config = {"tasks": {"a": sleeper(control="off"), "b": sleeper(requires="a")}}
    sim = world(config)
    assert slot_pids(sim, "a") == [] and sim.core.tasks["b"].waiting_on == ("a (off)",)
    mark = len(sim.effects())
    reply, _ = request(sim, "control", {"a": "wait"})
    assert reply.code == 202
    spawned = [e.task for _, e in sim.effects()[mark:] if isinstance(e, fx.Spawn)]
    assert spawned == ["a", "b"], "b no longer waits"
    reply, _ = request(sim, "control", {"a": "off"})
    assert reply.body == "a\tok\n"
    assert sim.core.tasks["a"].control_override is None
    # Out of scope by roles: start refuses, with the reason, and changes nothing.
    roles_sim = world({"tasks": {"r": sleeper(roles=["web"])}}, roles=("db",))
    reply, _ = request(roles_sim, "start", {"tasks": ("r",)})
    assert (reply.code, reply.body) == (409, "r\tout of scope\n")
    assert roles_sim.core.tasks["r"].control_override is None


def test_count_codes_texts_instances_and_stop_reasons() -> None:
    sim = world({"tasks": {"a": sleeper(count=2), "b": sleeper()}})
    cases = [
        ({"a": "x"}, 404, 'a\tbad count "x"\n'),
        ({"a": "0"}, 404, "a\tnon-positive count '0'\n"),
        ({"a": "-3"}, 404, "a\tnon-positive count '-3'\n"),
        ({"nope": "2"}, 404, "nope\tnot found\n"),
        ({"a": "99999"}, 404, "a\tcount '99999' is above the limit of 10000\n"),
        ({"a": "²"}, 404, 'a\tbad count "²"\n'),
        ({"a": "+-3"}, 404, 'a\tbad count "+-3"\n'),
        ({"a": "2"}, 200, "a\tno change\n"),
        ({}, 200, ""),
        ({"a": "3", "b": "1"}, 202, "a\tok\nb\tno change\n"),
    ]
    for args, code, body in cases:
        reply, _ = request(sim, "count", args)
        assert (reply.code, reply.body) == (code, body), args
    spawns = [e for _, e in sim.spawns("a")]
    # Each new slot gets its own Task_instance, even beyond the configured count.
    assert [s.argv[-1] for s in spawns] == ["0", "1", "2"]
    assert spawns[-1].env["Task_instance"] == "2"
    reply, _ = request(sim, "count", {"a": "1", "b": "x"})
    assert reply.code == 404 and len(sim.core.tasks["a"].slots) == 3, "nothing changed"
    reply, out = request(sim, "count", {"a": "1"})
    assert reply.code == 202
    stopped = [e for e in out if isinstance(e, fx.Signal)]
    assert {(e.instance, e.signal) for e in stopped} == {(1, "SIGTERM"), (2, "SIGTERM")}
    assert sim.core.tasks["a"].slots[2].reason == "stopped: control request (count 1)"
    assert status.tasks_status(sim.core)["a"]["overrides"] == {"count": 1}


def test_restart_a_task_or_one_slot() -> None:
    sim = world({"tasks": {"a": sleeper(count=2), "off": sleeper(control="off")}})
    first = slot_pids(sim, "a")
    reply, out = request(sim, "restart", {"task": "a", "instance": "1"})
    assert (reply.code, reply.body) == (202, "a[1]\trestarting\n")
    assert [e for e in out if isinstance(e, fx.Signal)] == [fx.Signal("a", 1, first[1], "SIGTERM")]
    slot = sim.core.tasks["a"].slots[1]
    assert (slot.intent, slot.reason) == ("restart", "restarted: control request")
    stopped(sim, first[1])
    assert slot_pids(sim, "a")[0] == first[0] and slot_pids(sim, "a")[1] not in first
    assert sim.core.tasks["a"].slots[1].reason == "restarted: control request"
    assert sim.core.tasks["a"].slots[1].restarts == 1
    reply, _ = request(sim, "restart", {"task": "a"})
    assert reply.body == "a[0]\trestarting (rollout)\na[1]\trestarting (rollout)\n"
    for args, code, text in [
        ({"task": "nope"}, 404, "nope: not found\n"),
        ({}, 400, "missing parameter 'task'\n"),
        ({"task": "a", "instance": "x"}, 400, "bad instance 'x'\n"),
        ({"task": "a", "instance": "١"}, 400, "bad instance '١'\n"),
        ({"task": "a", "instance": "5"}, 404, "a: no instance 5 (count 2)\n"),
        ({"task": "off"}, 409, "off: nothing to restart (control is off)\n"),
    ]:
        reply, _ = request(sim, "restart", args)
        assert (reply.code, reply.body) == (code, text)


def test_restart_cuts_a_backoff_short() -> None:
    sim = world({"tasks": {"a": sleeper()}})
    sim.exit(slot_pids(sim, "a")[0], 1)  # failed fast: backoff
    assert sim.core.tasks["a"].slots[0].state.value == "backoff"
    reply, out = request(sim, "restart", {"task": "a"})
    assert reply.code == 202 and any(isinstance(e, fx.Spawn) for e in out)


def test_signal_goes_to_each_leader_not_the_group() -> None:
    sim = world({"tasks": {"a": sleeper(count=2), "b": sleeper(control="suspend")}})
    pids = slot_pids(sim, "a")
    reply, out = request(sim, "signal", {"task": "a", "signal": "SIGHUP"})
    assert reply.code == 200
    assert reply.body == f"a[0]\tsent SIGHUP to pid {pids[0]}\na[1]\tsent SIGHUP to pid {pids[1]}\n"
    sent = [e for e in out if isinstance(e, fx.Signal)]
    assert sent == [fx.Signal("a", i, pids[i], "SIGHUP", group=False) for i in (0, 1)]
    reply, out = request(sim, "signal", {"task": "a", "signal": "usr1", "instance": "1"})
    assert [e.pid for e in out if isinstance(e, fx.Signal)] == [pids[1]]
    for args, code in [
        ({"task": "a", "signal": "SIGNOPE"}, 400),
        ({"task": "a"}, 400),
        ({"task": "b", "signal": "HUP"}, 409),
        ({"task": "x", "signal": "HUP"}, 404),
    ]:
        reply, out = request(sim, "signal", args)
        assert reply.code == code and not any(isinstance(e, fx.Signal) for e in out)


def test_external_event_fires_every_matching_action() -> None:
    poke = {"type": "external", "name": "poke"}
    sim = world(
        {
            "tasks": {
                "a": sleeper(events=[{**poke, "signal": "HUP"}]),
                "b": {
                    "commands": {"start": ["sleep", "9"], "refresh": ["true"]},
                    "events": [{**poke, "command": "refresh"}],
                },
                "c": sleeper(events=[{"type": "external", "name": "other", "signal": "HUP"}]),
            }
        }
    )
    reply, out = request(sim, "event", {"name": "poke"})
    assert (reply.code, reply.body) == (202, "a\tsignal SIGHUP\nb\tcommand 'refresh'\n")
    assert [e.task for e in out if isinstance(e, fx.Signal)] == ["a"]
    assert [e.name for e in out if isinstance(e, fx.RunCommand)] == ["refresh"]
    reply, _ = request(sim, "event", {"name": "nothing"})
    assert reply.code == 404 and "nothing" in reply.body


def test_start_runs_a_once_task_again() -> None:
    sim = world({"tasks": {"job": sleeper(control="once")}})
    sim.exit(slot_pids(sim, "job")[0], 0)
    assert sim.core.tasks["job"].slots[0].state.value == "done"
    reply, out = request(sim, "start", {"tasks": ("job",)})
    assert (reply.code, reply.body) == (202, "job\tok\n")
    assert any(isinstance(e, fx.Spawn) for e in out)
    reply, _ = request(sim, "start", {"tasks": ("job",)})
    assert reply.body == "job\talready running\n"


@pytest.mark.parametrize(
    "action,args",
    [
        ("control", {"a": None}),
        ("control", {"a": ("off", "wait")}),
        ("control", {3: "off"}),
        ("count", {"a": ""}),
        ("count", {"a": 2.5}),
        ("count", {"a": "1" * 40}),
        ("restart", {"task": ("a",), "instance": -1}),
        ("restart", {"task": {"x": 1}}),
        ("signal", {"task": "a", "signal": 9}),
        ("event", {"name": None}),
        ("start", {"tasks": "a"}),
        ("start", {}),
        ("frobnicate", {}),
        ("control", "not a mapping"),
    ],
)
def test_every_request_gets_exactly_one_reply(action: str, args: Any) -> None:
    sim = world({"tasks": {"a": sleeper()}})
    reply, _ = request(sim, action, args)
    assert 200 <= reply.code < 600 and isinstance(reply.body, str)


def test_requests_while_stopping_are_refused() -> None:
    sim = world({"tasks": {"a": sleeper()}})
    sim.request_stop(reason="test")
    reply, _ = request(sim, "control", {"a": "off"})
    assert (reply.code, reply.body) == (503, "taskforce is stopping\n")


def test_status_health_and_metrics() -> None:
    sim = world(
        {
            "tasks": {
                "a": sleeper(count=2),
                "b": sleeper(requires="gone"),
                "gone": sleeper(control="off"),
                "web": sleeper(roles=["web"]),
            }
        },
        roles=("db",),
    )
    tasks = status.tasks_status(sim.core)
    assert sorted(tasks) == ["a", "b", "gone", "web"], "out-of-scope tasks too"
    assert tasks["web"]["in_scope"] is False and tasks["web"]["state"] == "out_of_scope"
    assert tasks["b"]["waiting_on"] == ["gone (off)"] and tasks["b"]["requires"] == ["gone"]
    slot = tasks["a"]["processes"][0]
    assert {"instance", "state", "pid", "started_at", "restarts", "reason"} <= set(slot)
    assert "exit" not in slot, "only the keys that apply"
    report = status.health(sim.core)
    assert report["status"] == "degraded" and report["problems"] == {
        "b[0]": "waiting on gone (off)"
    }
    sim.advance(5)  # ran stably: restarted at once
    sim.kill(slot_pids(sim, "a")[0], "SIGKILL")
    tasks = status.tasks_status(sim.core)
    assert tasks["a"]["processes"][0]["exit"] == "killed by SIGKILL"
    request(sim, "control", {"b": "off"})
    assert status.health(sim.core)["status"] in ("ok", "degraded")
    text = status.metrics_text(sim.core, {"taskforce_http_requests_total": 5, "up": 1.5})
    line = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"\n]*"\})? -?[0-9.e+]+$')
    for row in text.splitlines():
        assert row.startswith("# HELP ") or row.startswith("# TYPE ") or line.match(row), row
    assert 'taskforce_tasks{state="running"} 1' in text
    assert "taskforce_exits_total 1" in text and "taskforce_restarts_total 1" in text
    assert "taskforce_reload_errors_total 0" in text
    assert "# TYPE taskforce_http_requests_total counter" in text
    assert 'taskforce_task_restarts_total{task="a"} 1' in text
    sim.request_stop()
    assert status.health(sim.core)["status"] == "stopping"


def test_plan_predicts_a_reload_and_changes_nothing() -> None:
    old = {
        "tasks": {
            "keep": sleeper(),
            "argv": sleeper(),
            "gone": sleeper(),
            "more": sleeper(count=1),
            "less": sleeper(count=3),
            "off": sleeper(control="off"),
        }
    }
    new = {
        "tasks": {
            "keep": sleeper(),
            "argv": {"commands": {"start": ["sleep", "200"]}},
            "more": sleeper(count=2),
            "less": sleeper(count=1),
            "off": sleeper(),
            "fresh": sleeper(),
        }
    }
    sim = world(old)
    request(sim, "control", {"keep": "off"})
    before = json.dumps(status.tasks_status(sim.core), sort_keys=True)
    models = len(LIFECYCLE.machine.models)
    config = load_config_text(json.dumps(new), "<new>")
    answer = status.plan(sim.core, config, None)
    assert json.dumps(status.tasks_status(sim.core), sort_keys=True) == before
    assert len(LIFECYCLE.machine.models) == models, "the shadow's slots are detached"
    starts = {(c["task"], tuple(c["instances"])): c["why"] for c in answer["start"]}
    assert starts == {
        ("fresh", (0,)): "new in the config",
        ("more", (1,)): "count 1 -> 2",
        ("off", (0,)): "now in scope",
    }
    restarts = {c["task"]: c["why"] for c in answer["restart"]}
    assert restarts == {"argv": "restarted: config changed: argv"}
    stops = {(c["task"], tuple(c["instances"])): c["why"] for c in answer["stop"]}
    assert stops == {
        ("gone", (0,)): "stopped: removed from the config",
        ("less", (1, 2)): "stopped: count reduced",
    }
    # An operator's override outlasts an edit elsewhere in the config.
    assert answer["unchanged"] == ["keep"]
    # The real reload does what the plan said.
    sim.reload(built(new))
    assert sim.core.tasks["argv"].slots[0].intent == "restart"
    assert sim.core.tasks["gone"].slots[0].intent == "stop"


def test_plan_tells_what_would_wait_from_what_would_start() -> None:
    sim = world({"tasks": {"base": sleeper()}})
    new = {
        "tasks": {
            "base": sleeper(),
            "db": sleeper(start_delay=5),
            "app": sleeper(requires=["db"]),
        }
    }
    config = load_config_text(json.dumps(new), "<new>")
    answer = status.plan(sim.core, config, None)
    assert [(c["task"], c["why"]) for c in answer["start"]] == [("db", "new in the config")]
    assert [(c["task"], c["why"]) for c in answer["wait"]] == [
        ("app", "new in the config; will start after db (not running)")
    ]
    assert answer["unchanged"] == ["base"]
    assert "notes" not in answer, "the control server's answer carries no log lines"
    noted = status.plan(sim.core, config, None, notes=True)["notes"]
    assert any("app" in note for note in noted)


def test_core_modules_import_nothing_of_the_os() -> None:
    forbidden = {"os", "time", "select", "signal", "subprocess", "socket", "logging", "random"}
    root = Path(status.__file__).parent
    for name in ("status.py", "requests.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for module in names:
                assert module.split(".")[0] not in forbidden | {"yaml"}, (name, module)


# =====================================================================
# Listen values and services (shell, no daemon needed).


def test_parse_tcp_listen_values() -> None:
    assert parse_tcp(":9000", False) == ("", 9000)
    assert parse_tcp("127.0.0.1", False) == ("127.0.0.1", 8080)
    assert parse_tcp("example", True) == ("example", 8443)
    assert parse_tcp("[::1]:81", False) == ("::1", 81)
    assert parse_tcp("[::1]", True) == ("::1", 8443)
    for bad, why in [
        ("host:http", "TCP listen port must be an integer"),
        ("::1:80", "brackets"),
        ("[::1", "no closing"),
        (":70000", "out of range"),
    ]:
        with pytest.raises(ListenError, match=why):
            parse_tcp(bad, False)


def test_services_merge_command_line_into_entry_zero() -> None:
    facts = HostFacts(environ={"SOCK": "/run/x.sock"})
    config = {
        "settings": {
            "http": (
                {"listen": "{SOCK}", "timeout": 2},
                {"listen": ":81", "allow_control": True},
            )
        }
    }
    found = services(config, Options(allow_control=True), facts, None, {})
    assert found == [
        Service("/run/x.sock", None, True, 2.0),
        Service(":81", None, True, 3.0),
    ]
    found = services(config, Options(listen="/tmp/y"), facts, None, {})
    assert found[0].listen == "/tmp/y" and found[0].allow_control is False
    assert services({}, Options(allow_control=True), facts, None, {}) == []
    assert services({}, Options(listen=""), facts, None, {}) == [Service(DEFAULT_LISTEN)]
    conditional = {"settings": {"http": ({"listen": {"SOCK": "{SOCK}"}},)}}
    assert services(conditional, Options(), facts, None, {})[0].listen == "/run/x.sock"


def test_ipv6_loopback_listener() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        listener = Listener(Service("[::1]:0"))
    except ListenError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert listener.address.startswith("http://[::1]:")
    finally:
        listener.close()


def test_unix_listener_refuses_a_live_socket_and_a_plain_file(tmp_path: Path) -> None:
    path = str(short_dir(tmp_path) / "s")
    first = Listener(Service(path))
    try:
        with pytest.raises(ListenError, match="another server is listening there"):
            Listener(Service(path))
    finally:
        first.close()
    assert not os.path.exists(path), "removed when closed"
    Path(path).write_text("precious")
    with pytest.raises(ListenError, match="is not a socket; not removing it"):
        Listener(Service(path))
    assert Path(path).read_text() == "precious"


def _bound(path: Path, *, listening: bool = False) -> socket.socket:
    """A Unix socket bound at ``path`` (kept open by the caller, or closed
    at once to leave the file with nobody behind it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    if listening:
        sock.listen(1)
    return sock


def _gone_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(done.stdout)


def test_a_start_removes_staging_sockets_that_a_killed_taskforce_left(tmp_path: Path) -> None:
    """A taskforce SIGKILLed between bind and rename leaves
    ``.taskforce-PID.sock``; the next start (another pid) removes it, and
    only it: never a live instance's, a symlink, a plain file, another
    user's socket, or a name that merely looks alike."""
    folder = short_dir(tmp_path)
    dead = _gone_pid()
    stale = folder / f".taskforce-{dead}.sock"
    _bound(stale).close()
    # A live taskforce between bind and listen: a connect is refused, yet
    # its pid says it is alive and a taskforce.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "taskforce"])
    # Something alive, not a taskforce, that listens on a name of the pattern.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    held: list[socket.socket] = []
    try:
        wait_for(
            lambda: (
                b"taskforce" in Path(f"/proc/{live.pid}/cmdline").read_bytes()
                if os.path.exists("/proc")
                else True
            ),
            what="the live instance's argv",
        )
        live_staging = folder / f".taskforce-{live.pid}.sock"
        held.append(_bound(live_staging))
        listened = folder / f".taskforce-{other.pid}.sock"
        held.append(_bound(listened, listening=True))
        kept = {live_staging.name, listened.name}
        # Names that only look like a staging name, and a plain file.
        for name in (
            f".taskforce-{dead}.sock.old",
            f"taskforce-{dead}.sock",
            ".taskforce-0x1.sock",
            # (a number no pid can be: os.kill could not even be asked)
            ".taskforce-99999999999999999999.sock",
            f".taskforce-{2**31}.sock",
        ):
            _bound(folder / name).close()
            kept.add(name)
        plain = folder / f".taskforce-{_gone_pid()}.sock"
        plain.write_text("not a socket")
        kept.add(plain.name)
        # A symlink of the pattern to a stale socket: neither is touched.
        target = folder / "target.sock"
        _bound(target).close()
        link = folder / f".taskforce-{_gone_pid()}.sock"
        link.symlink_to(target)
        kept |= {link.name, target.name}
        if os.geteuid() == 0:
            theirs = folder / f".taskforce-{_gone_pid()}.sock"
            _bound(theirs).close()
            os.chown(theirs, 4242, 4242)
            kept.add(theirs.name)

        assert clear_stale_staging(str(folder)) == [stale.name]
        assert not stale.exists()
        assert set(os.listdir(folder)) == kept

        # A listener's start does the same, and leaves its own socket only.
        _bound(stale).close()
        listener = Listener(Service(str(folder / "s")))
        try:
            assert not os.path.lexists(stale)
            assert set(os.listdir(folder)) == kept | {"s"}
        finally:
            listener.close()
    finally:
        for sock in held:
            sock.close()
        for proc in (live, other):
            proc.kill()
            proc.wait(10)


# =====================================================================
# The server on a simulated world: no daemon, no process, a real socket.


def serve(server: ControlServer, selector: selectors.BaseSelector, client: Callable[[], T]) -> T:
    """Run ``client`` on a thread while this one turns the server's loop as
    the daemon does; what ``client`` returned."""
    results: list[T] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(client())
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while thread.is_alive():
        assert time.monotonic() < deadline, "the server did not answer"
        server.tick(time.monotonic())
        for key, _ in selector.select(0.01):
            key.data()
    if failures:
        raise failures[0]
    return results[0]


def test_the_server_needs_only_a_shell_and_a_simulation_is_one(tmp_path: Path) -> None:
    """Over a real Unix socket, the status of a simulated world shows its
    processes, a control request changes it, and the status that follows
    says so (an answer cached before the request is not served again)."""
    sim = world({"tasks": {"a": sleeper(count=2)}})
    assert isinstance(sim, Shell)
    sock = str(short_dir(tmp_path) / "s.taskforce")
    selector = selectors.DefaultSelector()
    server = ControlServer(sim, selector, Options(listen=sock, allow_control=True))
    try:
        server.tick(time.monotonic())  # the first turn opens the listener
        before = serve(server, selector, lambda: tasks_json(sock))
        assert [p["pid"] for p in before["a"]["processes"]] == slot_pids(sim, "a")
        assert serve(server, selector, lambda: tasks_json(sock)) == before, "cached"
        answer = serve(server, selector, lambda: form(sock, "/manage/count", {"a": "1"}))
        assert answer == (202, "a\tok\n")
        assert [(e.instance, e.signal) for _, e in sim.signals("a")] == [(1, "SIGTERM")]
        after = serve(server, selector, lambda: tasks_json(sock))
        assert after["a"]["processes"][1]["state"] == "stopping"
    finally:
        server.close()
        selector.close()
    assert not os.path.exists(sock)


# =====================================================================
# Against a real daemon.


def short_dir(tmp_path: Path) -> Path:
    """A folder whose paths fit in a Unix socket address (about 100 bytes)."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="tf", dir="/tmp"))


def connection(address: str, ca: str | None = None) -> http.client.HTTPConnection:
    if address.startswith("https://"):
        host, port = address[8:].rsplit(":", 1)
        context = ssl.create_default_context(cafile=ca)
        return http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    return UnixConnection(address)


def call(
    address: str,
    target: str,
    method: str = "GET",
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    ca: str | None = None,
) -> tuple[int, dict[str, str], str]:
    conn = connection(address, ca)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, target, body=data, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text
    finally:
        conn.close()


def form(address: str, target: str, fields: dict[str, str]) -> tuple[int, str]:
    from urllib.parse import urlencode

    code, _, text = call(
        address,
        target,
        "POST",
        urlencode(fields),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    return code, text


def tasks_json(address: str, ca: str | None = None) -> dict[str, Any]:
    code, _, text = call(address, "/status/tasks", ca=ca)
    assert code == 200
    return json.loads(text)


def raw(path: str, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes on the Unix socket; everything the server says back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(wait)
        sock.connect(path)
        try:
            sock.sendall(data)
        except OSError:
            pass
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


FAST = {"stable_after": 0.05}


def start_daemon(
    daemon: Daemon,
    defs: dict[str, Any],
    *extra: str,
    allow: bool = True,
    settings: dict[str, Any] | None = None,
) -> str:
    """Start ``daemon`` with a control socket; its path, once it answers."""
    sock = str(short_dir(daemon.root) / "s.taskforce")
    daemon.write_config({"settings": {**FAST, **(settings or {})}, "tasks": defs})
    daemon.start("-w", sock, *(["-A"] if allow else []), *extra)
    wait_for(lambda: os.path.exists(sock) and answers(sock), what="the control socket")
    return sock


def answers(address: str) -> bool:
    try:
        return call(address, "/status/version")[0] == 200
    except OSError:
        return False


def test_the_control_socket_answers_as_soon_as_it_exists(daemon: Daemon) -> None:
    # Bound under a staging name and renamed into place once it listens: a
    # client that sees the path is never refused, and nothing else is left.
    folder = short_dir(daemon.root)
    sock = str(folder / "s.taskforce")
    daemon.write_config({"settings": FAST, "tasks": {}})
    daemon.start("-w", sock, "-A")
    wait_for(lambda: os.path.exists(sock), what="the control socket")
    assert call(sock, "/status/version")[0] == 200  # no ConnectionRefusedError
    assert not [name for name in os.listdir(folder) if name.startswith(".taskforce-")]
    assert os.stat(sock).st_mode & 0o777 == 0o600


def test_a_reload_the_core_refuses_is_answered_as_rejected(tmp_path: Path) -> None:
    """A config read well but refused by the core (here: the first one,
    while the roles file is missing) is not "applied": the answer says it
    was rejected, and why, as tfctl reports it."""
    sim = Simulation(start=1.0, host="h", fqdn="h")
    sim.roles_missing = "/etc/tf_roles"
    sim.boot(built({"tasks": {"a": sleeper()}}), environ={"PATH": "/bin"})
    assert not sim.alive(), "nothing was started"
    sock = str(short_dir(tmp_path) / "s.taskforce")
    selector = selectors.DefaultSelector()
    server = ControlServer(sim, selector, Options(listen=sock, allow_control=True))
    try:
        server.tick(time.monotonic())  # the first turn opens the listener
        code, headers, text = serve(server, selector, lambda: call(sock, "/manage/reload", "POST"))
        assert code == 202
        assert headers["x-taskforce-reload"] == "rejected: roles file /etc/tf_roles not found"
        assert "roles file /etc/tf_roles not found" in text
        assert not sim.alive()
        # With the file back, the same request is applied.
        sim.roles_missing = None
        code, headers, _ = serve(server, selector, lambda: call(sock, "/manage/reload", "POST"))
        assert headers["x-taskforce-reload"] == "applied" and sim.alive()
    finally:
        server.close()
        selector.close()


def test_status_endpoints_over_a_unix_socket(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a", count=2), "off": task(m, "off", control="off")})
    daemon.wait_pids("a", 2)
    assert os.stat(sock).st_mode & 0o777 == 0o600
    code, headers, text = call(sock, "/status/version")
    info = json.loads(text)
    assert code == 200 and headers["content-type"] == "application/json"
    assert headers["server"].startswith("taskforce/")
    assert set(info) == {"taskforce", "python", "platform"} and "system" in info["platform"]
    assert "release" in info["platform"], "allow_control adds platform and release"
    code, _, text = call(sock, "/status/config")
    assert code == 200 and set(json.loads(text)["tasks"]) == {"a", "off"}
    wait_for(lambda: all("pid" in s for s in tasks_json(sock)["a"]["processes"]), what="pids")
    tasks = tasks_json(sock)
    assert set(tasks) == {"a", "off"}
    slot = tasks["a"]["processes"][0]
    assert slot["pid"] in daemon.pids("a") and slot["state"] == "ready"
    assert abs(slot["started_t"] - time.time()) < 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", slot["started"])
    assert tasks["off"] == {**tasks["off"], "control": "off", "processes": [], "state": "off"}
    code, _, text = call(sock, "/status/tasks?indent=4")
    assert code == 200 and text.startswith('{\n    "a"') and text.endswith("}\n")
    code, _, text = call(sock, "/status/tasks?fmt=yaml")
    assert (code, text) == (415, 'Invalid fmt request "yaml", supported formats are: json\n')
    assert call(sock, "/status/tasks?indent=%C2%B2")[0] == 400
    code, _, text = call(sock, "/status/tasks?fmt=JSON", "POST")
    assert code == 200, "GET and POST both work; fmt is case-insensitive"
    code, _, text = call(sock, "/status/health")
    assert code == 200 and json.loads(text)["status"] == "ok"
    code, headers, text = call(sock, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'taskforce_task_running{task="a"} 2' in text
    code, headers, text = call(sock, "/status/version", "HEAD")
    assert code == 200 and text == "" and int(headers["content-length"]) > 0
    code, _, text = call(sock, "/nothing/here?x=1")
    assert (code, text) == (404, "/nothing/here?x=1 not found")
    code, _, text = call(sock, "/status/version", "DELETE")
    assert code == 405
    # Keep-alive: several requests on one connection.
    conn = UnixConnection(sock)
    for _ in range(3):
        conn.request("GET", "/status/health")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["healthy"]
    conn.close()


def test_manage_needs_allow_control(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")}, allow=False)
    (pid,) = daemon.wait_pids("a", 1)
    for path in ("/manage/control?a=off", "/manage/stop", "/manage/nonsense"):
        code, _, text = call(sock, path)
        assert (code, text) == (403, "Control not permitted on this path\n")
    assert "release" not in json.loads(call(sock, "/status/version")[2])["platform"]
    assert daemon.pids("a") == {pid} and daemon.proc is not None and daemon.proc.poll() is None


def test_the_original_control_shape(daemon: Daemon) -> None:
    """control off/wait, a count change, reload, reset and stop, with the
    original's codes and texts."""
    m = daemon.marker
    pool = task(m, "pool", args=("slot-{Task_instance}",), count=2)
    sock = start_daemon(daemon, {"web": task(m, "web"), "pool": pool})
    (web,) = daemon.wait_pids("web", 1)
    daemon.wait_pids("pool", 2)
    assert form(sock, "/manage/control", {"web": "off"}) == (202, "web\tok\n")
    wait_for(lambda: not daemon.pids("web"), what="web stopped")
    shown = tasks_json(sock)["web"]
    assert shown["control"] == "off" and shown["overrides"] == {"control": "off"}
    assert call(sock, "/manage/control?web=off")[::2] == (200, "web\tno change\n")
    assert call(sock, "/manage/control?web=wait")[::2] == (202, "web\tok\n")
    daemon.wait_pids("web", 1)
    assert call(sock, "/manage/count?pool=3")[::2] == (202, "pool\tok\n")
    pids = daemon.wait_pids("pool", 3)
    slots = sorted(daemon.processes("pool")[pid].split()[-1] for pid in pids)
    assert slots == ["slot-0", "slot-1", "slot-2"]
    assert call(sock, "/manage/count?pool=3")[::2] == (200, "pool\tno change\n")
    code, headers, text = call(sock, "/manage/reload")
    assert (code, text) == (202, "Taskforce config reload initiated\n")
    assert headers["x-taskforce-reload"] == "applied"
    daemon.wait_pids("pool", 2)  # the reload ended the count override
    assert tasks_json(sock)["pool"]["overrides"] == {}
    before = daemon.pids("web")
    code, _, text = call(sock, "/manage/reset")
    assert (code, text) == (202, "Taskforce reset initiated\n")
    wait_for(lambda: (daemon.pids("web") - before) and answers(sock), what="taskforce reset")
    assert daemon.proc is not None and daemon.proc.poll() is None, "re-executed in place"
    code, _, text = call(sock, "/manage/stop")
    assert (code, text) == (202, "Taskforce exit initiated\n")
    assert daemon.proc.wait(20) == 0
    assert not os.path.exists(sock), "the socket is removed at exit"
    assert web not in daemon.pids("web")


def test_new_manage_endpoints(daemon: Daemon) -> None:
    m = daemon.marker
    hups = daemon.root / "hups"
    poked = daemon.root / "poked"
    loop = f"trap 'echo hup >> {hups}' HUP; while :; do sleep 0.05; done"
    defs = {
        "a": task(m, "a", count=2),
        "h": shell_task(m, "h", loop),
        "p": {
            "commands": {
                "start": [sys.executable, "-c", "import time; time.sleep(1000)", m, "p"],
                "poke": ["sh", "-c", f"echo poked >> {poked}"],
            },
            "events": [{"type": "external", "name": "poke", "command": "poke"}],
        },
        "job": shell_task(m, "job", "exit 0", control="once"),
    }
    sock = start_daemon(daemon, defs)
    a0, a1 = sorted(daemon.wait_pids("a", 2))
    daemon.wait_pids("h", 1)
    daemon.wait_pids("p", 1)
    slot1 = next(s for s in tasks_json(sock)["a"]["processes"] if s["instance"] == 1)
    code, text = form(sock, "/manage/restart", {"task": "a", "instance": "1"})
    assert (code, text) == (202, "a[1]\trestarting\n")
    wait_for(
        lambda: len(daemon.pids("a")) == 2 and slot1["pid"] not in daemon.pids("a"),
        what="a[1] restarted",
    )
    again = next(s for s in tasks_json(sock)["a"]["processes"] if s["instance"] == 1)
    assert again["reason"] == "restarted: control request" and again["restarts"] == 1
    code, text = form(sock, "/manage/signal", {"task": "h", "signal": "hup"})
    assert code == 200 and "sent SIGHUP" in text
    wait_for(lambda: hups.exists() and "hup" in hups.read_text(), what="SIGHUP trapped")
    code, text = form(sock, "/manage/event", {"name": "poke"})
    assert (code, text) == (202, "p\tcommand 'poke'\n")
    wait_for(lambda: poked.exists(), what="the poke command")
    wait_for(lambda: tasks_json(sock)["job"]["state"] == "done", what="job done")
    code, _, text = call(sock, "/manage/start?task=job")
    assert (code, text) == (202, "job\tok\n")
    config = json.dumps({"tasks": {"a": task(m, "a", count=3), "new": task(m, "new")}})
    code, _, text = call(sock, "/manage/plan", "POST", config, {"Content-Type": "text/yaml"})
    plan = json.loads(text)
    assert code == 200
    assert {(c["task"], tuple(c["instances"])) for c in plan["start"]} == {
        ("a", (2,)),
        ("new", (0,)),
    }
    # job may still be running its second run: then it is stopped too.
    assert {"h", "p"} <= {c["task"] for c in plan["stop"]} <= {"h", "p", "job"}
    code, _, text = call(sock, "/manage/plan", "POST", "tasks: {x: {commands: {}}}")
    assert code == 400 and "<posted config>:1: tasks.x.commands" in text
    assert call(sock, "/manage/plan", "POST")[0] == 400
    assert daemon.pids("new") == set(), "plan applied nothing"
    assert call(sock, "/manage/whatever?a=1")[::2] == (
        404,
        "Unknown control path -- /manage/whatever?a=1\n",
    )


def test_a_posted_alias_bomb_is_refused_and_supervision_goes_on(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")})
    (a,) = daemon.wait_pids("a", 1)
    for deep in (False, True):
        started = time.monotonic()
        code, _, text = call(
            sock,
            "/manage/plan",
            "POST",
            alias_bomb(["x"], deep=deep),
            {"Content-Type": "text/yaml"},
        )
        assert time.monotonic() - started < 5
        assert code == 400, text
        assert text.startswith("<posted config>:")
        assert ": tasks.a.commands.start[1].NOT_SET[" in text
        assert "aliases expand it to more than 1,000,000 values" in text
    os.kill(a, signal.SIGKILL)
    wait_for(lambda: daemon.pids("a") - {a}, what="a replaced after the bombs")


def test_a_long_plan_is_checked_off_the_loop(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")})
    (a,) = daemon.wait_pids("a", 1)
    # Legal, and slow to check: 700 aliases of a 700-value list in a
    # conditional (490,000 values, within the budget).
    values = "[" + ", ".join(["v"] * 700) + "]"
    aliases = ", ".join(["*v"] * 699)
    big = f"tasks:\n  a: {{commands: {{start: [x, {{NOT_SET: [&v {values}, {aliases}]}}]}}}}\n"
    answer: list[Any] = []

    def post() -> None:
        deadline = time.monotonic() + 60
        while not answer or (answer[-1][0] == 503 and time.monotonic() < deadline):
            conn = UnixConnection(sock, timeout=120)
            try:
                conn.request("POST", "/manage/plan", body=big.encode())
                response = conn.getresponse()
                answer.append((response.status, response.read().decode()))
            finally:
                conn.close()

    poster = threading.Thread(target=post)
    poster.start()
    try:
        # Meanwhile the loop supervises and answers at once; a second plan
        # is told to come back later.
        wait_for(lambda: call(sock, "/manage/plan", "POST", "tasks: {}")[0] == 503, timeout=5)
        os.kill(a, signal.SIGKILL)
        started = time.monotonic()
        wait_for(lambda: daemon.pids("a") - {a}, what="a replaced during the plan")
        replaced = time.monotonic() - started
        assert call(sock, "/status/health")[0] == 200
        assert poster.is_alive(), "the plan was still being checked"
        assert replaced < 1.0, f"a replaced in {replaced:.3f}s"
    finally:
        poster.join(120)
    assert answer and answer[-1][0] == 200, answer
    assert json.loads(answer[-1][1])["restart"][0]["task"] == "a"


def test_bad_parameters_and_traversal_change_nothing(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")})
    (pid,) = daemon.wait_pids("a", 1)
    cases = [
        ("/manage/control?../../etc/passwd=off", 404, "../../etc/passwd\tnot found\n"),
        ("/manage/control?a=off&b%2F..=wait", 404, "a\tok\nb/..\tnot found\n"),
        ("/manage/count?a=%2e%2e", 404, 'a\tbad count ".."\n'),
        ("/manage/restart?task=../a", 404, "../a: not found\n"),
        ("/manage/restart?task=a&instance=../0", 400, "bad instance '../0'\n"),
        ("/manage/signal?task=a&signal=../9", 400, "bad signal '../9'\n"),
        ("/manage/signal?task=a", 400, "missing parameter 'signal'\n"),
        ("/status/../manage/stop", 404, "/status/../manage/stop not found"),
        ("/manage/../manage/stop", 404, "Unknown control path -- /manage/../manage/stop\n"),
        ("/manage/event?name=%00", 404, "no task in scope has an external event named '\\x00'\n"),
    ]
    for target, code, text in cases:
        assert call(sock, target)[::2] == (code, text), target
    assert daemon.pids("a") == {pid}, "nothing changed"
    assert tasks_json(sock)["a"]["overrides"] == {}
    code, _, text = call(
        sock, "/manage/control", "POST", "a=%zz&&=", {"Content-Type": "multipart/form-data"}
    )
    assert code == 400 and text.startswith("Parse error -- ")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_a_multipart_form_gives_its_fields_under_the_query() -> None:
    from taskforce.control.messages import Request
    from taskforce.control.params import request_params

    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="task"\r\n\r\n'
        b"web\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="signal"\r\n\r\n'
        b"HUP\r\n"
        b"--XyZ--\r\n"
    )
    request = Request(
        method="POST",
        target="/manage/signal?signal=TERM",
        path="/manage/signal",
        query="signal=TERM",
        headers={"content-type": "multipart/form-data; boundary=XyZ"},
        body=body,
    )
    assert request_params(request) == {"task": ["web"], "signal": ["TERM"]}


def test_socket_permissions_stale_and_foreign_files(daemon: Daemon, tmp_path: Path) -> None:
    m = daemon.marker
    folder = short_dir(tmp_path)
    stale = str(folder / "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(stale)  # the file stays; nobody listens
    plain = folder / "plain"
    plain.write_text("not a socket")
    daemon.write_config(
        {
            "settings": {"http": [{"listen": stale}, {"listen": str(plain)}]},
            "tasks": {"a": task(m, "a")},
        }
    )
    daemon.start()
    daemon.wait_pids("a", 1)
    wait_for(lambda: answers(stale), what="the stale socket replaced")
    assert os.stat(stale).st_mode & 0o777 == 0o600
    daemon.wait_log(f"{plain} exists and is not a socket; not removing it")
    assert plain.read_text() == "not a socket"
    assert daemon.stop() == 0
    assert not os.path.exists(stale) and plain.read_text() == "not a socket"


def test_settings_http_follows_a_reload(daemon: Daemon, tmp_path: Path) -> None:
    m = daemon.marker
    folder = short_dir(tmp_path)
    first, second = str(folder / "one.sock"), str(folder / "two.sock")
    config = {"settings": {"http": [{"listen": first}]}, "tasks": {"a": task(m, "a")}}
    daemon.write_config(config)
    daemon.start()
    wait_for(lambda: answers(first), what="first socket")
    assert call(first, "/manage/reload")[0] == 403, "allow_control defaults to false"
    config["settings"] = {"http": [{"listen": second, "allow_control": True}]}
    daemon.write_config(config)
    wait_for(lambda: answers(second), what="second socket")
    wait_for(lambda: not os.path.exists(first), what="first socket removed")
    assert call(second, "/manage/reload")[0] == 202


def test_a_listener_that_fails_is_retried(daemon: Daemon, tmp_path: Path) -> None:
    m = daemon.marker
    folder = short_dir(tmp_path) / "later"
    sock = str(folder / "s.sock")
    daemon.write_config({"tasks": {"a": task(m, "a")}})
    daemon.start("-w", sock)
    daemon.wait_pids("a", 1)
    daemon.wait_log("cannot listen: No such file or directory; retrying every 5s")
    folder.mkdir()
    wait_for(lambda: answers(sock), timeout=10, what="the retried listener")


def _slow_clients(path: str, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.sendall(b"GET /status/tasks HTTP/1.1\r\nHost: x\r\n")  # never finished
        held.append(sock)
    return held


def test_hostile_clients_never_stall_supervision(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(
        daemon,
        {f"t{i}": task(m, f"t{i}") for i in range(3)},
        settings={"http": [{"timeout": 1.0}]},
    )
    victims = {f"t{i}": daemon.wait_pids(f"t{i}", 1) for i in range(3)}
    held = _slow_clients(sock, 40)
    stop = threading.Event()
    errors: list[str] = []

    def flood() -> None:
        junk = [
            b"\x00\xff garbage \r\n\r\n",
            b"GET /status/tasks HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
            b"POST /manage/control HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /status/tasks HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        ]
        while not stop.is_set():
            for data in junk:
                try:
                    raw(sock, data, wait=2.0)
                except OSError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for name, pids in victims.items():
            (pid,) = pids
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda n=name, p=pid: daemon.pids(n) - {p}, timeout=5, what=f"{name} back")
            took = time.monotonic() - started
            assert took < 1.0, f"{name} took {took:.2f}s to come back under a flood"
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for held_sock in held:
            held_sock.close()
    assert not errors, errors[:3]
    assert answers(sock)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "Traceback" not in daemon.log_text()


def test_random_bytes_never_hurt_the_daemon(daemon: Daemon) -> None:
    import random

    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")}, settings={"http": [{"timeout": 0.3}]})
    pieces = [
        b"GET ",
        b"POST ",
        b"/status/tasks",
        b"/manage/control?a=",
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b"Host: x\r\n",
        b"Content-Length: 5\r\n",
        b"\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Expect: 100-continue\r\n",
        b"0\r\n\r\n",
        b"abcde",
        b"\x00\xff",
        b"\n",
        b"Connection: close\r\n",
        b"%%%",
    ]
    chooser = random.Random(5)
    for _ in range(150):
        data = b"".join(chooser.choice(pieces) for _ in range(chooser.randint(1, 12)))
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(2)
            client.connect(sock)
            try:
                client.sendall(data)
                if chooser.random() < 0.5:
                    client.shutdown(socket.SHUT_WR)
                client.recv(65536)
            except OSError:
                pass
    assert answers(sock)
    assert "Traceback" not in daemon.log_text()


def test_malformed_and_oversized_requests_get_clear_codes(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")}, settings={"http": [{"timeout": 0.5}]})
    big_head = b"GET /status/tasks HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw(sock, big_head).startswith(b"HTTP/1.1 431 ")
    assert raw(sock, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(sock, b"GET /status/tasks HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"POST /manage/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
    assert raw(sock, huge).startswith(b"HTTP/1.1 413 ")
    chunked = (
        b"POST /manage/control HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"10000\r\n"
        + b"a" * 65536
        + b"\r\n"
        + b"10\r\n"
        + b"a" * 16
        + b"\r\n0\r\n\r\n"
    )
    assert raw(sock, chunked).startswith(b"HTTP/1.1 413 ")
    # A slow client that never finishes its request is told, then dropped.
    started = time.monotonic()
    answer = raw(sock, b"GET /status/tasks HTTP/1.1\r\nHost: x\r\n", wait=5)
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3
    # An idle keep-alive connection is closed after the timeout.
    with socket.socket(socket.AF_UNIX) as idle:
        idle.settimeout(5)
        idle.connect(sock)
        assert idle.recv(10) == b""
    # Pipelined requests are answered in order.
    two = b"GET /status/health HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    assert (
        raw(sock, two + b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").count(
            b"HTTP/1.1 "
        )
        == 3
    )
    assert answers(sock)


def test_fifty_concurrent_clients(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {f"t{i}": task(m, f"t{i}", count=2) for i in range(10)})
    for i in range(10):
        daemon.wait_pids(f"t{i}", 2)
    failures: list[str] = []

    def client() -> None:
        try:
            conn = UnixConnection(sock)
            for _ in range(10):
                conn.request("GET", "/status/tasks")
                response = conn.getresponse()
                data = json.loads(response.read())
                if response.status != 200 or len(data) != 10:
                    failures.append(f"{response.status} {len(data)}")
            conn.close()
        except Exception as exc:  # noqa: BLE001 - collect, report below
            failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures[:5]
    assert "Traceback" not in daemon.log_text()
    code, _, text = call(sock, "/metrics")
    requests = re.search(r"^taskforce_http_requests_total (\d+)$", text, re.M)
    assert requests is not None and int(requests.group(1)) >= 500


def make_certificate(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, key included; skips without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    key, cert = folder / "key.pem", folder / "cert.pem"
    done = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {done.stderr.strip()[:200]}")
    both = folder / "both.pem"
    both.write_text(cert.read_text() + key.read_text())
    return both


#: The bearer token of the TCP daemons here (control over TCP needs one).
TOKEN = "s3cret-token-of-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_tls_daemon(daemon: Daemon, defs: dict[str, Any]) -> tuple[str, str]:
    """A daemon on loopback TCP with TLS; (https://127.0.0.1:PORT, the CA file)."""
    pem = make_certificate(daemon.root)
    token_file = daemon.root / "token"
    token_file.write_text(TOKEN + "\n")
    settings = {**FAST, "http": [{"token_file": str(token_file)}]}
    daemon.write_config({"settings": settings, "tasks": defs})
    daemon.start("-w", "127.0.0.1:0", "-c", str(pem), "-A")
    found = wait_for(
        lambda: re.search(r"listening on (https://127\.0\.0\.1:\d+)", daemon.log_text()),
        what="the TLS listener",
    )
    return found.group(1), str(pem)


def test_tls_on_loopback(daemon: Daemon) -> None:
    m = daemon.marker
    address, ca = start_tls_daemon(daemon, {"a": task(m, "a")})
    (pid,) = daemon.wait_pids("a", 1)
    port = int(address.rsplit(":", 1)[1])
    # A client that connects and never shakes hands holds up nobody.
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        code, headers, text = call(address, "/status/version", ca=ca)
        assert code == 200 and json.loads(text)["taskforce"]
        wait_for(lambda: "pid" in tasks_json(address, ca)["a"]["processes"][0], what="a's pid")
        assert tasks_json(address, ca)["a"]["processes"][0]["pid"] == pid
        code, _, text = call(address, "/manage/control?a=off", headers=AUTH, ca=ca)
        assert (code, text) == (202, "a\tok\n")
        wait_for(lambda: not daemon.pids("a"), what="a stopped")
        code, _, text = call(address, "/manage/restart?task=a", headers=AUTH, ca=ca)
        assert (code, text) == (409, "a: nothing to restart (control is off)\n")
        code, _, text = call(address, "/nope", ca=ca)
        assert (code, text) == (404, "/nope not found")
        # Plain HTTP on the TLS port is refused without harm.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /status/version HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert not plain.recv(100).startswith(b"HTTP/1.1 200")
            except ConnectionResetError:
                pass
        assert call(address, "/status/health", ca=ca)[0] in (200, 503)
    finally:
        silent.close()
    code, _, text = call(address, "/manage/stop", headers=AUTH, ca=ca)
    assert (code, text) == (202, "Taskforce exit initiated\n")
    assert daemon.proc is not None and daemon.proc.wait(20) == 0


def test_split_slot_reads_both_spellings() -> None:
    from taskforce.core.requests import split_slot

    assert split_slot("web[0]") == ("web", "0")
    assert split_slot("web:12") == ("web", "12")
    assert split_slot("a:b:1") == ("a:b", "1")
    for plain in ("web", "web:", "web[x]", ":1", "[1]", "web:-1", "web[0", "web:1234567890"):
        assert split_slot(plain) is None, plain
