"""Fuzzing the daemon's inputs: config text, roles text, control requests.

What must hold for *any* input:

- a config text either loads or raises ``taskforce.config.ConfigError``
  naming the file, with a line whenever the problem is in the text (a YAML
  syntax error, or a key path); a config that loads is accepted by the core;
- a roles text either parses or raises ``ConfigError`` with file and line,
  the line being the one (counted by newlines) that holds the mistake;
- a control request, from raw bytes on a connection down to a parsed
  ``Request`` handed to ``taskforce.control.api.handle``, gets a response with
  a status code, never raises, and never makes the server log a failure.

The control side runs in-process against the real ``ControlServer`` and
``Connection`` on a ``socketpair``, serving a ``Simulation`` as its shell
(``taskforce.control.shell.Shell``) in place of the daemon: no process is
started and no socket file is made.

Generated configs keep ``count`` small on purpose: a huge ``count`` is a
known bug (see ``test_a_huge_count_is_a_config_error``), and drawing it
here would exhaust the machine's memory rather than fail a test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from taskforce.config import (
    EVENT_KEYS,
    HTTP_KEYS,
    SETTINGS_KEYS,
    TASK_KEYS,
    TOP_KEYS,
    ConfigError,
    load_config,
    load_config_text,
    load_roles,
    parse_roles,
)
from taskforce.control.api import MANAGE, STATUS, handle
from taskforce.control.http import REASONS, Connection, Deferred, Request, Response
from taskforce.control.listen import Listener, Service
from taskforce.control.options import Options
from taskforce.control.server import ControlServer
from taskforce.control.stream import StreamRequest
from taskforce.core.model import HostFacts
from taskforce.simulator import Simulation

FACTS = HostFacts(environ={"PATH": "/usr/bin:/bin", "HOME": "/root"}, host="h", fqdn="h.x", pid=1)
SOURCE = "<fuzz>"
#: What a line break is to YAML (and so to the line numbers it reports).
YAML_BREAKS = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
#: Errors about the whole document, which have no line to point at.
WHOLE_FILE = (
    "the config must be a mapping",
    "the config has no 'tasks'",
    "the YAML is nested too deeply or refers to itself",
    "the chain of requires is too deep to check",
)
#: Known bug (see test_a_control_character_error_names_its_line): PyYAML's
#: reader errors carry no mark, so these have no line yet.
KNOWN_UNLOCATED = ("YAML syntax error: unacceptable character",)

# =====================================================================
# Config text


ROLE_SETS = st.sampled_from([None, (), ("web",), ("db", "web"), ("a.b-c_1",)])

texts = st.one_of(
    st.sampled_from(
        [
            "",
            "x",
            "sleep",
            "/bin/sleep",
            "{Task_instance}",
            "{nope}",
            "{x}",
            "{",
            "}",
            "off",
            "on",
            "yes",
            "no",
            "Off",
            "NO",
            "y",
            "~",
            "null",
            "022",
            "0755",
            "0o22",
            "1:30",
            "1.10",
            "64M",
            "10G",
            "unlimited",
            "SIGHUP",
            "hup",
            "KILL",
            "9",
            "wait",
            "once",
            "event",
            "suspend",
            "nowait",
            "adopt",
            "log",
            "inherit",
            "discard",
            "clean",
            "web",
            "db",
            "root",
            "nobody",
            "self",
            "file_change",
            "python",
            "stop",
            "restart",
            "external",
            "start",
            "/tmp/fuzz.sock",
            ":0",
            "[::1]:1",
            "-",
            "a b",
            "tab\there",
            "#",
            " # c",
            "é",
            "\u2028",
            "\x85",
            "\ufeff",
        ]
    ),
    st.text(max_size=12),
)
small_ints = st.integers(-3, 40)
#: Anywhere but ``count`` (see the module docstring).
huge_numbers = st.sampled_from(
    [
        2**31,
        2**63,
        2**64 + 1,
        10**30,
        -(10**30),
        1e308,
        -1e308,
        1e-320,
        float("inf"),
        float("-inf"),
        float("nan"),
        3_000_000,
        2_592_000.5,
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    small_ints,
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    texts,
)
plain_keys = st.one_of(
    st.sampled_from(TOP_KEYS + TASK_KEYS + SETTINGS_KEYS + HTTP_KEYS + EVENT_KEYS),
    st.sampled_from(["bogus", "task", "Count", "command", "start", "a", "b", "web", "", "<<"]),
    texts,
)
#: Keys YAML reads as something else than a string.
odd_keys = st.one_of(st.integers(-5, 5), st.booleans(), st.none(), st.floats(width=16))


def anything(leaves: st.SearchStrategy[Any] = scalars) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(plain_keys, odd_keys), inner, max_size=4),
        ),
        max_leaves=12,
    )


argv = st.lists(st.one_of(texts, small_ints), min_size=0, max_size=4)


def value_for(key: str) -> st.SearchStrategy[Any]:
    """Values that are often right for ``key``, and sometimes wildly wrong."""
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "commands": st.dictionaries(
            st.sampled_from(["start", "stop", "poke", "x"]),
            st.one_of(argv, texts),
            max_size=3,
        ),
        "control": st.sampled_from(
            ["wait", "once", "event", "suspend", "off", "nowait", "adopt", False, True, "x"]
        ),
        # Never huge: see the module docstring.
        "count": st.one_of(st.integers(-2, 5), st.sampled_from([2.5, "2", None, 1000])),
        "requires": st.one_of(texts, st.lists(st.sampled_from(["a", "b", "c", "zz"]), max_size=3)),
        "roles": st.one_of(texts, st.lists(st.sampled_from(["web", "db", "x y", ""]), max_size=3)),
        "events": st.lists(
            st.dictionaries(
                st.sampled_from(EVENT_KEYS + ("bogus",)),
                st.one_of(
                    st.sampled_from(
                        ["self", "file_change", "python", "stop", "restart", "external"]
                    ),
                    st.sampled_from(["stop", "start", "poke", "HUP", "SIGUSR1", 1, 99, "/tmp/x"]),
                    st.lists(texts, max_size=2),
                    huge_numbers,
                ),
                max_size=4,
            ),
            max_size=3,
        ),
        "onexit": st.lists(
            st.dictionaries(
                st.sampled_from(["type", "task", "x"]),
                st.sampled_from(["start", "a", "b", "zz"]),
                max_size=2,
            ),
            max_size=2,
        ),
        "output": st.one_of(
            st.sampled_from(["log", "inherit", "discard", "file", "x"]),
            st.dictionaries(
                st.sampled_from(["file", "max_bytes", "backups", "x"]),
                st.one_of(
                    st.sampled_from(["/tmp/f{Task_instance}", "rel", "10M", -1]), huge_numbers
                ),
                max_size=3,
            ),
        ),
        "umask": st.one_of(st.sampled_from(["022", "0o22", 18, 22, "777", "8", -1]), huge_numbers),
        "limits": st.dictionaries(
            st.sampled_from(["nofile", "core", "stack", "as", "bogus"]),
            st.one_of(
                st.sampled_from(["unlimited", "64M", "1x", 4096, -1]),
                huge_numbers,
                st.dictionaries(
                    st.sampled_from(["soft", "hard", "x"]),
                    st.one_of(st.sampled_from(["8M", "unlimited", 1]), huge_numbers),
                    max_size=2,
                ),
            ),
            max_size=3,
        ),
        "environment": st.sampled_from(["inherit", "clean", "x", None]),
        "http": st.lists(
            st.dictionaries(
                st.sampled_from(HTTP_KEYS + ("x",)),
                st.one_of(
                    st.sampled_from(["/tmp/s.sock", ":0", "[::1", "x:y", True, "off"]),
                    huge_numbers,
                    small_ints,
                ),
                max_size=4,
            ),
            max_size=2,
        ),
    }
    for name in ("defines", "defaults"):
        plausible[name] = st.dictionaries(texts, scalars, max_size=3)
    for name in ("role_defines", "role_defaults"):
        plausible[name] = st.dictionaries(
            st.sampled_from(["web", "db", "x y"]),
            st.dictionaries(texts, scalars, max_size=2),
            max_size=2,
        )
    for name in ("start_delay", "time_limit", "stop_timeout", "stable_after", "backoff_initial"):
        plausible[name] = st.one_of(st.floats(-1, 100), huge_numbers, texts)
    found = plausible.get(key)
    return st.one_of(found, anything()) if found is not None else anything()


GOOD_TASK_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "control": st.sampled_from(["wait", "once", "event", "suspend", "off", "nowait"]),
    "count": st.integers(0, 3),
    "start_delay": st.sampled_from([0, 0.5, 2]),
    "time_limit": st.sampled_from([1, 60.5, 3600]),
    "stop_timeout": st.sampled_from([0.1, 1, 5]),
    "cwd": st.just("/tmp"),
    "pidfile": st.just("/tmp/fuzz-{Task_instance}.pid"),
    "procname": st.sampled_from(["name", "{Task_name}-{Task_instance}"]),
    "roles": st.sampled_from(["web", ["web", "db"], ["a.b-c_1"]]),
    "defines": st.sampled_from([{"X": "1", "Y": "{X}"}, {"EMPTY": None}, {"N": 3}]),
    "defaults": st.sampled_from([{"X": "0"}, {"Z": "{Task_name}"}]),
    "role_defines": st.just({"web": {"X": "2"}}),
    "role_defaults": st.just({"db": {"X": "3"}}),
    "events": st.lists(
        st.sampled_from(
            [
                {"type": "file_change", "path": "/tmp/fuzz-watched", "command": "stop"},
                {"type": "file_change", "path": ["/tmp/a", "/tmp/b"], "signal": "HUP"},
                {"type": "self", "command": "stop"},
                {"type": "python", "signal": 1},
                {"type": "external", "name": "poke", "command": "poke"},
                {"type": "stop", "command": "poke"},
                {"type": "restart", "signal": "SIGUSR1"},
            ]
        ),
        max_size=3,
    ),
    "output": st.sampled_from(
        ["log", "discard", "inherit", {"file": "/tmp/fuzz-{Task_instance}.log", "max_bytes": "1M"}]
    ),
    "umask": st.sampled_from(["022", "077"]),
    "limits": st.sampled_from([{"nofile": 1024}, {"core": "unlimited", "stack": {"soft": "8M"}}]),
    "environment": st.sampled_from(["inherit", "clean"]),
}
GOOD_SETTINGS: dict[str, st.SearchStrategy[Any]] = {
    "stop_timeout": st.sampled_from([1, 2.5]),
    "stable_after": st.sampled_from([0.5, 1]),
    "backoff_initial": st.sampled_from([0.1, 1]),
    "backoff_max": st.sampled_from([5, 30]),
    "output": st.sampled_from(["log", "discard"]),
    "known_roles": st.sampled_from([["web", "db", "a.b-c_1"], ["web"]]),
    "all_roles": st.booleans(),
}


@st.composite
def config_data(draw: st.DrawFn) -> Any:
    """A mapping shaped like a config: often valid, often a little wrong."""
    if draw(st.integers(0, 9)) == 0:
        return draw(anything())
    wild = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))  # how often a value is off the map

    def pick(key: str, good: dict[str, st.SearchStrategy[Any]]) -> Any:
        if key in good and draw(st.floats(0, 1)) >= wild:
            return draw(good[key])
        return draw(value_for(key))

    tasks: dict[Any, Any] = {}
    odd_names = ["x y", "", "é", "-", "a.b"] if wild else []
    names = draw(
        st.lists(st.sampled_from(["a", "b", "c", "web", *odd_names]), max_size=4, unique=True)
    )
    for position, name in enumerate(names):
        keys = draw(st.lists(st.sampled_from(TASK_KEYS), max_size=6, unique=True))
        task: dict[Any, Any] = {}
        if draw(st.floats(0, 1)) >= wild / 4:
            task["commands"] = {"start": ["sleep", "9", "{Task_instance}"], "poke": ["true"]}
        for key in keys:
            if key == "requires" and position and draw(st.floats(0, 1)) >= wild:
                task[key] = draw(st.sampled_from(names[:position]))
            else:
                task[key] = pick(key, GOOD_TASK_VALUES)
        if draw(st.floats(0, 1)) < wild / 2:
            task[draw(st.one_of(plain_keys, odd_keys))] = draw(scalars)
        tasks[name] = task
    data: dict[Any, Any] = {"tasks": tasks}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS[1:]), max_size=3, unique=True)):
        if key == "settings":
            data[key] = {
                k: pick(k, GOOD_SETTINGS)
                for k in draw(st.lists(st.sampled_from(SETTINGS_KEYS), max_size=4, unique=True))
            }
        else:
            data[key] = pick(key, GOOD_TASK_VALUES)
    if draw(st.floats(0, 1)) < wild / 2:
        data[draw(st.one_of(plain_keys, odd_keys))] = draw(anything())
    return data


def render(data: Any, style: str, unicode: bool) -> str:
    if style == "json":
        try:
            return json.dumps(data, indent=1, ensure_ascii=not unicode)
        except (TypeError, ValueError):
            style = "flow"
    text: str = yaml.safe_dump(
        data, default_flow_style=(style == "flow"), allow_unicode=unicode, sort_keys=False, width=60
    )
    return text


INSERTS = st.sampled_from(
    list("\t:{}[],\"'#&*!%@`|>-?\\\n ")
    + ["\x00", "\x07", "\x85", "\u2028", "\ufeff", "\U0001f600", "\r", "\r\n", "  ", "- ", ": "]
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` after a few edits a hurried person (or a broken disk) might make."""
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        kind = draw(
            st.sampled_from(
                ["cut", "insert", "tab", "dup", "unquote", "huge", "drop", "swap", "nest", "anchor"]
            )
        )
        size = len(text)
        at = draw(st.integers(0, size)) if size else 0
        if kind == "cut":
            text = text[:at]
        elif kind == "insert":
            text = text[:at] + draw(INSERTS) + text[at:]
        elif kind == "tab":
            text = re.sub(r"^( +)", "\t", text, count=draw(st.integers(1, 3)), flags=re.M)
        elif kind == "dup":
            lines = text.split("\n")
            pick = draw(st.integers(0, len(lines) - 1))
            lines.insert(pick, lines[pick])  # a key given twice (block style)
            text = "\n".join(lines)
        elif kind == "unquote":
            text = re.sub(r"['\"](off|on|yes|no|Off|NO|y)['\"]", r"\1", text)
        elif kind == "huge":
            # Not next to a count: see the module docstring.
            text = re.sub(
                r"((?:timeout|delay|limit|after|initial|max|nofile|umask)['\"]?:\s*)-?\d+(\.\d+)?",
                lambda m: (
                    m.group(1) + draw(st.sampled_from(["99999999999999999999", "1e400", "3000000"]))
                ),
                text,
            )
        elif kind == "drop":
            lines = text.split("\n")
            if lines:
                del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
        elif kind == "swap":
            text = text.replace("'", '"') if draw(st.booleans()) else text.replace(": ", ":")
        elif kind == "nest":
            depth = draw(st.sampled_from([50, 2000]))
            text = text[:at] + "[" * depth + "]" * depth + text[at:]
        elif kind == "anchor":
            text = "base: &b {x: 1}\n" + text + "\nother: {<<: *b, y: *b}\n"
    return text


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.text(max_size=200))
    style = draw(st.sampled_from(["block", "flow", "json"]))
    text = render(draw(config_data()), style, draw(st.booleans()))
    return draw(mutated(text))


