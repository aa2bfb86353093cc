"""A config read again piece by piece (``taskforce.config.entries``).

The shortcut must give exactly what reading the whole document gives --
the same normalized config, the same lines, the same errors -- and decline
wherever it could not be sure; an unchanged task must keep its very entry
and spec objects, which is what makes a reload cost what changed.  The
event log's line for a config, written entry by entry, must be the line
``json.dumps`` writes for the whole step (replay reads it back).
"""

from __future__ import annotations

import gc
import json
import random
import tracemalloc

import pytest

from taskforce import eventlog
from taskforce.config import ConfigError, entries, load_config_text
from taskforce.config.document import parse
from taskforce.config.schema import Schema
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import encode
from taskforce.core.model import HostFacts, build

FACTS = HostFacts(environ={"PATH": "/bin"}, host="h", fqdn="h.example", pid=7)


def whole(text: str) -> tuple[dict, dict]:
    """The config and lines as the whole document reads (no pieces)."""
    parsed = parse(text, "<config>")
    schema = Schema("<config>", parsed)
    config = schema.top(parsed.data)
    assert not schema.errors, [str(e) for e in schema.errors]
    return config, parsed.lines


def block(n: int, changed: int | None = None, extra: str = "") -> str:
    lines = ["# a fleet", "settings: {stop_timeout: 3}", "tasks:", "  # the workers"]
    for i in range(n):
        seconds = 99999 if i == changed else 1000 + i
        lines.append(f'  w{i:03d}: {{commands: {{start: ["/bin/sleep", "{seconds}"]}}{extra}}}')
    lines += ["defines:", "  ZONE: eu", ""]
    return "\n".join(lines)


def flow(n: int, changed: int | None = None, indent: int = 1) -> str:
    tasks = {
        f"w{i:03d}": {"commands": {"start": ["/bin/sleep", str(99999 if i == changed else i)]}}
        for i in range(n)
    }
    return json.dumps({"settings": {"stop_timeout": 3}, "tasks": tasks}, indent=indent)


NESTED = """\
tasks:
  web:
    commands:
      start: [/usr/bin/web, --port, "8080"]
      stop: |
        kill it

        gently
    # a comment inside
    defines: {A: b}
    events:
      - {type: self, command: stop}
  db: {
    commands: {start: [/usr/bin/db]},
    requires: web
  }
  anchored:
    commands: &cmds {start: [/bin/x]}
    defaults: {C: d}
settings:
  stop_timeout: 2
"""


@pytest.mark.parametrize(
    "text",
    [block(5), block(5, 2), flow(4), flow(4, 1, indent=2), NESTED],
    ids=["block", "block-changed", "json", "json-indent-2", "nested"],
)
def test_pieces_read_as_the_whole_document(text: str) -> None:
    for _ in range(2):  # cold, then from what was kept
        config = entries.check(text, "<config>")
        assert config is not None
        expected, lines = whole(text)
        assert config == expected
        assert list(config["tasks"]) == list(expected["tasks"])
        assert config.lines == lines


def test_an_unchanged_task_keeps_its_entry_and_spec() -> None:
    first = load_config_text(block(20), roles=None)
    second = load_config_text(block(20, changed=7), roles=None)
    for name in first["tasks"]:
        same = first["tasks"][name] is second["tasks"][name]
        assert same == (name != "w007"), name
    specs = build(first, FACTS, None)
    again = build(second, FACTS, None)
    assert [n for n in specs if specs[n] is not again[n]] == ["w007"]
    assert again["w007"].processes[0].argv == ("/bin/sleep", "99999")


def test_random_edits_read_as_the_whole_document() -> None:
    rng = random.Random(17)
    tasks = {f"t{i}": f"{{commands: {{start: [/bin/t{i}]}}}}" for i in range(30)}
    for _ in range(40):
        name = rng.choice(sorted(tasks))
        kind = rng.randrange(4)
        if kind == 0:
            program, count = rng.randrange(9), rng.randrange(1, 3)
            tasks[name] = f"{{commands: {{start: [/bin/{program}]}}, count: {count}}}"
        elif kind == 1:
            tasks.pop(name)
        elif kind == 2:
            tasks[f"n{rng.randrange(1000)}"] = "{commands: {start: [/bin/new]}}"
        else:
            tasks[name] = "\n    commands:\n      start: [/bin/multi, line]\n    control: once"
        text = "tasks:\n" + "".join(f"  {n}: {v}\n" for n, v in tasks.items())
        config = entries.check(text, "<config>")
        assert config is not None
        expected, lines = whole(text)
        assert config == expected
        assert config.lines == lines


