"""The docs and examples say what the code does, and stay that way.

- ``docs/config.md`` documents every key ``taskforce/config.py`` accepts (the
  key tuples are read from the module, so a new key fails here until it is
  documented), documents nothing it does not accept, gives each key a
  default and an example, and every ``yaml`` example in it loads.
- ``docs/lifecycle.md`` is what ``docs/lifecycle.py`` generates from the
  transitions table right now (regenerate with
  ``python docs/lifecycle.py > docs/lifecycle.md``).
- Every example config under ``examples/`` passes ``taskforce -C`` with each
  of its roles files, and the fleet example's roles put on each kind of host
  exactly the tasks its README says.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from daemon_harness import Daemon, wait_for

import taskforce.config as config_module
from taskforce.config import ConfigError, check, load_config, load_config_text, load_roles
from taskforce.control.listen import DEFAULT_TIMEOUT
from taskforce.core.model import DEFAULT_OUTPUT, DEFAULT_SETTINGS, HostFacts

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
CONFIG_MD = DOCS / "config.md"

#: A fixed host, so that nothing here depends on the machine's environment.
FACTS = HostFacts(environ={"PATH": "/usr/bin:/bin"}, host="h1", fqdn="h1.example.com", pid=1)

# ---------------------------------------------------------------------------
# docs/config.md

#: Where each key tuple of taskforce.config is documented: (section title,
#: how each member appears there).  "heading": a ``### `key` `` (or ####)
#: heading of its own, with a default and an example; "row": a table row
#: ``| `value` |``.  A tuple missing here fails the test: document it, then
#: add it.
SECTIONS: dict[str, tuple[str, str]] = {
    "TOP_KEYS": ("Top level", "heading"),
    "SETTINGS_KEYS": ("Settings keys", "heading"),
    "HTTP_KEYS": ("Settings keys", "heading"),
    "RECORD_KEYS": ("Settings keys", "row"),
    "START_LIMIT_KEYS": ("Task keys", "text"),
    "ALLOW_KEYS": ("Settings keys", "text"),
    "TASK_KEYS": ("Task keys", "heading"),
    "CONTROLS": ("Controls", "row"),
    "EVENT_TYPES": ("Event types and actions", "heading"),
    "EVENT_KEYS": ("Event types and actions", "row"),
    "BUILTIN_COMMANDS": ("Event types and actions", "text"),
    "ONEXIT_KEYS": ("onexit entries", "row"),
    "ONEXIT_TYPES": ("onexit entries", "row"),
    "OUTPUT_MODES": ("Output destinations", "row"),
    "OUTPUT_FILE_KEYS": ("Output destinations", "row"),
    "LIMIT_NAMES": ("Resource limits", "row"),
    "ENVIRONMENTS": ("Environment choices", "row"),
    "SOCKET_KEYS": ("Sockets", "heading"),
}
#: Sections whose key headings must each carry a "Default:".
NEEDS_DEFAULT = {"Top level", "Settings keys", "Task keys", "Sockets"}


def key_tuples() -> dict[str, tuple[str, ...]]:
    """Every public tuple of strings in taskforce.config: the accepted keys and values."""
    return {
        name: value
        for name, value in vars(config_module).items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, tuple)
        and value
        and all(isinstance(item, str) for item in value)
    }


def sections(text: str) -> dict[str, str]:
    """The ``## `` sections of a markdown text, by title (code blocks skipped)."""
    out: dict[str, str] = {}
    title = ""
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            title = line[3:].strip()
            out[title] = ""
            continue
        out[title] = out.get(title, "") + line
    return out


_HEADING = re.compile(r"^(#{3,4}) `([^`]+)`\s*$", re.MULTILINE)


def key_blocks(section: str) -> dict[str, str]:
    """The ``### `key` `` / ``#### `key` `` blocks of a section, by key."""
    marks = list(_HEADING.finditer(section))
    out = {}
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(section)
        out[mark.group(2)] = section[mark.end() : end]
    return out