def yaml_lines(text: str) -> int:
    return len(YAML_BREAKS.split(text))


def check_config_error(exc: ConfigError, text: str, source: str) -> None:
    """A located error: the file always, the line when the text is at fault."""
    assert exc.errors and exc.errors[0] is exc
    for error in exc.errors:
        assert isinstance(error, ConfigError)
        if error.file == "<roles>":
            # A role the config's settings.known_roles does not know: the
            # roles file is at fault, and the error says so.
            assert "known_roles" in error.message, error
            continue
        assert error.file == source, error
        rendered = str(error)
        assert rendered.startswith(source), rendered
        if error.line is None:
            assert not error.path, f"a key path but no line: {error}"
            if error.message.startswith(KNOWN_UNLOCATED):
                continue
            assert error.message.startswith(WHOLE_FILE), (
                f"no line for a problem in the text: {error}"
            )
        else:
            assert 1 <= error.line <= yaml_lines(text) + 1, (error.line, error)


def simulation() -> Simulation:
    """A simulated world on the host of ``FACTS`` (configs are loaded for it)."""
    return Simulation(start=100.0, host=FACTS.host, fqdn=FACTS.fqdn, daemon_pid=FACTS.pid)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(config_texts(), ROLE_SETS)
@example("x: \x00", None)
@example("[" * 5000 + "]" * 5000, None)
@example("tasks: {a: {commands: {start: [x]}, control: off}}", None)
@example("tasks:\n  a:\n    commands: {start: [x]}\n\tcount: 2\n", None)
@example(
    "tasks: {a: {commands: {start: [x]}, requires: b}, b: {commands: {start: [y]}, requires: a}}",
    None,
)
def test_any_config_text_loads_or_is_a_located_config_error(
    text: str, roles: tuple[str, ...] | None
) -> None:
    # First the schema alone (as `taskforce -C` without roles), then built
    # for a roles file, as the daemon loads it.
    for schema_only in (True, False):
        what = "schema" if schema_only else "built"
        try:
            if schema_only:
                config = load_config_text(text, SOURCE)
            else:
                config = load_config_text(text, SOURCE, roles, facts=FACTS)
        except ConfigError as exc:
            check_config_error(exc, text, SOURCE)
            event(f"{what}: error")
            continue
        event(f"{what}: loaded")
        if schema_only:
            continue
        # Loaded with roles: the core must take it, as the daemon would feed
        # it, and take it again a second later.
        sim = simulation()
        sim.boot(config, roles, environ=FACTS.environ)
        sim.advance(1)
        sim.reload(config, roles)


