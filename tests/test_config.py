"""Tests of taskforce.config: the accepted config forms, every error (with its
line and key path), the YAML 1.1 traps, and the roles file."""

from __future__ import annotations

import json
import signal
import socket
import textwrap
import time
from typing import Any

import pytest
from daemon_harness import alias_bomb

from taskforce.config import (
    SCHEMA_ONLY,
    ConfigError,
    LoadedConfig,
    Roles,
    RolesFileMissing,
    check,
    check_roles_against,
    format_path,
    load_config,
    load_config_text,
    load_roles,
    parse_roles,
    signal_name,
    validate_all,
)
from taskforce.core.model import HostFacts

FACTS = HostFacts(
    environ={"PATH": "/usr/bin:/bin", "HOME": "/root"}, host="h1", fqdn="h1.example", pid=42
)
ALL = Roles(None)  # no roles file: every task in scope


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(text: str, roles: Any = SCHEMA_ONLY) -> list[ConfigError]:
    return validate_all(dedent(text), "t.conf", roles, facts=FACTS)


def only_error(text: str, roles: Any = SCHEMA_ONLY) -> ConfigError:
    found = errors_of(text, roles)
    assert len(found) == 1, [str(err) for err in found]
    return found[0]


def assert_no_lists(value: Any, where: str = "") -> None:
    assert not isinstance(value, list), f"list at {where}"
    if isinstance(value, dict):
        for key, item in value.items():
            assert_no_lists(item, f"{where}.{key}")
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            assert_no_lists(item, f"{where}[{index}]")


# ---------------------------------------------------------------------------
# Accepted forms

README_EXAMPLE = """\
{
    "tasks": {
        "sshd": {
            "control": "wait",
            "commands": { "start": [ "/usr/sbin/sshd", "-D" ] }
        },
        "ntpd": {
            "control": "wait",
            "requires": "sshd",
            "defines": { "conf": "/etc/ntp.conf" },
            "commands": { "start": [ "/usr/sbin/ntpd", "-c", "{conf}", "-n"] },
            "events": [
                { "type": "self", "command": "stop" },
                { "type": "file_change", "path": "{conf}", "command": "stop" }
            ]
        }
    }
}
"""

# The traditional style: JSON with comments, mixed quoting, trailing commas.
FLOW_STYLE = """\
# A comment before the document.
{
    'defaults': {
        "PATH": "/usr/bin:/bin",
        "BASE": "",          # trailing comma next
    },
    "defines": { "piddir": "{BASE}/var/run", },
    "role_defines": {
        "front": { "conf": "/etc/front.conf" },   # a comment inside a map
        'back': { "conf": "/etc/back.conf" },
    },
    "settings": {
        "http": [ { "listen": "/tmp/tf.sock", "allow_control": true, }, ],
    },
    "tasks": {
        "timeset": {
            'control': 'once',
            "commands": { "start": ["ntpdate", "-u", "pool.ntp.org"], },
        },
        "web": {
            "control": "wait",
            "roles": [ "front", "back", ],
            "requires": [ "timeset" ],
            "start_delay": 1,
            "count": 2,
            "pidfile": "{piddir}/{Task_name}.pid",
            "commands": {
                "start": [
                    "httpd", "-f", "{conf}",
                    { "MINSLEEP": [ "--min-sleep", "{MINSLEEP}" ] },   # conditional args
                ],
                'reload': [ "httpd", "-k", "graceful" ],
            },
            "events": [
                { "type": "file_change", "path": [ "{conf}", ], "command": "reload" },
                { "type": "self", "signal": "hup" },
            ],
            "onexit": [ { "type": "start", "task": "timeset" }, ],
        },
    },
}
"""

BLOCK_STYLE = """\
# The same config, block style.
defaults:
  PATH: /usr/bin:/bin
  BASE: ""
defines:
  piddir: "{BASE}/var/run"
role_defines:
  front:
    conf: /etc/front.conf
  back:
    conf: /etc/back.conf
settings:
  http:
    - listen: /tmp/tf.sock
      allow_control: true
tasks:
  timeset:
    control: once
    commands:
      start: [ntpdate, -u, pool.ntp.org]
  web:
    control: wait
    roles: [front, back]
    requires: [timeset]
    start_delay: 1
    count: 2
    pidfile: "{piddir}/{Task_name}.pid"
    commands:
      start:
        - httpd
        - -f
        - "{conf}"
        - MINSLEEP: [--min-sleep, "{MINSLEEP}"]
      reload: [httpd, -k, graceful]
    events:
      - type: file_change
        path: ["{conf}"]
        command: reload
      - type: self
        signal: hup
    onexit:
      - type: start
        task: timeset
"""


def test_readme_example_loads_and_normalizes() -> None:
    config = load_config_text(README_EXAMPLE, "readme.conf")
    assert set(config) == {
        "tasks",
        "settings",
        "sockets",
        "defines",
        "role_defines",
        "defaults",
        "role_defaults",
    }
    assert config["settings"] == config["defines"] == config["defaults"] == {}
    assert config["sockets"] == {}
    ntpd = config["tasks"]["ntpd"]
    assert ntpd["requires"] == ("sshd",)
    assert ntpd["commands"]["start"] == ("/usr/sbin/ntpd", "-c", "{conf}", "-n")
    assert ntpd["events"] == (
        {"type": "self", "command": "stop"},
        {"type": "file_change", "command": "stop", "path": ("{conf}",)},
    )
    assert_no_lists(dict(config))


def test_readme_example_builds() -> None:
    config = load_config_text(README_EXAMPLE, "readme.conf")
    specs = check(config, "readme.conf", None, {}, facts=FACTS)
    assert specs["ntpd"].processes[0].argv == ("/usr/sbin/ntpd", "-c", "/etc/ntp.conf", "-n")
    assert specs["ntpd"].requires == ("sshd",)
    assert specs["ntpd"].events[1].paths == ("/etc/ntp.conf",)


