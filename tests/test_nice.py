"""A task's ``nice``: checked where it is written, built into its spec, set
in the real process, and a change of it restarts that task and no other.

``nice`` is also the example of an attribute declared once (in
``ProcessSpec``): these tests check the parts derived from that declaration
-- the schema's key, the Spawn, the restart reason, the keyword arguments of
``process.start`` -- as well as the behaviour.
"""

from __future__ import annotations

import inspect
import os

import pytest
from daemon_harness import Daemon, task, wait_for
from test_limits import built, errors

from taskforce import process
from taskforce.config import TASK_KEYS
from taskforce.core import effects as fx
from taskforce.core.codec import encode, matches
from taskforce.core.model import START_OPTIONS


def niceness(pid: int) -> int:
    """``pid``'s nice value, as the kernel says (any Unix)."""
    return os.getpriority(os.PRIO_PROCESS, pid)


# ---------------------------------------------------------------- config


def test_nice_is_a_task_key_built_into_the_spec() -> None:
    assert "nice" in TASK_KEYS
    specs = built(
        """
        defines: {LEVEL: "7"}
        tasks:
          a: {commands: {start: [x]}, nice: 5}
          b: {commands: {start: [x]}, nice: -20}
          c: {commands: {start: [x]}, nice: "{LEVEL}"}
          d: {commands: {start: [x]}, nice: {LEVEL: 3}}
          e: {commands: {start: [x]}}
        """
    )
    assert [specs[name].nice for name in "abcde"] == [5, -20, 7, 3, None]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20", "tf.conf:3: tasks.a.nice: expected a whole number from -20 to 19, got 20"),
        ("-21", "tf.conf:3: tasks.a.nice: expected a whole number from -20 to 19, got -21"),
        ("1.5", "tasks.a.nice: expected a whole number from -20 to 19, got 1.5"),
        ("lots", "tasks.a.nice: expected a whole number from -20 to 19, got 'lots'"),
        ("[1, 2]", "tasks.a.nice: expected a single value, got a list"),
        ("on", "tasks.a.nice: expected a whole number from -20 to 19, got True (hint: quote it"),
        ("010", "tasks.a.nice: YAML reads 010 as the number 8"),
    ],
)
def test_a_bad_nice_is_an_error_naming_file_line_and_key(value: str, expected: str) -> None:
    found = errors(f"tasks:\n  a:\n    nice: {value}\n    commands: {{start: [x]}}\n")
    assert any(expected in err for err in found), found


def test_a_nice_tag_that_expands_badly_is_located_at_the_key() -> None:
    found = errors(
        """
        defines: {LEVEL: "high"}
        tasks:
          a:
            commands: {start: [x]}
            nice: "{LEVEL}"
        """
    )
    assert found == [
        "tf.conf:6: tasks.a.nice: expected a whole number from -20 to 19, got 'high'"
    ], found


# ------------------------------------------------- derived from ProcessSpec


def test_a_nice_change_is_a_process_change_named_in_the_reason() -> None:
    first = built("tasks: {a: {commands: {start: [x]}, nice: 1}}")["a"]
    second = built("tasks: {a: {commands: {start: [x]}, nice: 2}}")["a"]
    assert first != second
    assert first.diff(second) == "nice"


def test_spawn_carries_nice_and_start_takes_every_option() -> None:
    spec = built("tasks: {a: {commands: {start: [x]}, nice: 4, pidfile: /p}}")["a"]
    spawn = fx.Spawn.of(spec, task="a", instance=0, generation=1)
    assert spawn.nice == 4 and spawn.start_options()["nice"] == 4
    assert spawn.pidfile is None, "the pidfile is the core's, never the spawn's"
    # Every option a Spawn passes is a keyword of process.start.
    accepted = inspect.signature(process.start).parameters
    assert set(START_OPTIONS) <= set(accepted), set(START_OPTIONS) - set(accepted)


def test_a_spawn_recorded_before_nice_existed_still_matches() -> None:
    spawn = fx.Spawn(task="a", instance=0, generation=1, argv=("x",), env={"A": "1"})
    recorded = encode(spawn)
    del recorded["nice"]
    assert matches(spawn, recorded)
    assert not matches(fx.Spawn(task="a", instance=0, generation=1, argv=("x",), nice=3), recorded)
    recorded["bogus"] = 1
    assert not matches(spawn, recorded)


# ---------------------------------------------------------- real processes


def test_the_running_process_has_its_niceness(daemon: Daemon) -> None:
    m = daemon.marker
    # Raising one's niceness needs no privilege; lowering it needs root.
    low = -5 if os.geteuid() == 0 else 0
    daemon.write_config(
        {
            "tasks": {
                "kind": task(m, "kind", nice=10),
                "eager": task(m, "eager", nice=low),
                "plain": task(m, "plain"),
            }
        }
    )
    daemon.start()
    (kind,) = daemon.wait_pids("kind", 1)
    (eager,) = daemon.wait_pids("eager", 1)
    (plain,) = daemon.wait_pids("plain", 1)
    assert niceness(kind) == 10
    assert niceness(eager) == low
    assert niceness(plain) == niceness(daemon.pid), "a task without nice inherits"


def test_changing_nice_restarts_that_task_alone_saying_why(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config({"tasks": {"a": task(m, "a", nice=3), "b": task(m, "b", nice=3)}})
    daemon.start()
    (old,) = daemon.wait_pids("a", 1)
    (other,) = daemon.wait_pids("b", 1)
    daemon.write_config({"tasks": {"a": task(m, "a", nice=6), "b": task(m, "b", nice=3)}})
    (pid,) = wait_for(lambda: daemon.pids("a") - {old}, what="a restarted")
    assert niceness(pid) == 6
    daemon.wait_log("a[0] started as pid")
    wait_for(lambda: "config changed: nice" in daemon.log_text(), what="the reason logged")
    reasons = [line for line in daemon.log_text().splitlines() if "config changed" in line]
    assert reasons and all("config changed: nice" in line for line in reasons), reasons
    assert all(line.count("config changed: nice") == 1 for line in reasons)
    assert not any("config changed: nice," in line for line in reasons), reasons
    assert daemon.pids("b") == {other}, "b's config did not change"