@given(st.binary(max_size=300), st.booleans())
def test_any_config_file_bytes_load_or_are_a_located_config_error(data: bytes, utf8: bool) -> None:
    if utf8:
        data = data.decode("latin-1").encode("utf-8")  # valid UTF-8, odd characters
    with tempfile.NamedTemporaryFile("wb", suffix=".conf", delete=False) as handle:
        handle.write(data)
    try:
        load_config(handle.name, None, facts=FACTS)
    except ConfigError as exc:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
            assert exc.line is not None and 1 <= exc.line <= data.count(b"\n") + 1
        check_config_error(exc, text, handle.name)
    finally:
        os.unlink(handle.name)


HUGE_COUNT_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (350 * 1024 * 1024,) * 2)
    from taskforce.config import ConfigError, load_config_text
    try:
        load_config_text(sys.argv[1], "<huge>", None)
    except ConfigError as exc:
        print("ConfigError:", exc)
        sys.exit(0)
    except MemoryError:
        print("MemoryError")
        sys.exit(2)
    print("loaded")
    sys.exit(1)
    """
)


def test_a_control_character_error_names_its_line() -> None:
    text = "tasks:\n  a:\n    commands: {start: [sleep, '9\x07']}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "<ctl>")
    assert caught.value.line == 3, str(caught.value)
    assert "<unicode string>" not in str(caught.value)


def test_a_huge_count_is_a_config_error() -> None:
    text = "tasks:\n  a:\n    commands: {start: [sleep, '9']}\n    count: 99999999999999999999\n"
    done = subprocess.run(
        [sys.executable, "-c", HUGE_COUNT_CHILD, text],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout.strip()} {done.stderr.strip()[-300:]}"
    assert "<huge>:4: tasks.a.count" in done.stdout


# =====================================================================
# Roles text


role_lines = st.one_of(
    st.sampled_from(
        [
            "web",
            "db",
            "a.b-c_1",
            "web=1",
            "db = primary ",
            "x=",
            "=x",
            "# comment",
            "   ",
            "",
            "web # trailing",
            "web#not a comment",
            "two words",
            "tab\tsep",
            "é",
            "web\x0cdb",
            "a\x85b",
            "c\u2028d",
            "\x1c",
            "\ufeffweb",
            "web\r",
            "a=b=c",
            "-",
            ".",
        ]
    ),
    st.text(max_size=10),
)


@given(st.lists(role_lines, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_any_roles_text_parses_or_is_a_located_config_error(lines: list[str], eol: str) -> None:
    text = eol.join(lines)
    try:
        roles = parse_roles(text, "<roles>")
    except ConfigError as exc:
        # Lines as parse_roles counts them (str.splitlines): counting by
        # newlines only is a known bug, test_roles_lines_are_newline_separated.
        lines_seen = text.splitlines()
        for error in exc.errors:
            assert error.file == "<roles>" and error.line is not None, error
            assert 1 <= error.line <= len(lines_seen), (error.line, len(lines_seen), error)
        return
    assert roles.names is not None
    assert len(set(roles.names)) == len(roles.names)
    for name in roles.names:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name


def test_roles_lines_are_newline_separated() -> None:
    with pytest.raises(ConfigError) as form_feed:
        parse_roles("web\x0cdb\n", "<roles>")  # one line, and not a role name
    assert form_feed.value.line == 1
    with pytest.raises(ConfigError) as caught:
        parse_roles("a\x85b\nbad role\n", "<roles>")
    lines = {error.line: str(error) for error in caught.value.errors}
    assert "bad role" in lines.get(2, ""), lines


@given(st.binary(max_size=200))
def test_any_roles_file_bytes_parse_or_are_a_located_config_error(data: bytes) -> None:
    with tempfile.NamedTemporaryFile("wb", suffix=".roles", delete=False) as handle:
        handle.write(data)
    try:
        load_roles(handle.name)
    except ConfigError as exc:
        for error in exc.errors:
            assert error.file == handle.name and error.line is not None, error
    finally:
        os.unlink(handle.name)


# =====================================================================
# Control requests

CONFIG_TEXT = json.dumps(
    {
        "settings": {"stable_after": 0.05},
        "tasks": {
            "a": {"commands": {"start": ["sleep", "9"]}, "count": 2},
            "b": {
                "commands": {"start": ["sleep", "9"], "poke": ["true"]},
                "events": [{"type": "external", "name": "poke", "command": "poke"}],
                "requires": "a",
            },
            "off": {"commands": {"start": ["sleep", "9"]}, "control": "off"},
            "web": {"commands": {"start": ["sleep", "9"]}, "roles": "web"},
            "job": {"commands": {"start": ["true"]}, "control": "once"},
        },
    }
)


@contextlib.contextmanager
def served() -> Iterator[ControlServer]:
    """The control server in-process, its shell a simulated world that
    booted ``CONFIG_TEXT`` for the roles ``db``; its connections closed
    after."""
    sim = simulation()
    config = load_config_text(CONFIG_TEXT, "/fuzz.conf", ("db",), facts=FACTS)
    sim.boot(config, ("db",), environ=FACTS.environ)
    selector = selectors.DefaultSelector()
    server = ControlServer(sim, selector, Options())
    try:
        yield server
    finally:
        for conn in list(server.conns):
            conn.close()
        selector.close()


TASK_NAMES = st.sampled_from(["a", "b", "off", "web", "job", "zz", "", "../a", "a b", "é", "\x00"])
VALUES = st.one_of(
    st.sampled_from(
        [
            "off",
            "wait",
            "once",
            "event",
            "suspend",
            "adopt",
            "0",
            "1",
            "2",
            "3",
            "-1",
            "+2",
            " 2 ",
            "99999",
            "1" * 40,
            "²",
            "١",
            "２",
            "1e3",
            "HUP",
            "sighup",
            "SIGKILL",
            "9",
            "0x1",
            "999999999999999999999",
            "poke",
            "",
            "%",
            "\u202e",
        ]
    ),
    st.text(max_size=8),
)
PARAM_NAMES = st.one_of(
    st.sampled_from(["task", "instance", "signal", "name", "config", "roles", "fmt", "indent"]),
    TASK_NAMES,
)
params = st.lists(st.tuples(PARAM_NAMES, VALUES), max_size=5)


CONTROLS = st.sampled_from(["off", "wait", "once", "event", "suspend", "nowait", "x"])
COUNTS = st.sampled_from(["1", "2", "3", "0", "-1", "x", "10001"])
INSTANCES = st.sampled_from(["0", "1", "2", "5", "-1", "x"])
SIGNALS = st.sampled_from(["HUP", "usr1", "SIGTERM", "9", "0", "SIGNOPE", "sig"])


def manage_params(path: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Parameters that make sense for ``path`` (so the core gets real work)."""
    task = st.sampled_from(["a", "b", "off", "web", "job", "zz"])
    one = st.tuples
    shapes: dict[str, st.SearchStrategy[list[tuple[str, str]]]] = {
        "/manage/control": st.lists(one(task, CONTROLS), min_size=1, max_size=3),
        "/manage/count": st.lists(one(task, COUNTS), min_size=1, max_size=3),
        "/manage/start": st.lists(one(st.just("task"), task), min_size=1, max_size=2),
        "/manage/restart": st.lists(
            st.one_of(one(st.just("task"), task), one(st.just("instance"), INSTANCES)), max_size=2
        ),
        "/manage/signal": st.lists(
            st.one_of(
                one(st.just("task"), task),
                one(st.just("signal"), SIGNALS),
                one(st.just("instance"), INSTANCES),
            ),
            max_size=3,
        ),
        "/manage/event": st.lists(one(st.just("name"), st.sampled_from(["poke", "x"])), max_size=1),
        "/manage/plan": st.lists(
            st.one_of(
                one(st.just("config"), st.sampled_from([CONFIG_TEXT, "tasks: ["])),
                one(st.just("roles"), st.sampled_from(["-", "web", "web,db", ""])),
            ),
            max_size=2,
        ),
    }
    return shapes.get(path, params)