def test_flow_style_with_comments_and_trailing_commas() -> None:
    config = load_config_text(FLOW_STYLE, "flow.conf")
    web = config["tasks"]["web"]
    assert web["roles"] == ("front", "back")
    assert web["commands"]["start"][3] == {"MINSLEEP": ("--min-sleep", "{MINSLEEP}")}
    assert web["events"][1] == {"type": "self", "signal": "SIGHUP"}
    assert config["settings"]["http"] == ({"listen": "/tmp/tf.sock", "allow_control": True},)
    assert config["defaults"] == {"PATH": "/usr/bin:/bin", "BASE": ""}
    assert_no_lists(dict(config))


def test_block_style_equals_flow_style() -> None:
    assert load_config_text(BLOCK_STYLE, "block.conf") == load_config_text(FLOW_STYLE, "f")


def test_flow_style_builds_with_roles_and_conditionals() -> None:
    roles = parse_roles("front\n", "roles")
    config = load_config_text(FLOW_STYLE, "flow.conf", roles, facts=FACTS)
    specs = check(config, "flow.conf", roles, facts=FACTS)
    web = specs["web"].processes[1]
    assert web.argv == ("httpd", "-f", "/etc/front.conf")
    assert web.pidfile == "/var/run/web.pid"
    assert web.env["Task_instance"] == "1"
    with_env = HostFacts(environ={**FACTS.environ, "MINSLEEP": "20"})
    argv = check(config, "flow.conf", roles, facts=with_env)["web"].processes[0].argv
    assert argv == ("httpd", "-f", "/etc/front.conf", "--min-sleep", "20")


def test_conditional_values_are_kept_for_the_core() -> None:
    text = """
    tasks:
      app:
        control: {PROD: wait, DEV: "off"}
        count: {PROD: 4, DEV: 1}
        start_delay: {PROD: 5, DEV: 0}
        user: {PROD: www, DEV: 1000}
        commands:
          start: [app, {VERBOSE: -v}, {DEBUG: [--debug, "{DEBUG}"]}]
          other: {PROD: [a, b], DEV: c}
    """
    config = load_config_text(dedent(text), "c.conf")
    app = config["tasks"]["app"]
    assert app["control"] == {"PROD": "wait", "DEV": "off"}
    assert app["count"] == {"PROD": 4, "DEV": 1}
    assert app["commands"]["start"] == ("app", {"VERBOSE": "-v"}, {"DEBUG": ("--debug", "{DEBUG}")})
    assert app["commands"]["other"] == {"PROD": ("a", "b"), "DEV": "c"}
    prod = HostFacts(environ={"PROD": "", "VERBOSE": "1"})
    spec = check(config, "c.conf", None, facts=prod)["app"]
    assert (spec.control, spec.count) == ("wait", 4)
    assert spec.processes[0].argv == ("app", "-v")
    assert spec.processes[0].user == "www"


@pytest.mark.parametrize("given", [1, "1", "hup", "HUP", "SIGHUP", "sighup", " SigHup "])
def test_signal_forms_become_canonical(given: Any) -> None:
    text = json.dumps(
        {
            "tasks": {
                "a": {"commands": {"start": ["x"]}, "events": [{"type": "self", "signal": given}]}
            }
        }
    )
    config = load_config_text(text, "s.conf")
    assert config["tasks"]["a"]["events"][0]["signal"] == "SIGHUP"


def test_signal_name() -> None:
    assert signal_name(15) == "SIGTERM"
    assert signal_name("usr1") == "SIGUSR1"
    assert signal_name(True) is None
    assert signal_name("SIGNOPE") is None
    assert signal_name(0) is None


def test_single_strings_become_one_tuples() -> None:
    text = """
    tasks:
      a: {commands: {start: /bin/a}, roles: web}
      b:
        requires: a
        commands: {start: [b], check: "b --check"}
        events: [{type: file_change, path: /etc/b.conf, command: check}]
    """
    tasks = load_config_text(dedent(text), "x")["tasks"]
    assert tasks["a"]["commands"]["start"] == ("/bin/a",)
    assert tasks["a"]["roles"] == ("web",)
    assert tasks["b"]["requires"] == ("a",)
    assert tasks["b"]["commands"]["check"] == ("b --check",)
    assert tasks["b"]["events"][0]["path"] == ("/etc/b.conf",)


def test_numbers_and_tags() -> None:
    text = """
    defines: {limit: "30"}
    tasks:
      a:
        commands: {start: [sleep, 10, 2.5]}
        time_limit: "{limit}"
        start_delay: 0.5
        stop_timeout: "3"
        count: 0
    """
    config = load_config_text(dedent(text), "x")
    spec = check(config, "x", None, facts=FACTS)["a"]
    assert spec.time_limit == 30.0
    assert spec.stop_timeout == 3.0
    assert spec.processes[0].argv == ("sleep", "10", "2.5")


def test_settings_are_normalized() -> None:
    text = """
    settings:
      known_roles: [web, db]
      all_roles: true
      stop_timeout: 2
      stable_after: null
      record: /var/log/tf.events
      output: {file: "/var/log/{Task_name}.log", max_bytes: 1M}
      http: [{listen: "127.0.0.1:3210", certfile: /etc/tf.pem, timeout: 3}]
    tasks: {}
    """
    settings = load_config_text(dedent(text), "x")["settings"]
    assert settings["known_roles"] == ("web", "db")
    assert settings["all_roles"] is True
    assert "stable_after" not in settings  # null means the default
    assert settings["output"] == {"file": "/var/log/{Task_name}.log", "max_bytes": "1M"}
    assert settings["http"][0]["listen"] == "127.0.0.1:3210"