@pytest.mark.parametrize(
    "text",
    [
        "tasks:\n\ta: {commands: {start: [x]}}\n",
        "tasks:\r\n  a: {commands: {start: [x]}}\r\n",
        # an alias to another task's anchor: the piece cannot be read alone
        "tasks:\n  a: {commands: &c {start: [x]}}\n  b: {commands: *c}\n",
        "tasks:\n  a: {commands: {start: [x]}}\n  a: {commands: {start: [y]}}\n",
        "tasks:\n- a\n",
        '{"tasks": {"a": {"commands": {"start": ["x"]}}}}',
        "tasks: {a: {commands: {start: [x]}}}\n",
        # a flow mapping whose lines YAML does not read by indentation
        "tasks:\n  a: {commands: {start: [x,\ny]}}\n",
        "tasks:\n  a: {commands: {start: [x]}}\n  b: {commands: {start: []}}\n",
    ],
    ids=["tab", "crlf", "alias", "twice", "list", "json-one-line", "flow", "dedent", "error"],
)
def test_declines_where_it_cannot_be_sure(text: str) -> None:
    entries.check(text, "<config>")  # (what it keeps must not matter either)
    assert entries.check(text, "<config>") is None


def test_a_bad_edit_is_reported_as_before() -> None:
    text = block(10)
    load_config_text(text, roles=None)
    bad = text.replace('"1004"]}}', '"1004"]}, bogus: 1, count: -1}')
    parsed = parse(bad, "<config>")
    schema = Schema("<config>", parsed)
    schema.top(parsed.data)
    expected = sorted(schema.errors, key=lambda err: err.line or 0)
    assert len(expected) == 2
    with pytest.raises(ConfigError) as raised:
        load_config_text(bad, roles=None)
    assert raised.value.report() == [err.report()[0] for err in expected]
    line = next(i for i, x in enumerate(bad.splitlines(), 1) if "bogus" in x)
    assert str(raised.value).startswith(f"<config>:{line}: tasks.w004")


def test_a_yaml_surprise_in_a_kept_config_is_still_caught() -> None:
    text = block(5)
    load_config_text(text, roles=None)
    with pytest.raises(ConfigError, match="quote it"):
        load_config_text(text.replace('"1003"', "0755"), roles=None)


def test_a_build_error_finds_its_line() -> None:
    text = block(5)
    load_config_text(text, roles=None)
    bad = text.replace('"/bin/sleep", "1002"]}', '"/bin/sleep", "1002"]}, requires: nope')
    with pytest.raises(ConfigError) as raised:
        load_config_text(bad, roles=None, facts=FACTS)
    line = next(i for i, x in enumerate(bad.splitlines(), 1) if "nope" in x)
    assert f"<config>:{line}:" in str(raised.value)


def test_too_many_values_is_left_to_the_whole_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entries, "MAX_NODES", 20)
    assert entries.check(block(10), "<config>") is None


@pytest.mark.parametrize("secret", ["", ", defines: {API_TOKEN: tok-tok-tok}"])
def test_the_log_line_of_a_config_is_the_whole_steps(secret: str) -> None:
    fast, slow = eventlog.Digests("salt"), eventlog.Digests("salt")
    for changed in (None, 3, 4):
        text = block(8, changed, extra=secret).replace("w005", "env")
        text = text.replace("ZONE: eu", "DB_PASSWORD: hunter2hunter2")
        config = load_config_text(text, roles=None)
        event = ev.ConfigLoaded(at=2.5, config=config, roles=None, source="config")
        effects = (fx.Log("info", "said hunter2hunter2 aloud"),)
        line = eventlog.step_line(changed or 0, event, effects, fast)
        step = {"step": changed or 0, "event": encode(event), "effects": [encode(effects[0])]}
        assert line == json.dumps(slow.step(event, step), separators=(",", ":"))
        assert "hunter2" not in line and "tok-tok" not in line


def test_a_secret_first_seen_in_a_later_effect_is_hidden_in_an_earlier_one() -> None:
    from taskforce.core.specs import ProcessSpec

    fast, slow = eventlog.Digests("salt"), eventlog.Digests("salt")
    config = load_config_text(block(3), roles=None)
    event = ev.ConfigLoaded(at=2.5, config=config, roles=None, source="config")
    spec = ProcessSpec(argv=("/bin/run",), env={"API_TOKEN": "zz-only-in-a-spawn-zz"})
    effects = (
        fx.Log("info", "about to pass zz-only-in-a-spawn-zz on"),
        fx.Spawn.of(spec, task="w000", instance=0, generation=1),
    )
    line = eventlog.step_line(1, event, effects, fast)
    step = {"step": 1, "event": encode(event), "effects": [encode(e) for e in effects]}
    assert line == json.dumps(slow.step(event, step), separators=(",", ":"))
    assert "zz-only" not in line


def test_the_log_line_stays_the_whole_steps_as_tasks_come_go_and_move() -> None:
    fast, slow = eventlog.Digests("salt"), eventlog.Digests("salt")
    lines = block(8).split("\n")
    head, tasks, tail = lines[:4], lines[4:12], lines[12:]
    for order in (
        tasks,
        tasks[:3] + tasks[4:],  # one gone
        tasks[:3] + tasks[4:] + [tasks[3]],  # back, at the end
        tasks[::-1],  # every one moved
        [tasks[0].replace("w000", "zzz")] + tasks[::-1][:-1],  # a new name first
        tasks[::-1],
    ):
        text = "\n".join([*head, *order, *tail])
        config = load_config_text(text, roles=None)
        event = ev.ConfigLoaded(at=2.5, config=config, roles=None, source="config")
        step = {"step": 1, "event": encode(event), "effects": []}
        expected = json.dumps(slow.step(event, step), separators=(",", ":"))
        assert eventlog.step_line(1, event, (), fast) == expected