def encode_params(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, quote_via=quote)


raw_queries = st.one_of(
    st.sampled_from(
        [
            "",
            "a",
            "a=",
            "=",
            "&&&",
            "a=%zz",
            "%",
            "a=%ff%fe",
            "a=1&a=2",
            "a=off;b=wait",
            "indent=99",
        ]
    ),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=30),
)
ODD_PATHS = st.sampled_from(
    [
        "/",
        "",
        "/manage/",
        "/manage",
        "/status/",
        "/status/../manage/stop",
        "/manage/../manage/control",
        "//manage/control",
        "/manage/control/",
        "/MANAGE/CONTROL",
        "/manage/%63ontrol",
        "*",
        "http://x/status/tasks",
    ]
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return draw(st.sampled_from(sorted(MANAGE)))
    if kind < 8:
        return draw(st.sampled_from(sorted(STATUS)))
    if kind == 8:
        return draw(ODD_PATHS)
    return draw(st.text(alphabet=st.characters(max_codepoint=255), max_size=20))


MEDIA = st.sampled_from(
    [
        None,
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=latin-1",
        "multipart/form-data; boundary=XyZ",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary="a b"',
        "multipart/mixed; boundary=XyZ",
        "text/yaml",
        "application/json",
        "",
        "\x00;;;",
        "é/è",
    ]
)


def multipart(pairs: list[tuple[str, str]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, value in pairs:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode(
                "utf-8", "surrogatepass"
            )
            + value.encode("utf-8", "surrogatepass")
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


@st.composite
def bodies(draw: st.DrawFn, media: str | None) -> bytes:
    kind = draw(
        st.sampled_from(["empty", "form", "multipart", "config", "bytes", "big", "bad-utf8"])
    )
    if kind == "empty":
        return b""
    if kind == "form":
        return encode_params(draw(params)).encode()
    if kind == "multipart":
        body = multipart(draw(params))
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))]
        return body
    if kind == "config":
        return draw(
            st.sampled_from([CONFIG_TEXT, "tasks: {x: {commands: {}}}", "tasks: [", "{}"])
        ).encode()
    if kind == "big":
        return draw(st.sampled_from([b"a=" + b"x" * 200_000, b"&" * 100_000, b"a=1&" * 30_000]))
    if kind == "bad-utf8":
        return draw(
            st.sampled_from([b"\xff\xfe", b"a=\xc3\x28", b"tasks: {a: \xed\xa0\x80}", b"\x80" * 10])
        )
    return draw(st.binary(max_size=200))