def code_blocks(text: str, lang: str) -> Iterator[tuple[int, str]]:
    """(line, body) of each fenced block of ``lang``."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == f"```{lang}":
            start = index + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            yield start + 1, "\n".join(lines[start:end]) + "\n"
            index = end
        index += 1


@pytest.fixture(scope="module")
def config_md() -> str:
    return CONFIG_MD.read_text(encoding="utf-8")


def test_every_key_tuple_is_mapped_to_a_section() -> None:
    unmapped = sorted(set(key_tuples()) - set(SECTIONS))
    assert not unmapped, (
        f"taskforce.config has key tuples {unmapped} that docs/config.md does not cover: "
        "document them there and add them to SECTIONS in tests/test_docs.py"
    )
    gone = sorted(set(SECTIONS) - set(key_tuples()))
    assert not gone, f"SECTIONS names tuples that taskforce.config no longer has: {gone}"


@pytest.mark.parametrize("tuple_name", sorted(SECTIONS))
def test_every_accepted_key_is_documented(config_md: str, tuple_name: str) -> None:
    keys = key_tuples().get(tuple_name, ())
    title, how = SECTIONS[tuple_name]
    parts = sections(config_md)
    assert title in parts, f"docs/config.md has no section '## {title}'"
    section = parts[title]
    if how == "heading":
        missing = [key for key in keys if key not in key_blocks(section)]
        what = "a heading ### `KEY`"
    elif how == "row":
        missing = [
            key for key in keys if not re.search(rf"^\| `{re.escape(key)}` \|", section, re.M)
        ]
        what = "a table row | `KEY` |"
    else:
        missing = [key for key in keys if f"`{key}`" not in section]
        what = "a mention `KEY`"
    assert not missing, (
        f"docs/config.md, section '{title}', lacks {what} for {tuple_name} members {missing}"
    )


def test_no_documented_key_is_unknown(config_md: str) -> None:
    """A heading for a key the loader does not accept is a stale doc."""
    tuples = key_tuples()
    parts = sections(config_md)
    for title in sorted({title for title, how in SECTIONS.values() if how == "heading"}):
        accepted = {
            key
            for name, (section, how) in SECTIONS.items()
            if section == title and how == "heading"
            for key in tuples.get(name, ())
        }
        stale = sorted(set(key_blocks(parts.get(title, ""))) - accepted)
        assert not stale, f"docs/config.md, section '{title}', documents unknown keys {stale}"


def test_each_key_has_a_default_and_an_example(config_md: str) -> None:
    parts = sections(config_md)
    problems = []
    for title in sorted({title for title, how in SECTIONS.values() if how == "heading"}):
        for key, block in key_blocks(parts.get(title, "")).items():
            if title in NEEDS_DEFAULT and "Default:" not in block:
                problems.append(f"{title} / {key}: no 'Default:'")
            if "```yaml" not in block:
                problems.append(f"{title} / {key}: no yaml example")
    assert not problems, "\n".join(problems)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as YAML spells it
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_documented_defaults_match_the_code(config_md: str) -> None:
    parts = sections(config_md)
    settings = key_blocks(parts["Settings keys"])
    expected = {name: _fmt(value) for name, value in DEFAULT_SETTINGS.items()}
    expected["output"] = DEFAULT_OUTPUT
    expected["timeout"] = _fmt(DEFAULT_TIMEOUT)
    for key, value in sorted(expected.items()):
        assert f"Default: `{value}`" in settings[key], (
            f"docs/config.md says another default for settings key {key!r} than the code ({value})"
        )


def test_every_yaml_example_is_a_valid_config(config_md: str) -> None:
    blocks = list(code_blocks(config_md, "yaml"))
    assert len(blocks) > 40
    failures = []
    for line, body in blocks:
        try:
            load_config_text(body, f"docs/config.md:{line}", roles=None, facts=FACTS)
        except ConfigError as exc:
            failures.append("\n".join(str(err) for err in exc.errors))
    assert not failures, "\n\n".join(failures)


def test_roles_file_example_parses(config_md: str) -> None:
    section = sections(config_md)["Roles file"]
    ((_, body),) = list(code_blocks(section, "text"))
    roles = config_module.parse_roles(body, "docs/config.md")
    assert roles.names == ("db", "backup", "color")
    assert roles.values == {"color": "blue"}


# ---------------------------------------------------------------------------
# docs/lifecycle.md


def lifecycle_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_lifecycle", DOCS / "lifecycle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lifecycle_doc_is_current() -> None:
    generated = lifecycle_generator().render()
    current = (DOCS / "lifecycle.md").read_text(encoding="utf-8")
    assert current == generated, (
        "docs/lifecycle.md is stale: run  python docs/lifecycle.py > docs/lifecycle.md"
    )


def test_lifecycle_doc_covers_every_state_and_transition() -> None:
    from taskforce.core.lifecycle import SlotState, table

    text = (DOCS / "lifecycle.md").read_text(encoding="utf-8")
    for state in SlotState:
        assert f"| `{state.name}` |" in text, f"state {state.name} is not described"
    for trigger, source, dest in table():
        assert f"{source} --> {dest}" in text
        assert f"| `{trigger}` |" in text


def test_every_state_has_a_description() -> None:
    from taskforce.core.lifecycle import SlotState

    comments = lifecycle_generator().state_comments()
    missing = [state.name for state in SlotState if not comments.get(state.name)]
    assert not missing, f"SlotState members without a '#:' comment: {missing}"


# ---------------------------------------------------------------------------
# examples


def _roles_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and (path.suffix == ".roles" or path.name.endswith("roles.conf"))
    )


#: (config, roles files) of each example.
EXAMPLE_CONFIGS = [
    (EXAMPLES / "systemd" / "taskforce.conf", _roles_files(EXAMPLES / "systemd")),
    (EXAMPLES / "container" / "taskforce.conf", _roles_files(EXAMPLES / "container")),
    (EXAMPLES / "fleet" / "taskforce.conf", _roles_files(EXAMPLES / "fleet")),
    (EXAMPLES / "sockets" / "taskforce.conf", _roles_files(EXAMPLES / "sockets")),
]


def _cases() -> list[tuple[Path, Path | None]]:
    out: list[tuple[Path, Path | None]] = []
    for config, roles in EXAMPLE_CONFIGS:
        # Every example ships roles; none would mean "-r -" (every task in scope).
        out.extend((config, role) for role in roles)
        out.append((config, None))
    return out


def _case_id(case: tuple[Path, Path | None]) -> str:
    config, roles = case
    name = config.relative_to(EXAMPLES).as_posix()
    return f"{name}+{roles.name}" if roles else name


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_example_config_loads(case: tuple[Path, Path | None]) -> None:
    config_path, roles_path = case
    roles = load_roles(str(roles_path) if roles_path else None)
    config = load_config(str(config_path), roles=roles, facts=FACTS)
    check(config, str(config_path), roles, facts=FACTS)


def _check_cli(config: Path, roles: Path | None, cwd: Path) -> None:
    argv = [sys.executable, "-m", "taskforce", "-C", "-f", str(config), "-r", str(roles or "-")]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout}{done.stderr}"
    assert "ok" in done.stdout


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_example_config_passes_check_config(case: tuple[Path, Path | None]) -> None:
    config, roles = case
    _check_cli(config, roles, ROOT)


def _kubernetes_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted((EXAMPLES / "kubernetes").glob("*.yaml")):
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def test_kubernetes_configmaps_pass_check_config(tmp_path: Path) -> None:
    """The config and roles ConfigMaps, mounted as the Deployment mounts them."""
    objects = _kubernetes_objects()
    maps = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ConfigMap"}
    (deployment,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    files: dict[str, Path] = {}
    for volume in pod["volumes"]:
        if "configMap" not in volume:
            continue
        assert "subPath" not in str(container["volumeMounts"]), (
            "a subPath mount is never updated by the kubelet: mount the whole volume"
        )
        data = maps[volume["configMap"]["name"]]["data"]
        folder = tmp_path / mounts[volume["name"]].lstrip("/")
        folder.mkdir(parents=True)
        for name, text in data.items():
            (folder / name).write_text(text)
            files[f"{mounts[volume['name']].rstrip('/')}/{name}"] = folder / name
    args = container["args"] if "args" in container else container["command"][1:]
    config = files[args[args.index("-f") + 1]]
    roles = files[args[args.index("-r") + 1]]
    _check_cli(config, roles, ROOT)


# What each kind of host in examples/fleet runs, as its README says.
FLEET_SCOPE = {
    "web.roles": {"node_exporter", "logship", "nginx"},
    "app.roles": {"node_exporter", "logship", "app", "worker", "scheduler"},
    "db.roles": {"node_exporter", "logship", "postgres", "backup"},
}


@pytest.mark.parametrize("roles_name", sorted(FLEET_SCOPE))
def test_fleet_roles_put_the_right_tasks_on_each_host(roles_name: str) -> None:
    config_path = EXAMPLES / "fleet" / "taskforce.conf"
    roles = load_roles(str(EXAMPLES / "fleet" / "roles" / roles_name))
    config = load_config(str(config_path), roles=roles, facts=FACTS)
    specs = check(config, str(config_path), roles, facts=FACTS)
    running = {name for name, spec in specs.items() if spec.in_scope}
    assert running == FLEET_SCOPE[roles_name]
    readme = (EXAMPLES / "fleet" / "README.md").read_text()
    for name in FLEET_SCOPE[roles_name]:
        assert f"`{name}`" in readme


def _fleet_with_stand_ins(marker: str) -> dict[str, Any]:
    """examples/fleet/taskforce.conf with each program replaced by a sleeper.

    The sleeper's argv carries the marker, the task name and the original
    argv (so a change of release still changes the process), and keys that
    need the real host (users, folders, watched files, limits) are dropped.
    """
    config = yaml.safe_load((EXAMPLES / "fleet" / "taskforce.conf").read_text())
    assert isinstance(config, dict)
    for name, task in config["tasks"].items():
        for key in ("user", "cwd", "events", "limits", "start_delay", "stop_timeout"):
            task.pop(key, None)
        start = task["commands"]["start"]
        task["commands"] = {
            "start": [sys.executable, "-c", "import time; time.sleep(1000)", marker, name, *start]
        }
    return config


def test_fleet_live_migration(daemon: Daemon) -> None:
    """The fleet README's claims, with real processes: editing the roles file
    moves a host from web to app, and canary swaps the app's release, each
    without touching the tasks every host runs."""
    daemon.write_config(_fleet_with_stand_ins(daemon.marker))
    daemon.write_roles("web")
    daemon.start()
    everywhere = {name: daemon.wait_pids(name, 1) for name in ("node_exporter", "logship")}
    daemon.wait_pids("nginx", 1)

    daemon.write_roles("app")
    wait_for(lambda: not daemon.pids("nginx"), 10.0, "nginx to stop")
    old_app = daemon.wait_pids("app", 4)
    worker = daemon.wait_pids("worker", 2)
    daemon.wait_pids("scheduler", 1)
    assert {name: daemon.pids(name) for name in everywhere} == everywhere

    daemon.write_roles("app", "canary")

    def app_on_next_release() -> bool:
        procs = daemon.processes("app")
        return len(procs) == 4 and all("/srv/app/next/" in cmd for cmd in procs.values())

    wait_for(app_on_next_release, 10.0, "the app on the next release")
    assert not (daemon.pids("app") & old_app)
    assert not (daemon.wait_pids("worker", 2) & worker)
    assert {name: daemon.pids(name) for name in everywhere} == everywhere
    assert daemon.stop() == 0


def test_every_example_ships_roles_files() -> None:
    assert all(roles for _, roles in EXAMPLE_CONFIGS)


def test_performance_doc_command_is_accepted() -> None:
    """docs/performance.md's command to reproduce names options run.py has."""
    import shlex

    spec = importlib.util.spec_from_file_location("peers_run", ROOT / "bench/peers/run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.modules["peers_run"] = run  # dataclasses look their module up
    try:
        spec.loader.exec_module(run)
        text = (DOCS / "performance.md").read_text(encoding="utf-8")
        commands = [
            shlex.split(line)
            for _, body in code_blocks(text, "sh")
            for line in body.splitlines()
            if "bench/peers/run.py" in line
        ]
        assert commands, "docs/performance.md shows no command running bench/peers/run.py"
        for argv in commands:
            args = argv[argv.index("bench/peers/run.py") + 1 :]
            options = run.parse_args(args)
            assert options.repeat >= 1
    finally:
        sys.modules.pop("peers_run", None)


def test_scale_doc_command_is_accepted() -> None:
    """docs/performance.md's command for the scaling curves names options
    bench/scale.py has (parsed only: nothing is run)."""
    import shlex

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("scale", ROOT / "bench/scale.py")
        assert spec is not None and spec.loader is not None
        scale = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scale)
        text = (DOCS / "performance.md").read_text(encoding="utf-8")
        commands = [
            shlex.split(line)
            for _, body in code_blocks(text, "sh")
            for line in body.splitlines()
            if "bench/scale.py" in line
        ]
        assert commands, "docs/performance.md shows no command running bench/scale.py"
        for argv in commands:
            args = argv[argv.index("bench/scale.py") + 1 :]
            options = scale.parse_args(args)
            assert options.sizes and options.supervisors
    finally:
        sys.path.remove(str(ROOT / "bench"))
        for name in ("peers_run", "common", "scale_report"):
            sys.modules.pop(name, None)