def test_a_cycle_made_by_one_edit_is_found() -> None:
    text = "tasks:\n  a: {commands: {start: [x]}, requires: b}\n  b: {commands: {start: [y]}}\n"
    load_config_text(text, roles=None, facts=FACTS)
    with pytest.raises(ConfigError, match="dependency cycle"):
        load_config_text(text.replace("[y]}}", "[y]}, requires: a}"), roles=None, facts=FACTS)
    load_config_text(text, roles=None, facts=FACTS)


def test_a_config_read_again_keeps_no_copy_of_its_text() -> None:
    long = "x" * 300  # (most of the text: what a copy of it would cost shows)
    text = "tasks:\n" + "".join(
        f"  t{i}: {{commands: {{start: [/bin/run, {long}{i}]}}}}\n" for i in range(200)
    )
    entries.check(text, "<config>")
    again = (text + " ")[:-1]  # an equal text, a string of its own (as a reload reads)
    assert again is not text
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        config = entries.check(again, "<config>")
        del again
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert config is not None
    # The config's own mapping, yes; the text (or its pieces) a second time, no.
    assert held < len(text) // 4, (held, len(text))
    assert config.lines == whole(text)[1]


def test_new_pieces_are_read_a_few_at_a_time_as_the_whole_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(entries, "READ_AT_ONCE", 3)
    monkeypatch.setattr(entries, "_CHECKS", entries._Checks())
    read: list[int] = []
    real = entries._read
    monkeypatch.setattr(
        entries, "_read", lambda pieces, *args: read.append(len(pieces)) or real(pieces, *args)
    )
    for text in (block(8), block(8, changed=6), flow(7)):
        config = entries.check(text, "<config>")
        assert config is not None
        expected, lines = whole(text)
        assert config == expected and config.lines == lines
    assert read == [3, 3, 2, 1, 3, 3, 1], "each new piece read once, at most 3 together"
    # A bad piece in a later batch: declined, the whole document says where.
    bad = block(8, changed=7).replace('"99999"]}}', '"99999"]}, bogus: 1}')
    assert entries.check(bad, "<config>") is None


def test_the_same_text_again_keeps_one_table_and_the_one_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks = entries._Checks()
    monkeypatch.setattr(entries, "_CHECKS", checks)
    assert entries.check(block(6), "<config>") is not None
    first = checks.last
    assert entries.check(block(6, changed=2), "<config>") is not None
    changed = checks.last
    assert checks.before is first
    for _ in range(2):  # (a start reads its config twice: the check, then the daemon)
        assert entries.check(block(6, changed=2), "<config>") is not None
        assert checks.last is changed and checks.before is first
    # Going back finds the first load's entries: none is read again.
    read: list[str] = []
    real = entries._read
    monkeypatch.setattr(
        entries, "_read", lambda pieces, *a: read.extend(pieces) or real(pieces, *a)
    )
    assert entries.check(block(6), "<config>") is not None
    assert read == []


def test_building_the_config_again_keeps_one_table_of_its_specs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shell validates a config, then the core builds it: both builds
    # take every spec from the first, and one table of them is kept.
    from taskforce.core import model

    config = load_config_text(block(6), roles=None)
    other = load_config_text(block(6, changed=2), roles=None)
    monkeypatch.setattr(model, "_BUILDS", [])
    validated = build(config, FACTS, None)
    applied = build(config, FACTS, None)
    assert validated == applied and validated is not applied  # (each caller's own)
    assert all(applied[name] is spec for name, spec in validated.items())
    assert len(model._BUILDS) == 1
    changed = build(other, FACTS, None)
    assert len(model._BUILDS) == 2 and model._BUILDS[0][2] is not model._BUILDS[1][2]
    assert sum(changed[name] is not spec for name, spec in validated.items()) == 1


def test_the_log_line_of_a_reload_writes_again_only_the_changed_entries() -> None:
    digests = eventlog.Digests("salt")
    hidden: list[object] = []
    real = digests.hider.hide

    def spy(data: object, *args: bool) -> object:
        if any(data is entry for entry in config["tasks"].values()):
            hidden.append(data)
        return real(data, *args)

    digests.hider.hide = spy  # type: ignore[method-assign]
    for changed, expected in ((None, 8), (3, 1), (3, 0)):
        config = load_config_text(block(8, changed), roles=None)
        event = ev.ConfigLoaded(at=2.5, config=config, roles=None, source="config")
        hidden.clear()
        eventlog.step_line(1, event, (), digests)
        assert len(hidden) == expected, changed
        if changed is not None and expected:
            assert hidden == [config["tasks"]["w003"]]