HEADER_NAMES = st.sampled_from(
    ["x-thing", "host", "accept", "connection", "content-length", "expect", "transfer-encoding"]
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(
        st.sampled_from(["GET", "POST"] * 6 + ["HEAD", "PUT", "DELETE", "OPTIONS", "get", "X"])
    )
    path = draw(paths())
    query = encode_params(draw(params)) if draw(st.booleans()) else draw(raw_queries)
    target = path + ("?" + query if query or draw(st.booleans()) else "")
    try:
        parts = urlsplit(target)
    except ValueError:
        assume(False)
        raise  # unreachable
    pairs = draw(manage_params(path)) if path in MANAGE and draw(st.integers(0, 3)) else None
    if pairs is not None:
        query = encode_params(pairs) if method != "POST" or draw(st.booleans()) else ""
        target = path + "?" + query
        parts = urlsplit(target)
    headers = {
        name: draw(st.text(alphabet=st.characters(max_codepoint=255), max_size=20))
        for name in draw(st.lists(HEADER_NAMES, max_size=3, unique=True))
    }
    media = draw(MEDIA)
    if media is not None:
        headers["content-type"] = media
    body = draw(bodies(media))
    if pairs is not None and method == "POST" and not query:
        headers["content-type"] = "application/x-www-form-urlencoded"
        body = encode_params(pairs).encode()
    return Request(method, target, parts.path, parts.query, headers, body)


def check_response(response: Any) -> None:
    assert isinstance(response, Response), response
    assert response.code in REASONS and response.code != 500, response.code
    assert isinstance(response.body, bytes)
    response.content_type.encode("ascii")
    for name, value in response.headers:
        # Connection.respond encodes headers as latin-1; h11 refuses CR/LF.
        name.encode("latin-1")
        value.encode("latin-1")
        assert "\r" not in value and "\n" not in value, value


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(st.tuples(requests(), st.booleans()), min_size=1, max_size=5))
def test_any_control_request_gets_a_response(calls: list[tuple[Request, bool]]) -> None:
    with served() as server:
        for request, allow in calls:
            service = Service("/fuzz.sock", allow_control=allow)
            listener = FakeListener(service)
            request.listener = listener  # type: ignore[assignment]
            response = handle(server, request, listener, OWNER)  # type: ignore[arg-type]
            if isinstance(response, StreamRequest):
                # A stream the server would open (``/status/events``...).
                event("stream")
                continue
            if isinstance(response, Deferred):
                # As the server does, with the work on this thread.
                response = response.finish(response.work())
            check_response(response)
            event(f"code {response.code}")
            if response.after is not None:
                response.after()  # stop, reset: as the server does once it is queued