def test_anchors_and_merge_keys() -> None:
    text = """
    defines: &common {A: "1"}
    tasks:
      a:
        defines:
          <<: *common
          A: "2"
        commands: {start: &argv [x, y]}
      b: {commands: {start: *argv}}
    """
    tasks = load_config_text(dedent(text), "x")["tasks"]
    assert tasks["a"]["defines"] == {"A": "2"}  # overriding a merged key is no duplicate
    assert tasks["b"]["commands"]["start"] == ("x", "y")


# ---------------------------------------------------------------------------
# Alias bombs: refused before anything walks them as a tree


def _give_up(signum: int, frame: Any) -> None:
    raise TimeoutError("still loading after 2 s")


def _refused_fast(text: str) -> ConfigError:
    """The error loading ``text`` raises; a bomb that goes off fails in 2 s."""
    started = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _give_up)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(ConfigError) as raised:
            load_config_text(text, "bomb.conf", ALL, facts=FACTS)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    took = time.perf_counter() - started
    assert took < 0.5, f"took {took:.3f}s to refuse"
    return raised.value


@pytest.mark.parametrize("deep", [False, True], ids=["wide", "deep"])
def test_an_alias_bomb_is_a_located_error_within_milliseconds(deep: bool) -> None:
    err = _refused_fast(alias_bomb(["x"], deep=deep))
    assert "aliases expand it to more than 1,000,000 values" in err.message
    assert err.path.startswith("tasks.a.commands.start[1].NOT_SET[")
    assert err.line is not None and 8 <= err.line <= 46
    assert str(err).startswith(f"bomb.conf:{err.line}: tasks.a.commands.start[1]")


def test_an_alias_inside_its_own_anchor_is_a_located_error() -> None:
    err = _refused_fast("tasks:\n  a:\n    commands: {start: &s [x, *s]}\n")
    assert (err.line, err.path) == (3, "tasks.a.commands.start[1]")
    assert "refers to the value it is inside of" in err.message


def test_aliases_within_the_budget_still_load() -> None:
    # 100 tasks sharing one 9,000-value argument list through an alias.
    args = "[" + ", ".join(["a"] * 9000) + "]"
    line = "  t{}: {{commands: {{start: [x, {{ARGS: *args}}]}}}}\n"
    tasks = "".join(line.format(i) for i in range(1, 100))
    text = f"tasks:\n  t0: {{commands: {{start: [x, {{ARGS: &args {args}}}]}}}}\n{tasks}"
    config = load_config_text(text, "t.conf")
    assert len(config["tasks"]) == 100


def test_key_lines_are_recorded() -> None:
    config = load_config_text(README_EXAMPLE, "readme.conf")
    assert isinstance(config, LoadedConfig)
    assert config.source == "readme.conf"
    assert config.lines[("tasks", "ntpd")] == 7
    assert config.lines[("tasks", "ntpd", "events", 1, "path")] == 14


def test_load_config_from_file(tmp_path: Any) -> None:
    path = tmp_path / "tf.conf"
    path.write_text(README_EXAMPLE)
    config = load_config(str(path), ALL, facts=FACTS)
    assert config.source == str(path)
    assert set(config["tasks"]) == {"sshd", "ntpd"}


def test_thousand_task_config_loads() -> None:
    tasks = {
        f"t{i:04d}": {
            "control": "wait",
            "requires": [f"t{i - 1:04d}"] if i else [],
            "defines": {"conf": f"/etc/t{i}.conf"},
            "commands": {"start": ["/bin/sleep", "{conf}", "100"], "stop": ["kill"]},
            "events": [
                {"type": "file_change", "path": ["{conf}"], "command": "stop"},
                {"type": "self", "signal": "hup"},
            ],
            "roles": ["web"],
        }
        for i in range(1000)
    }
    config = load_config_text(json.dumps({"tasks": tasks}, indent=2), "big.conf", ALL, facts=FACTS)
    assert len(config["tasks"]) == 1000


# ---------------------------------------------------------------------------
# Error rendering


def test_error_rendering() -> None:
    full = ConfigError("f.conf", 3, "tasks.a.control", "bad", "quote it")
    assert str(full) == "f.conf:3: tasks.a.control: bad (hint: quote it)"
    assert str(ConfigError("f.conf", None, "", "gone")) == "f.conf: gone"
    assert str(ConfigError("f.conf", 2, "", "oops")) == "f.conf:2: oops"
    assert full.errors == [full]


def test_format_path() -> None:
    assert format_path(("tasks", "ntpd", "events", 1, "path")) == "tasks.ntpd.events[1].path"
    assert format_path(("role_defines", "web.front")) == 'role_defines["web.front"]'
    assert format_path(()) == ""


# ---------------------------------------------------------------------------
# YAML problems and the top level


def test_yaml_syntax_error_has_line_and_hint() -> None:
    text = '{\n  "tasks": {\n    "a": {"commands": {"start": ["x"]}}\n    "b": {}\n  }\n}\n'
    err = only_error(text)
    assert err.line == 4
    assert err.path == ""
    assert "YAML syntax error" in err.message
    assert err.hint is not None and "comma" in err.hint
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, "t.conf")
    assert str(raised.value).startswith("t.conf:4: YAML syntax error")


def test_yaml_tab_error_hint() -> None:
    err = only_error("tasks:\n\ta: {}\n")
    assert err.line == 2
    assert err.hint is not None and "tab" in err.hint