# ---------------------------------------------------------------------------
# README.md: its commands work exactly as written

#: How the README's programs are run here: the package's modules, by this
#: interpreter (the README runs them from a virtual environment).
PROGRAMS = {".venv/bin/taskforce": "taskforce", ".venv/bin/tfctl": "taskforce.tfctl"}


def readme_commands() -> list[list[str]]:
    """Every command of README.md's ``sh`` blocks that runs taskforce or
    tfctl, as argv (of an ``a && b && c`` line, the last: the others
    install)."""
    import shlex

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for _, body in code_blocks(text, "sh"):
        for line in body.splitlines():
            argv = shlex.split(line.split("&&")[-1])
            if argv and argv[0] in PROGRAMS:
                out.append(argv)
    return out


def _as_run_here(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", PROGRAMS[argv[0]], *argv[1:]]


def test_readme_commands_work_as_written(tmp_path: Path) -> None:
    """The quick start's daemon runs the bundled example, and with it up
    every other command the README shows (tfctl, -C, simulate, plan) exits
    0 when typed as written, from a checkout's root."""
    import shutil
    import signal

    from taskforce import tfctl

    commands = readme_commands()
    shown = [" ".join(argv[1:3]) for argv in commands]
    for needed in ("-e -f", "-C --plan", "simulate -f", "plan -f", "-s examples/taskforce.sock"):
        assert any(text.startswith(needed) for text in shown), f"README shows no {needed!r}"
    tools = [argv for argv in commands if argv[0].endswith("tfctl")]
    for verb in ("status", "restart", "signal", "version", "logs"):
        assert any(verb in argv for argv in tools), f"README shows no tfctl {verb}"
    daemons = [argv for argv in commands if argv[1] == "-e"]
    assert len(daemons) == 1, "one quick start"

    work = tmp_path / "checkout"
    shutil.copytree(
        EXAMPLES, work / "examples", ignore=shutil.ignore_patterns("*.sock", "__pycache__")
    )
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _as_run_here(daemons[0]), cwd=work, stdout=out, stderr=out, start_new_session=True
        )
    try:
        client = tfctl.Client(str(work / "examples" / "taskforce.sock"), timeout=5)

        def web_runs() -> bool:
            try:
                code, _, body = client.request("GET", "/status/tasks")
            except tfctl.Unreachable:
                return False
            slots = json.loads(body).get("web", {}).get("processes", []) if code == 200 else []
            return len(slots) == 2 and all(s.get("state") == "ready" for s in slots)

        wait_for(web_runs, 30.0, "the demo's web workers")
        for argv in commands:
            if argv in daemons:
                continue
            done = subprocess.run(
                _as_run_here(argv), cwd=work, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
            assert "Traceback" not in done.stderr
            if "simulate" in argv:
                assert "-> exit 0" in done.stdout
            if "version" in argv:
                assert done.stdout.startswith("taskforce ") and done.stdout.count("\n") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Logging error" not in text


def test_systemctl_kill_signals_taskforce_alone() -> None:
    """``systemctl kill`` without ``--kill-whom=main`` signals every process
    of the unit: a SIGHUP meant for taskforce (a reset) would reach every
    task too.  Every one the docs and examples show says main."""
    shown = []
    for path in [ROOT / "README.md", *DOCS.rglob("*.md"), *EXAMPLES.rglob("*")]:
        if not path.is_file() or path.suffix not in ("", ".md", ".service", ".conf", ".yaml"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "systemctl kill" in line and line.lstrip("# ").startswith("systemctl kill"):
                shown.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert shown, "the systemd example shows how to reset taskforce"
    for where in shown:
        assert "--kill-whom=main" in where, where
    unit = (EXAMPLES / "systemd" / "taskforce.service").read_text()
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line[:30]]
    assert "ExecReload" not in settings, "a reload is taskforce's own business"
    assert "KillMode=mixed" in unit