# ---------------------------------------------------------------- bytes


class FakeListener:
    """A Unix listener's public face, without a socket: control for root and
    this process's user, status for anyone (the defaults)."""

    host_ok = Listener.host_ok
    token_ok = Listener.token_ok

    def __init__(self, service: Service) -> None:
        self.service = service
        self.tls = None
        self.address = "fuzz"
        self.token = None
        self.loopback = False
        self.host_names: frozenset[str] = frozenset()
        self.control_grants = ("uid:0", f"uid:{os.geteuid()}")
        self.status_grants = None


#: The peer of the fuzzed requests: this process's user, allowed to control.
OWNER = {"uid": os.geteuid(), "gid": os.getegid()}


class Failures(logging.Handler):
    """Collects what the control path logs as a failure."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def converse(data: bytes, allow: bool, half_close: bool, pieces: int) -> bytes:
    """Send ``data`` (in ``pieces``) over a socketpair to a real Connection;
    everything the server wrote back."""
    world = contextlib.ExitStack()
    server = world.enter_context(served())
    ours, theirs = socket.socketpair()
    failures = Failures()
    logger = logging.getLogger("taskforce")
    logger.addHandler(failures)
    got = bytearray()
    try:
        ours.setblocking(False)
        theirs.setblocking(False)
        service = Service("/fuzz.sock", allow_control=allow, timeout=30.0)
        conn = Connection(server, ours, FakeListener(service))  # type: ignore[arg-type]
        server.conns.add(conn)
        step = max(1, len(data) // pieces)
        chunks = [data[i : i + step] for i in range(0, len(data), step)]

        def pump(rounds: int) -> None:
            for _ in range(rounds):
                for key, _ in server.selector.select(0):
                    key.data()
                server.tick(time.monotonic())
                try:
                    while True:
                        chunk = theirs.recv(65536)
                        if not chunk:
                            break
                        got.extend(chunk)
                except (BlockingIOError, ConnectionResetError):
                    pass

        for chunk in chunks:
            while chunk:
                try:
                    sent = theirs.send(chunk)
                except BlockingIOError:
                    sent = 0
                except (BrokenPipeError, ConnectionResetError):
                    chunk = b""
                    break
                chunk = chunk[sent:]
                pump(2)
                if conn.closed:
                    break
        if half_close:
            try:
                theirs.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        pump(6)
        if not conn.closed:
            conn.expire()  # the client's time is up
            pump(4)
        if not conn.closed:
            conn.expire()  # a lingering close, or a keep-alive gone idle
            pump(2)
        assert conn.closed or conn.fresh, "a connection left half-way"
        assert not failures.records, failures.records
        assert server.stats["requests"] >= 0
    finally:
        logger.removeHandler(failures)
        theirs.close()
        world.close()
    return bytes(got)


def check_answers(got: bytes) -> None:
    if not got:
        return
    assert got.startswith(b"HTTP/1.1 "), got[:80]
    for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", got):
        assert int(code) != 500, got[:300]
        event(f"code {int(code)}")


FRAGMENTS = st.sampled_from(
    [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"/status/tasks",
        b"/status/health?indent=4",
        b"/metrics",
        b"/manage/control?a=off&b=wait",
        b"/manage/count?a=3",
        b"/manage/restart?task=a&instance=1",
        b"/manage/signal?task=a&signal=hup",
        b"/manage/event?name=poke",
        b"/manage/plan",
        b"/manage/reload",
        b"/manage/stop",
        b"/\xff\xfe",
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b" HTTP/2\r\n",
        b"Host: x\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999\r\n",
        b"Content-Type: application/x-www-form-urlencoded\r\n",
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"X: \xe9\xff\r\n",
        b"\r\n",
        b"\n",
        b"0\r\n\r\n",
        b"5\r\nabcde\r\n",
        b"a=off",
        b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\noff\r\n--XyZ--\r\n',
        b"\x00\xff",
        b"%%%",
    ]
)


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """A proper HTTP/1.1 request (from ``requests()``), framed one way or another."""
    request = draw(requests())
    method = request.method.upper() if request.method.isalpha() else "GET"
    target = request.target.encode("latin-1", "replace") or b"/"
    if not target.startswith((b"/", b"*", b"http")) or any(c <= 32 or c == 127 for c in target):
        target = b"/" + quote(target, safe="/?&=%").encode()
    if draw(st.booleans()):
        target = quote(target.decode("latin-1"), safe="/?&=%+").encode()
    head = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: x"]
    tidy = draw(st.integers(0, 3)) > 0
    for name, value in request.headers.items():
        if name in ("host", "content-length", "transfer-encoding", "connection", "expect"):
            if tidy:
                continue
        elif tidy:
            value = re.sub(r"[^\x20-\x7e]", "", value).strip()
        head.append(name.encode() + b": " + value.encode("latin-1", "replace"))
    body = request.body
    framing = draw(st.sampled_from(["length", "chunked", "none", "wrong-length"]))
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        head.append(b"Content-Length: %d" % (len(body) + draw(st.sampled_from([-1, 1, 7]))))
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        body = (
            b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [body[:7], body[7:]] if p)
            + b"0\r\n\r\n"
        )
    else:
        body = b""
    if draw(st.booleans()):
        head.append(b"Connection: close")
    data = b"\r\n".join(head) + b"\r\n\r\n" + body
    if draw(st.integers(0, 3)) == 0:  # pipelined
        data += data
    return data


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind < 6:
        data = draw(well_formed())
    else:
        data = b"".join(draw(st.lists(FRAGMENTS, min_size=1, max_size=14)))
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.sampled_from([b"X: " + b"a" * 20000 + b"\r\n\r\n", b"a" * 70000]))
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(raw_requests(), st.booleans(), st.booleans(), st.integers(1, 4))
@example(b"GET /status/tasks HTTP/1.1\r\nHost: x\r\n\r\n", True, True, 1)
@example(
    b"POST /manage/control HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n\r\na=off",
    True,
    False,
    3,
)
@example(b"GET /status/tasks HTTP/1.1\r\nHost: x\r\n\r\n" * 3, False, True, 2)
def test_any_bytes_on_a_connection_get_an_answer_or_a_close(
    data: bytes, allow: bool, half_close: bool, pieces: int
) -> None:
    check_answers(converse(data, allow, half_close, pieces))


def test_the_connection_harness_sees_real_answers() -> None:
    """The harness above is not vacuous: it gets real answers back."""
    got = converse(
        b"GET /status/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True, False, 1
    )
    assert got.startswith(b"HTTP/1.1 200 ") and b'"a":' in got
    got = converse(
        b"POST /manage/count HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\na=3",
        True,
        True,
        2,
    )
    assert got.startswith(b"HTTP/1.1 202 ") and got.endswith(b"a\tok\n"), got
    assert converse(b"\x00\xff\r\n\r\n", True, True, 1).startswith(b"HTTP/1.1 400 ")