def test_multiple_documents_are_an_error() -> None:
    assert only_error("tasks: {}\n---\ntasks: {}\n").line == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "got empty"),
        ("# only a comment\n", "got empty"),
        ("- a\n- b\n", "got a list"),
        ("just text\n", "got the string"),
    ],
)
def test_config_must_be_a_mapping(text: str, message: str) -> None:
    err = only_error(text)
    assert err.path == "" and err.line is None
    assert message in err.message


def test_missing_tasks() -> None:
    err = only_error("defines: {a: b}\n")
    assert (err.path, err.line, err.message, err.hint) == (
        "",
        None,
        "the config has no 'tasks'",
        None,
    )
    assert str(err) == "t.conf: the config has no 'tasks'"


def test_missing_tasks_reports_both_problems() -> None:
    found = errors_of("task:\n  a: {commands: {start: [x]}}\n")
    assert {(e.path, e.line) for e in found} == {("", None), ("task", 1)}
    assert all(e.hint == 'did you mean "tasks"?' for e in found)


def test_tasks_null() -> None:
    err = only_error("tasks:\n")
    assert (err.path, err.line) == ("tasks", 1)
    assert err.message == "expected a mapping of task names to tasks, got null"


def test_unknown_top_level_key() -> None:
    err = only_error("tasks: {}\ndefine: {a: b}\n")
    assert (err.path, err.line, err.hint) == ("define", 2, 'did you mean "defines"?')
    err = only_error("tasks: {}\ncommands: {start: [x]}\n")
    assert err.hint == "task keys belong under tasks.NAME"


def test_duplicate_keys() -> None:
    err = only_error(
        """
        tasks:
          a: {commands: {start: [x]}}
          a: {commands: {start: [y]}}
        """
    )
    assert (err.path, err.line) == ("tasks.a", 3)
    assert err.message == "key given twice (first on line 2)"


def test_unreadable_and_non_utf8_files(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path / "absent.conf"))
    assert raised.value.message == "file not found"
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"tasks:\n  a: \xff\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(bad))
    assert raised.value.line == 2


# ---------------------------------------------------------------------------
# Task keys


def test_control_off_unquoted() -> None:
    err = only_error(
        """
        tasks:
          ntpd:
            control: off
            commands: {start: [ntpd]}
        """
    )
    assert (err.path, err.line) == ("tasks.ntpd.control", 3)
    assert err.hint == 'quote it: "off"'
    assert "got boolean false" in err.message
    assert str(err).startswith("t.conf:3: tasks.ntpd.control: control must be one of wait,")


@pytest.mark.parametrize("word", ["yes", "no", "on", "On", "NO"])
def test_other_yaml_booleans_where_a_string_is_expected(word: str) -> None:
    err = only_error(f"tasks:\n  a:\n    control: {word}\n    commands: {{start: [x]}}\n")
    assert err.hint == f'quote it: "{word}"'
    err = only_error(f"tasks:\n  a:\n    commands: {{start: [x, {word}]}}\n")
    assert (err.path, err.hint) == ("tasks.a.commands.start[1]", f'quote it: "{word}"')


def test_y_and_n_stay_strings() -> None:
    # PyYAML (YAML 1.1 as implemented) does not read y/n as booleans.
    config = load_config_text("tasks:\n  a: {commands: {start: [x, y, n]}}\n", "x")
    assert config["tasks"]["a"]["commands"]["start"] == ("x", "y", "n")


def test_unknown_control() -> None:
    err = only_error("tasks:\n  a:\n    control: wiat\n    commands: {start: [x]}\n")
    assert (err.path, err.line, err.hint) == ("tasks.a.control", 3, 'did you mean "wait"?')


def test_bad_leaf_in_conditional_control() -> None:
    err = only_error(
        "tasks:\n  a:\n    control: {PROD: wait, DEV: stop}\n    commands: {start: [x]}\n"
    )
    assert err.path == "tasks.a.control.DEV"


def test_unknown_task_key() -> None:
    err = only_error("tasks:\n  a:\n    comands: {start: [x]}\n    commands: {start: [x]}\n")
    assert (err.path, err.line) == ("tasks.a.comands", 3)
    assert err.message == "unknown task key 'comands'"
    assert err.hint == 'did you mean "commands"?'


@pytest.mark.parametrize(("key", "raw"), [("1", None), ("yes", "yes"), ("null", "null")])
def test_task_name_not_a_string(key: str, raw: str | None) -> None:
    err = only_error(f"tasks:\n  {key}:\n    commands: {{start: [x]}}\n")
    assert err.line == 2
    assert "is not a string" in err.message
    if raw:
        assert err.hint == f'quote it: "{raw}"'


def test_task_not_a_mapping() -> None:
    err = only_error("tasks:\n  a: [x]\n")
    assert (err.path, err.line) == ("tasks.a", 2)
    assert err.message.startswith("expected a mapping")


def test_missing_commands_and_start() -> None:
    err = only_error("tasks:\n  a: {control: once}\n")
    assert (err.path, err.message) == ("tasks.a", "the task has no commands")
    err = only_error("tasks:\n  a:\n    commands: {Start: [x]}\n")
    assert (err.path, err.line, err.message) == ("tasks.a.commands", 3, "no start command")
    assert err.hint == 'did you mean "start"?'
    err = only_error("tasks:\n  a:\n    commands: {start: []}\n")
    assert (err.path, err.message) == ("tasks.a.commands.start", "command 'start' is empty")


def test_argv_octal_number_trap() -> None:
    err = only_error("tasks:\n  a:\n    commands:\n      start: [chmod, 0755, f]\n")
    assert (err.path, err.line) == ("tasks.a.commands.start[1]", 4)
    assert err.message == "YAML reads 0755 as the number 493, which becomes '493'"
    assert err.hint == 'quote it: "0755"'


def test_sexagesimal_and_float_traps_in_defines() -> None:
    found = errors_of("defines: {T: 1:30, V: 1.10, OK: 1.5, D: yes, E: true}\ntasks: {}\n")
    assert [(e.path, e.hint) for e in found] == [
        ("defines.T", 'quote it: "1:30"'),
        ("defines.V", 'quote it: "1.10"'),
        ("defines.D", 'quote it: "yes"'),
    ]


def test_unquoted_tag_read_as_mapping() -> None:
    err = only_error(
        """
        tasks:
          a:
            defines: {conf: /etc/a.conf}
            commands: {start: [a]}
            events:
              - type: file_change
                path: {conf}
                command: stop
        """
    )
    assert (err.path, err.line) == ("tasks.a.events[0].path", 7)
    assert err.hint == 'quote it: "{conf}"'


def test_requires_unknown_and_self() -> None:
    text = """
    tasks:
      a:
        requires: [b, sshdd, a]
        commands: {start: [x]}
      b: {commands: {start: [x]}}
      sshd: {commands: {start: [x]}}
    """
    found = sorted(errors_of(text), key=lambda e: e.path)
    assert [(e.path, e.line, e.message) for e in found] == [
        ("tasks.a.requires[1]", 3, "requires unknown task 'sshdd'"),
        ("tasks.a.requires[2]", 3, "a task cannot require itself"),
    ]
    assert found[0].hint == 'did you mean "sshd"?'


def test_requires_with_tag_is_left_to_the_core() -> None:
    text = """
    defines: {dep: b}
    tasks:
      a: {requires: "{dep}", commands: {start: [x]}}
      b: {commands: {start: [x]}}
    """
    assert errors_of(text) == []
    assert errors_of(text.replace("dep: b", "dep: c"), ALL)[0].message == (
        "requires unknown task 'c'"
    )


@pytest.mark.parametrize(
    ("line", "path", "message"),
    [
        ("start_delay: -1", "tasks.a.start_delay", "must be >= 0, got -1"),
        ("time_limit: soon", "tasks.a.time_limit", "expected a number >= 0, got the string 'soon'"),
        ("stop_timeout: .nan", "tasks.a.stop_timeout", "expected a finite number, got nan"),
        ("start_delay: true", "tasks.a.start_delay", "expected a number >= 0, got boolean true"),
        ("count: -2", "tasks.a.count", "must be >= 0, got -2"),
        ("count: '2'", "tasks.a.count", "expected a whole number >= 0, got the string '2'"),
        ("count: 1.5", "tasks.a.count", "expected a whole number >= 0, got the number 1.5"),
        ("count: [1]", "tasks.a.count", "expected a single value, got a list"),
        ("cwd: 7", "tasks.a.cwd", "expected a string, got the number 7"),
        ("roles: [web, 'a b']", "tasks.a.roles[1]", "'a b' is not a role name"),
        ("defines: [a]", "tasks.a.defines", "expected a mapping of names to values"),
        ("defines: {A: [1]}", "tasks.a.defines.A", "a defines value must be text"),
        ("role_defines: {web: 1}", "tasks.a.role_defines.web", "expected a mapping"),
        ("onexit: {task: a}", "tasks.a.onexit", "expected a list"),
        ("events: {type: self}", "tasks.a.events", "expected a list"),
    ],
)
def test_task_value_errors(line: str, path: str, message: str) -> None:
    err = only_error(f"tasks:\n  a:\n    commands: {{start: [x]}}\n    {line}\n")
    assert (err.path, err.line) == (path, 4)
    assert err.message.startswith(message), err.message


def test_time_values_may_be_tags() -> None:
    text = "defines: {t: '5'}\ntasks:\n  a:\n    commands: {start: [x]}\n    time_limit: '{t}'\n"
    assert errors_of(text) == []


# ---------------------------------------------------------------------------
# Events and onexit

EVENT_TASK = """
tasks:
  a:
    commands: {{start: [x], reload: [x, -r]}}
    events:
      - {event}
  b: {{commands: {{start: [y]}}}}
"""


@pytest.mark.parametrize(
    ("event", "path", "message"),
    [
        ("{type: self}", "tasks.a.events[0]", "the event has no action"),
        ("{command: stop}", "tasks.a.events[0]", "the event has no type"),
        ("{type: slef, command: stop}", "tasks.a.events[0].type", "event type must be one of"),
        (
            "{type: self, command: stop, signal: HUP}",
            "tasks.a.events[0]",
            "an event has one action",
        ),
        ("{type: self, command: relaod}", "tasks.a.events[0].command", "no command 'relaod'"),
        ("{type: self, signal: HUPP}", "tasks.a.events[0].signal", "unknown signal 'HUPP'"),
        ("{type: self, signal: 0}", "tasks.a.events[0].signal", "unknown signal 0"),
        ("{type: file_change, command: stop}", "tasks.a.events[0]", "a file_change event needs"),
        ("{type: self, command: stop, path: /x}", "tasks.a.events[0].path", "'path' is only for"),
        ("{type: external, command: stop}", "tasks.a.events[0]", "a external event needs 'name'"),
        ("{type: self, command: stop, name: x}", "tasks.a.events[0].name", "'name' is only for"),
        ("{type: self, command: stop, when: now}", "tasks.a.events[0].when", "unknown event key"),
        ("{type: self, command: [stop]}", "tasks.a.events[0].command", "expected a single value"),
        ("self", "tasks.a.events[0]", "expected an event mapping"),
    ],
)
def test_event_errors(event: str, path: str, message: str) -> None:
    err = only_error(EVENT_TASK.format(event=event))
    assert (err.path, err.line) == (path, 5)
    assert err.message.startswith(message), err.message


def test_event_hints() -> None:
    err = only_error(EVENT_TASK.format(event="{type: self, signal: HUPP}"))
    assert err.hint == 'did you mean "SIGHUP"?'
    err = only_error(EVENT_TASK.format(event="{type: self, command: relaod}"))
    assert err.hint == 'did you mean "reload"?'


def test_accepted_events() -> None:
    text = EVENT_TASK.format(event="{type: restart, command: reload}").replace(
        "      - {", "      - {type: external, name: deploy, signal: 10}\n      - {", 1
    )
    events = load_config_text(dedent(text), "x")["tasks"]["a"]["events"]
    assert events[0] == {"type": "external", "signal": "SIGUSR1", "name": "deploy"}
    # stop and start need no entry in commands.
    for action in ("stop", "start"):
        assert errors_of(EVENT_TASK.format(event=f"{{type: stop, command: {action}}}")) == []


def test_second_stop_event() -> None:
    text = EVENT_TASK.format(event="{type: stop, signal: INT}\n      - {type: stop, signal: TERM}")
    err = only_error(text)
    assert (err.path, err.line) == ("tasks.a.events[1].type", 6)


def test_onexit_errors() -> None:
    text = """
    tasks:
      a:
        commands: {start: [x]}
        onexit:
          - {type: start, task: bb}
          - {type: stop, task: b}
          - {type: start}
          - {task: b, what: 1}
      b: {control: once, commands: {start: [y]}}
    """
    found = errors_of(text)
    assert [(e.path, e.line) for e in found] == [
        ("tasks.a.onexit[0].task", 5),
        ("tasks.a.onexit[1].type", 6),
        ("tasks.a.onexit[2]", 7),
        ("tasks.a.onexit[3].what", 8),
    ]
    assert found[0].message == "onexit starts unknown task 'bb'"
    assert found[0].hint == 'did you mean "b"?'


# ---------------------------------------------------------------------------
# Settings, all_roles and known_roles


@pytest.mark.parametrize(
    ("settings", "path", "message", "hint"),
    [
        ("{htpp: []}", "settings.htpp", "unknown settings key 'htpp'", 'did you mean "http"?'),
        ("{http: {listen: x}}", "settings.http", "expected a list of services", None),
        (
            "{http: [{listen: /s, allow_control: 'false'}]}",
            "settings.http[0].allow_control",
            "expected true or false, got the string 'false'",
            "write true or false without quotes",
        ),
        (
            "{http: [{listen: 8080}]}",
            "settings.http[0].listen",
            "expected an address",
            'for a TCP port write ":8080"',
        ),
        ("{http: [{listen: /s, timeout: 0}]}", "settings.http[0].timeout", "must be > 0", None),
        ("{http: [{listen: /s, port: 1}]}", "settings.http[0].port", "unknown http service", None),
        ("{stop_timeout: -1}", "settings.stop_timeout", "must be >= 0", None),
        ("{stable_after: '{x}'}", "settings.stable_after", "expected a number", None),
        ("{record: 5}", "settings.record", "expected a file path, {file: PATH", None),
        ("{record: {max_bytes: 1M}}", "settings.record", "record needs file: PATH", None),
        ("{record: {file: /e, max_bytes: 0}}", "settings.record.max_bytes", "must be > 0", None),
        (
            "{record: {file: /e, backups: lots}}",
            "settings.record.backups",
            "expected a whole",
            None,
        ),
        (
            "{record: {file: /e, checkpoint_bytes: '{x}'}}",
            "settings.record.checkpoint_bytes",
            "settings take no",
            None,
        ),
        (
            "{record: {file: /e, checkpoint: 1M}}",
            "settings.record.checkpoint",
            "unknown record key",
            'did you mean "checkpoint_bytes"?',
        ),
        ("{output: [a]}", "settings.output", "output must be one of", None),
        (
            "{known_roles: [web, 'a b']}",
            "settings.known_roles[1]",
            "'a b' is not a role name",
            None,
        ),
        (
            # The list this key held before: refused, and where it went said.
            "{all_roles: [web, db]}",
            "settings.all_roles",
            "all_roles is true or false (true: a task needs all of its roles",
            "rename this key to known_roles",
        ),
        (
            "{all_roles: web}",
            "settings.all_roles",
            "all_roles is true or false",
            "rename this key to known_roles",
        ),
        (
            "{all_roles: 'true'}",
            "settings.all_roles",
            "expected true or false, got the string 'true'",
            "write true or false without quotes",
        ),
        (
            "{backoff_initial: 10, backoff_max: 5}",
            "settings.backoff_max",
            "backoff_max (5) is below backoff_initial (10)",
            None,
        ),
    ],
)
def test_settings_errors(settings: str, path: str, message: str, hint: str | None) -> None:
    err = only_error(f"tasks: {{}}\nsettings: {settings}\n")
    assert (err.path, err.line) == (path, 2)
    assert err.message.startswith(message), err.message
    assert err.hint == hint


def test_known_roles_covers_every_role_named() -> None:
    text = """
    settings: {known_roles: [web, db]}
    role_defines: {web: {a: "1"}, cache: {a: "2"}}
    role_defaults: {dbb: {b: "1"}}
    tasks:
      a:
        roles: [web, front]
        role_defaults: {db: {c: "1"}, mail: {c: "2"}}
        commands: {start: [x]}
    """
    found = errors_of(text)
    assert [(e.path, e.line) for e in found] == [
        ("role_defines.cache", 2),
        ("role_defaults.dbb", 3),
        ("tasks.a.roles[1]", 6),
        ("tasks.a.role_defaults.mail", 7),
    ]
    assert found[0].message == "role 'cache' is not in settings.known_roles"
    assert found[1].hint == 'did you mean "db"?'


def test_without_known_roles_any_role_is_fine() -> None:
    assert errors_of("tasks:\n  a: {roles: [anything], commands: {start: [x]}}\n") == []


# ---------------------------------------------------------------------------
# Errors found by the core's build(), placed by line


def test_dependency_cycle() -> None:
    text = """
    tasks:
      a: {requires: b, commands: {start: [x]}}
      b:
        requires: [a]
        commands: {start: [x]}
    """
    assert errors_of(text) == []  # schema alone is happy
    err = only_error(text, ALL)
    assert (err.path, err.line) == ("tasks.a.requires", 2)
    assert err.message == "dependency cycle: a -> b -> a"


def test_conditional_resolving_badly_is_placed_on_its_task() -> None:
    text = """
    tasks:
      a:
        count: {HOME: 1, PATH: 2}
        commands: {start: [x]}
    """
    err = only_error(text, ALL)
    assert (err.path, err.line) == ("tasks.a", 2)
    assert "2 values" in err.message


def test_empty_start_after_resolution_uses_nearest_line() -> None:
    text = """
    tasks:
      a:
        commands:
          start: [{NOT_SET_ANYWHERE: x}]
    """
    err = only_error(text, ALL)
    assert (err.path, err.line) == ("tasks.a.commands.start", 4)
    assert err.message == "start command is empty"


def test_check_without_lines() -> None:
    config = {
        "tasks": {"a": {"requires": ("zz",), "commands": {"start": ("x",)}}},
        "settings": {},
    }
    with pytest.raises(ConfigError) as raised:
        check(config, "plain", None, None, facts=FACTS)
    assert raised.value.line is None
    assert raised.value.path == "tasks.a.requires[0]"


def test_all_errors_collected_in_line_order() -> None:
    text = """
    tasks:
      a:
        control: off
        commands: {start: [x]}
        requires: [nope]
      b:
        comands: {}
    settings: {bogus: 1}
    """
    found = errors_of(text)
    assert [e.line for e in found] == sorted(e.line or 0 for e in found)
    assert [e.path for e in found] == [
        "tasks.a.control",
        "tasks.a.requires[0]",
        "tasks.b",
        "tasks.b.comands",
        "settings.bogus",
    ]
    with pytest.raises(ConfigError) as raised:
        load_config_text(dedent(text), "t.conf")
    assert raised.value.path == "tasks.a.control"
    assert [str(e) for e in raised.value.errors] == [str(e) for e in found]


# ---------------------------------------------------------------------------
# Roles file


def test_roles_file_forms(tmp_path: Any) -> None:
    path = tmp_path / "roles"
    path.write_text(
        "# roles of this host\n"
        "\n"
        "  web  \n"
        "db # the database\n"
        "   # indented comment\n"
        "shard = 3\n"
        "zone=eu-west # where\n"
        "a.b-c_d\n"
    )
    roles = load_roles(str(path))
    assert roles.names == ("web", "db", "shard", "zone", "a.b-c_d")
    assert roles.values == {"shard": "3", "zone": "eu-west"}
    assert roles.source == str(path)
    assert roles.lines["shard"] == 6


def test_roles_none_and_missing(tmp_path: Any) -> None:
    assert load_roles(None) == Roles(None, {}, None)
    # A roles file named but not there never means "every task in scope".
    path = str(tmp_path / "nope")
    with pytest.raises(RolesFileMissing) as raised:
        load_roles(path)
    assert (
        str(raised.value) == f'{path}: roles file not found (hint: give "-r -" for no roles file)'
    )
    assert isinstance(raised.value, ConfigError)


def test_empty_roles_file(tmp_path: Any) -> None:
    path = tmp_path / "roles"
    path.write_text("# nothing here\n")
    assert load_roles(str(path)).names == ()


@pytest.mark.parametrize(
    ("text", "line", "message", "hint"),
    [
        ("web\nweb app\n", 2, "'web app' is not a role name", "one role per line"),
        ("web\nbad!\n", 2, "'bad!' is not a role name", None),
        ("=x\n", 1, "'' is not a role name", None),
        ("web\ndb\nweb=1\n", 3, "role 'web' is listed twice (first on line 1)", None),
    ],
)
def test_roles_file_errors(text: str, line: int, message: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_roles(text, "roles.conf")
    err = raised.value
    assert (err.file, err.line, err.path, err.hint) == ("roles.conf", line, "", hint)
    assert err.message.startswith(message)


def test_roles_file_collects_all_errors() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_roles("a b\nok\nc!\n", "roles.conf")
    assert [e.line for e in raised.value.errors] == [1, 3]


def test_role_values_reach_the_environment() -> None:
    roles = parse_roles("web\nshard=3\n", "roles.conf")
    text = "tasks:\n  a: {roles: [web], commands: {start: [x, '{Task_role_shard}']}}\n"
    config = load_config_text(text, "t.conf", roles, facts=FACTS)
    spec = check(config, "t.conf", roles, facts=FACTS)["a"]
    assert spec.in_scope
    assert spec.processes[0].argv == ("x", "3")
    assert spec.processes[0].env["Task_role_shard"] == "3"
    assert "Task_role_web" not in spec.processes[0].env


def test_role_values_reach_every_task_and_bare_roles_none() -> None:
    # As the original: each name=value line is exported to every task; a
    # bare role decides scope (and conditionals) but is exported to none.
    text = dedent(
        """
        tasks:
          plain: {commands: {start: [x]}}
          webby: {roles: [web], commands: {start: [x, {Task_role_web: --web}]}}
          other: {roles: [db], commands: {start: [x]}}
        """
    )
    roles = parse_roles("web\ndc=eu-west-1\nempty=\n", "roles.conf")
    specs = check(
        load_config_text(text, "t.conf", roles, facts=FACTS), "t.conf", roles, facts=FACTS
    )
    for name in ("plain", "webby", "other"):
        env = specs[name].processes[0].env
        assert env["Task_role_dc"] == "eu-west-1", name
        assert env["Task_role_empty"] == "", name
        assert not any(key == "Task_role_web" for key in env), name
    assert specs["webby"].processes[0].argv == ("x", "--web")
    assert not specs["other"].in_scope


def test_a_bare_role_change_leaves_the_specs_of_tasks_in_scope_unchanged() -> None:
    text = dedent(
        """
        tasks:
          both: {roles: [frontend, backend], commands: {start: [x]}}
          plain: {commands: {start: [x]}}
        """
    )

    def built(roles_text: str) -> dict[str, Any]:
        roles = parse_roles(roles_text, "roles.conf")
        return check(
            load_config_text(text, "t.conf", roles, facts=FACTS), "t.conf", roles, facts=FACTS
        )

    front, back = built("frontend\n"), built("backend\nextra\n")
    assert front == back
    # A value is another matter: it is in every environment.
    assert built("frontend\ndc=x\n")["plain"] != front["plain"]


def test_all_roles_true_needs_every_role_of_a_task() -> None:
    def scope(all_roles: str, roles_text: str) -> dict[str, bool]:
        text = dedent(
            f"""
            settings: {{all_roles: {all_roles}}}
            tasks:
              web_and_db: {{roles: [web, db], commands: {{start: [x]}}}}
              web: {{roles: web, commands: {{start: [x]}}}}
              anywhere: {{commands: {{start: [x]}}}}
            """
        )
        roles = parse_roles(roles_text, "roles.conf")
        config = load_config_text(text, "t.conf", roles, facts=FACTS)
        return {n: s.in_scope for n, s in check(config, "t.conf", roles, facts=FACTS).items()}

    assert scope("false", "web\n") == {"web_and_db": True, "web": True, "anywhere": True}
    assert scope("null", "web\n") == {"web_and_db": True, "web": True, "anywhere": True}
    assert scope("true", "web\n") == {"web_and_db": False, "web": True, "anywhere": True}
    assert scope("true", "db=1\nweb\n") == {"web_and_db": True, "web": True, "anywhere": True}
    assert scope("true", "") == {"web_and_db": False, "web": False, "anywhere": True}


def test_names_and_values_calling_style(tmp_path: Any) -> None:
    # load_config(path, roles=names, role_values=values), as the daemon calls it;
    # roles=None is "no roles file" and still builds (here: finds the cycle).
    path = tmp_path / "tf.conf"
    path.write_text(
        "tasks:\n"
        "  a: {requires: a2, commands: {start: [x]}}\n"
        "  a2: {requires: a, commands: {start: [x]}}\n"
    )
    assert set(load_config(str(path))["tasks"]) == {"a", "a2"}  # schema only
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), roles=None, role_values={}, facts=FACTS)
    assert raised.value.message.startswith("dependency cycle")
    text = "tasks:\n  a: {roles: [web], commands: {start: [x, '{Task_role_web}']}}\n"
    config = load_config_text(text, "t", roles=("web",), role_values={"web": "v"}, facts=FACTS)
    assert check(config, "t", ("web",), {"web": "v"}, FACTS)["a"].processes[0].argv == ("x", "v")


def test_roles_against_known_roles() -> None:
    config = load_config_text("settings: {known_roles: [web, db]}\ntasks: {}\n", "t.conf")
    check_roles_against(config, parse_roles("web\ndb\n", "roles.conf"))
    check_roles_against(config, Roles(None))
    with pytest.raises(ConfigError) as raised:
        check_roles_against(config, parse_roles("web\n# x\ndbb\n", "roles.conf"))
    err = raised.value
    assert (err.file, err.line, err.hint) == ("roles.conf", 3, 'did you mean "db"?')
    assert err.message == "role 'dbb' is not in settings.known_roles of t.conf"
    # load_config with roles runs the same check.
    found = validate_all(
        "settings: {known_roles: [web]}\ntasks: {}\n", "t.conf", parse_roles("mail\n", "r")
    )
    assert [(e.file, e.line) for e in found] == [("r", 1)]


def test_roles_without_known_roles_are_free() -> None:
    config = load_config_text("tasks: {}\n", "t.conf")
    check_roles_against(config, parse_roles("anything\n", "roles.conf"))


def test_deep_requires_chain_never_crashes() -> None:
    tasks = {
        f"t{i:04d}": {
            "requires": [f"t{i + 1:04d}"] if i < 1499 else [],
            "commands": {"start": ["x"]},
        }
        for i in range(1500)
    }
    # Either it builds or it is reported; a reload must never crash.
    found = validate_all(json.dumps({"tasks": tasks}), "deep.conf", ALL, facts=FACTS)
    assert all(isinstance(err, ConfigError) for err in found)


def test_a_loaded_config_reads_its_key_lines_again_only_when_asked() -> None:
    text = dedent(
        """
        tasks:
          a: {commands: {start: [x]}}
          b:
            requires: [{dep}]
            commands: {start: [x]}
        """
    ).replace("{dep}", "'{dep}'")
    config = load_config_text(text, "t.conf")
    assert config._lines is None, "no table of lines is kept after a clean load"
    with pytest.raises(ConfigError) as raised:
        check(config, "t.conf", ALL, facts=FACTS)
    assert str(raised.value).startswith("t.conf:4: tasks.b.requires[0]: requires unknown task")
    assert config.lines[("tasks", "b", "commands")] == 5


@pytest.mark.parametrize("host", [socket.gethostname(), "localhost", "nowhere.invalid", "hôte"])
def test_a_hosts_fully_qualified_name_is_what_getfqdn_answers(host: str) -> None:
    from taskforce.config import _fully_qualified

    assert _fully_qualified(host) == socket.getfqdn(host)
