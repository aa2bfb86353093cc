"""Live reload of the config and roles files against a real daemon: exactly the
affected processes change, and a broken file changes nothing."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from daemon_harness import Daemon, alias_bomb, shell_task, task, wait_for


def many(marker: str, n: int, **extra: dict) -> dict:
    return {f"t{i:03d}": task(marker, f"t{i:03d}") for i in range(n)} | extra


def snapshot(daemon: Daemon, names: list[str]) -> dict[str, set[int]]:
    return {name: daemon.pids(name) for name in names}


def start_many(daemon: Daemon, n: int, **extra: dict) -> dict[str, set[int]]:
    m = daemon.marker
    daemon.write_config({"tasks": many(m, n, **extra)})
    daemon.start()
    names = sorted(many(m, n, **extra))
    wait_for(lambda: all(len(daemon.pids(n)) == 1 for n in names), what="all tasks running")
    return snapshot(daemon, names)


def test_changing_one_task_restarts_only_it(daemon: Daemon) -> None:
    m = daemon.marker
    before = start_many(daemon, 20)
    config = {"tasks": many(m, 20)}
    config["tasks"]["t007"]["defines"] = {"NEW_SETTING": "1"}
    daemon.write_config(config)
    wait_for(
        lambda: daemon.pids("t007") and daemon.pids("t007") != before["t007"], what="t007 restarted"
    )
    after = snapshot(daemon, sorted(before))
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["t007"]
    daemon.wait_log("t007[0] started as pid")
    assert "config changed: environment (NEW_SETTING)" in daemon.log_text()


def test_add_and_remove_tasks(daemon: Daemon) -> None:
    m = daemon.marker
    before = start_many(daemon, 5)
    config = {"tasks": many(m, 5)}
    del config["tasks"]["t001"]
    config["tasks"]["fresh"] = task(m, "fresh")
    daemon.write_config(config)
    daemon.wait_pids("fresh", 1)
    wait_for(lambda: not daemon.pids("t001"), what="t001 stopped")
    for name in ("t000", "t002", "t003", "t004"):
        assert daemon.pids(name) == before[name]
    daemon.wait_log("t001: removed from the config; stopping")


def test_count_up_and_down_touches_only_the_slots_that_differ(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config({"tasks": {"pool": task(m, "pool", count=2)}})
    daemon.start()
    two = daemon.wait_pids("pool", 2)
    daemon.write_config({"tasks": {"pool": task(m, "pool", count=4)}})
    four = daemon.wait_pids("pool", 4)
    assert two <= four
    daemon.write_config({"tasks": {"pool": task(m, "pool", count=1)}})
    one = daemon.wait_pids("pool", 1)
    assert one <= two, "slot 0 keeps its process"


def test_broken_config_changes_nothing_then_the_fix_applies(daemon: Daemon) -> None:
    m = daemon.marker
    before = start_many(daemon, 5)
    daemon.write_config('{"tasks": {"t000": {"commands": {"start": ["x"]}, "bogus_key": 1}}}')
    daemon.wait_log("bogus_key")
    daemon.wait_log("nothing was changed")
    assert snapshot(daemon, sorted(before)) == before
    daemon.write_config('{"tasks": {"t000": {"control": off, "commands": {"start": ["x"]}}}}')
    daemon.wait_log("quote it")
    assert snapshot(daemon, sorted(before)) == before
    config = {"tasks": many(m, 5)}
    config["tasks"]["t004"]["count"] = 2
    daemon.write_config(config)
    daemon.wait_pids("t004", 2)
    after = snapshot(daemon, sorted(before))
    assert {k: v for k, v in after.items() if k != "t004"} == {
        k: v for k, v in before.items() if k != "t004"
    }


@pytest.mark.parametrize("deep", [False, True], ids=["wide", "deep"])
def test_an_alias_bomb_in_the_config_is_refused_and_supervision_goes_on(
    daemon: Daemon, deep: bool
) -> None:
    m = daemon.marker
    daemon.write_config({"tasks": {"a": task(m, "a"), "b": task(m, "b")}})
    daemon.start()
    (a,) = daemon.wait_pids("a", 1)
    (b,) = daemon.wait_pids("b", 1)
    daemon.write_config(alias_bomb(task(m, "a", args=("bomb",))["commands"]["start"], deep=deep))
    daemon.wait_log("aliases expand it to more than 1,000,000 values")
    assert f"{daemon.config}:" in daemon.log_text()
    os.kill(b, signal.SIGKILL)
    wait_for(lambda: daemon.pids("b") - {b}, what="b replaced after the bomb")
    assert daemon.pids("a") == {a}
    started = time.monotonic()
    assert daemon.stop(timeout=10) == 0
    assert time.monotonic() - started < 5, "SIGTERM obeyed promptly"


def test_roles_file_migrates_tasks_live(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_roles("web")
    daemon.write_config(
        {
            "tasks": {
                "web": task(m, "web", roles=["web"]),
                "db": task(m, "db", roles=["db"]),
                "both": task(m, "both"),
            }
        }
    )
    daemon.start()
    (web,) = daemon.wait_pids("web", 1)
    (both,) = daemon.wait_pids("both", 1)
    assert not daemon.pids("db")
    daemon.write_roles("db")
    daemon.wait_pids("db", 1)
    wait_for(lambda: not daemon.pids("web"), what="web stopped")
    assert daemon.pids("both") == {both}
    daemon.wait_log("web: now out of scope (roles changed)")


def test_a_deleted_roles_file_keeps_the_roles_until_it_comes_back(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_roles("db")
    tasks = {
        "web": task(m, "web", roles=["web"]),
        "db": task(m, "db", roles=["db"]),
        "both": task(m, "both"),
    }
    daemon.write_config({"tasks": tasks})
    daemon.start()
    (db,) = daemon.wait_pids("db", 1)
    (both,) = daemon.wait_pids("both", 1)
    daemon.roles.unlink()
    daemon.wait_log(f"roles file {daemon.roles} is missing; keeping the current roles (db)")
    # A config edit meanwhile is applied with the roles kept.
    tasks["extra"] = task(m, "extra", roles=["db"])
    daemon.write_config({"tasks": tasks})
    daemon.wait_pids("extra", 1)
    assert not daemon.pids("web"), "the web tier never started on a db host"
    assert (daemon.pids("db"), daemon.pids("both")) == ({db}, {both})
    # A reset would start again without the file: refused, nothing stops.
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_log(f"reset refused, roles file {daemon.roles} not found; nothing was stopped")
    assert (daemon.pids("db"), daemon.pids("both")) == ({db}, {both})
    # Back, with a change: applied as usual.
    daemon.write_roles("web")
    daemon.wait_pids("web", 1)
    wait_for(lambda: not daemon.pids("db") and not daemon.pids("extra"), what="db stopped")
    assert daemon.pids("both") == {both}
    assert "now out of scope (roles changed)" in daemon.log_text()


def test_role_values_reach_the_context(daemon: Daemon) -> None:
    m = daemon.marker
    out = daemon.root / "role.txt"
    daemon.roles.write_text("shard=3\nweb\n")
    code = (
        "import os, sys, time; open(sys.argv[1], 'w').write("
        "os.environ['Task_role_shard'] + ' ' + os.environ.get('Task_role_web', '-'));"
        " time.sleep(1000)"
    )
    daemon.write_config(
        {
            "tasks": {
                "sharded": {
                    "roles": ["shard", "web"],
                    "commands": {"start": [sys.executable, "-c", code, str(out), m]},
                }
            }
        }
    )
    daemon.start()
    wait_for(lambda: out.exists() and out.read_text(), what="role values written")
    assert out.read_text() == "3 -"  # a bare role is not exported


BACKENDS = pytest.mark.parametrize("backend", ["inotify", "poll"])


def watcher_env(backend: str) -> dict[str, str]:
    return {"TASKFORCE_WATCHER": backend}


def test_two_hundred_tasks_one_changed_exactly_one_pid_changes(daemon: Daemon) -> None:
    m = daemon.marker

    def sleeper(name: str, seconds: str = "1000") -> dict:
        # procname puts the marker and the name in argv[0]; sleep ignores it.
        return {"procname": f"{m} {name}", "commands": {"start": ["sleep", seconds]}}

    names = [f"s{i:03d}" for i in range(200)]
    daemon.write_config({"tasks": {name: sleeper(name) for name in names}})
    daemon.start()
    wait_for(lambda: len(daemon.processes()) == 200, timeout=60, what="200 tasks running")
    before = {pid: cmd.split()[1] for pid, cmd in daemon.processes().items()}
    changed = {name: sleeper(name) for name in names}
    changed["s123"] = sleeper("s123", "999")
    daemon.write_config({"tasks": changed})
    wait_for(
        lambda: any(cmd.endswith("s123 999") for cmd in daemon.processes().values()),
        what="s123 restarted",
    )
    after = {pid: cmd.split()[1] for pid, cmd in daemon.processes().items()}
    assert len(after) == 200
    assert set(before) - set(after) == {pid for pid, name in before.items() if name == "s123"}


@BACKENDS
def test_file_change_event_restarts_the_task(daemon: Daemon, backend: str) -> None:
    m = daemon.marker
    watched = daemon.root / "app.settings"
    watched.write_text("one\n")
    daemon.write_config(
        {
            "tasks": {
                "app": task(
                    m,
                    "app",
                    events=[{"type": "file_change", "path": str(watched), "command": "stop"}],
                ),
                "other": task(m, "other"),
            }
        }
    )
    daemon.start(env=watcher_env(backend))
    (app,) = daemon.wait_pids("app", 1)
    (other,) = daemon.wait_pids("other", 1)
    tmp = watched.with_suffix(".tmp")
    tmp.write_text("two\n")
    os.replace(tmp, watched)  # as editors and sed -i save
    wait_for(lambda: daemon.pids("app") and daemon.pids("app") != {app}, what="app restarted")
    assert daemon.pids("other") == {other}
    assert "app.settings changed" in daemon.log_text()


@BACKENDS
def test_python_event_restarts_when_an_imported_module_changes(
    daemon: Daemon, backend: str
) -> None:
    m = daemon.marker
    app_dir = daemon.root / "app"
    app_dir.mkdir()
    (app_dir / "helper.py").write_text("VALUE = 1\n")
    (app_dir / "main.py").write_text("import sys, time\nimport helper\ntime.sleep(1000)\n")
    daemon.write_config(
        {
            "tasks": {
                "py": {
                    "commands": {"start": [sys.executable, str(app_dir / "main.py"), m, "py"]},
                    "events": [{"type": "python", "command": "stop"}],
                }
            }
        }
    )
    daemon.start(env=watcher_env(backend))
    (first,) = daemon.wait_pids("py", 1)
    daemon.wait_log("py[0] started")
    (app_dir / "helper.py").write_text("VALUE = 2\n")
    wait_for(lambda: daemon.pids("py") and daemon.pids("py") != {first}, what="py restarted")
    assert "helper.py changed" in daemon.log_text()


def test_signal_action_sends_signal_without_restart(daemon: Daemon) -> None:
    m = daemon.marker
    watched = daemon.root / "reload.me"
    watched.write_text("x")
    hup_log = daemon.root / "hups"
    code = (
        "import signal, sys, time\n"
        "def on_hup(*_):\n    open(sys.argv[1], 'a').write('hup\\n')\n"
        "signal.signal(signal.SIGHUP, on_hup)\n"
        "open(sys.argv[1], 'a').write('ready\\n')\n"
        "while True: time.sleep(1)\n"
    )
    daemon.write_config(
        {
            "tasks": {
                "hup": {
                    "commands": {"start": [sys.executable, "-c", code, str(hup_log), m, "hup"]},
                    "events": [{"type": "file_change", "path": str(watched), "signal": "HUP"}],
                }
            }
        }
    )
    daemon.start()
    (pid,) = daemon.wait_pids("hup", 1)
    wait_for(lambda: hup_log.exists() and "ready" in hup_log.read_text(), what="handler installed")
    watched.write_text("y")
    wait_for(lambda: "hup" in hup_log.read_text().split(), what="SIGHUP delivered")
    assert daemon.pids("hup") == {pid}


def test_own_code_change_resets_the_daemon(daemon: Daemon) -> None:
    import shutil

    import taskforce

    m = daemon.marker
    copy = daemon.root / "lib"
    shutil.copytree(
        os.path.dirname(taskforce.__file__),
        copy / "taskforce",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    daemon.write_config({"tasks": {"a": task(m, "a")}})
    daemon.start(env={"PYTHONPATH": str(copy)})
    (first,) = daemon.wait_pids("a", 1)
    daemon.wait_log("a[0] started")
    version = copy / "taskforce" / "__init__.py"
    version.write_text(version.read_text() + "\n# a new release\n")
    wait_for(
        lambda: daemon.pids("a") and daemon.pids("a") != {first}, what="a restarted by the reset"
    )
    daemon.wait_log("own code changed")
    daemon.wait_log("re-executing")
    wait_for(lambda: daemon.log_text().count("taskforce started as pid") == 2, what="a new start")


# ---------------------------------------------------------------------------
# Roles as the original defines them: a ``name=value`` line exports
# Task_role_<name> to every task; a bare role only decides scope.

#: Prints the Task_* variables the test names (argv[3:]), one per line, to
#: taskforce's log, then sleeps.
SHOW_ENV = (
    "import os, sys, time\n"
    "for key in sys.argv[3:]:\n"
    "    print(f'{key}={os.environ.get(key, \"<unset>\")}', flush=True)\n"
    "time.sleep(1000)\n"
)


def test_a_role_value_reaches_a_task_that_lists_no_roles(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.roles.write_text("dc=eu-west-1\nweb\n")
    keys = ("Task_role_dc", "Task_role_web")
    daemon.write_config(
        {
            "tasks": {
                "plain": task(m, "plain", SHOW_ENV, args=keys),
                "webby": task(m, "webby", SHOW_ENV, args=keys, roles=["web"]),
            }
        }
    )
    daemon.start()
    for name in ("plain", "webby"):
        # A value reaches every task; a bare role is exported to none.
        daemon.wait_log(f"{name}[0] Task_role_dc=eu-west-1")
        daemon.wait_log(f"{name}[0] Task_role_web=<unset>")


def test_a_bare_role_edit_restarts_nothing_that_stays_in_scope(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_roles("frontend")
    daemon.write_config(
        {
            "tasks": {
                "both": task(m, "both", roles=["frontend", "backend"]),
                "front": task(m, "front", roles=["frontend"]),
                "back": task(m, "back", roles=["backend"]),
                "plain": task(m, "plain"),
            }
        }
    )
    daemon.start()
    (both,) = daemon.wait_pids("both", 1)
    (plain,) = daemon.wait_pids("plain", 1)
    daemon.wait_pids("front", 1)
    assert not daemon.pids("back")
    daemon.write_roles("backend")
    daemon.wait_pids("back", 1)
    wait_for(lambda: not daemon.pids("front"), what="front stopped")
    daemon.wait_log("back[0] started as pid")
    assert (daemon.pids("both"), daemon.pids("plain")) == ({both}, {plain})
    # Adding bare roles (one no task names) and removing one: whatever
    # stays in scope keeps its process.
    daemon.write_roles("backend", "extra", "frontend")
    (front,) = daemon.wait_pids("front", 1)
    daemon.write_roles("frontend")
    wait_for(lambda: not daemon.pids("back"), what="back stopped")
    assert (daemon.pids("both"), daemon.pids("plain")) == ({both}, {plain})
    assert daemon.pids("front") == {front}


def test_a_role_value_change_restarts_exactly_the_tasks_whose_environment_changes(
    daemon: Daemon,
) -> None:
    m = daemon.marker
    daemon.roles.write_text("dc=eu-west-1\nweb\n")
    daemon.write_config(
        {
            "tasks": {
                "plain": task(m, "plain"),
                "webby": task(m, "webby", roles=["web"]),
                # Its own define hides the role's value: its environment
                # does not change with it.
                "pinned": task(m, "pinned", defines={"Task_role_dc": "here"}),
            }
        }
    )
    daemon.start()
    before = {name: daemon.wait_pids(name, 1) for name in ("plain", "webby", "pinned")}
    tmp = daemon.roles.with_suffix(".tmp")
    tmp.write_text("dc=us-east-1\nweb\n")
    os.replace(tmp, daemon.roles)
    for name in ("plain", "webby"):
        wait_for(
            lambda name=name: daemon.pids(name) and daemon.pids(name) != before[name],
            what=f"{name} restarted",
        )
    daemon.wait_log("environment (Task_role_dc)")
    assert daemon.pids("pinned") == before["pinned"]


def test_settings_all_roles_true_needs_every_role_of_a_task(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_roles("web")
    daemon.write_config(
        {
            "settings": {"all_roles": True},
            "tasks": {
                "web_and_db": task(m, "web_and_db", roles=["web", "db"]),
                "web_only": task(m, "web_only", roles=["web"]),
            },
        }
    )
    daemon.start()
    (web_only,) = daemon.wait_pids("web_only", 1)
    daemon.wait_log("web_only[0] started as pid")
    assert not daemon.pids("web_and_db")
    daemon.write_roles("web", "db")
    daemon.wait_pids("web_and_db", 1)
    assert daemon.pids("web_only") == {web_only}


def test_task_uid_gid_and_started_are_set_per_process(daemon: Daemon) -> None:
    import pwd

    m = daemon.marker
    keys = ("Task_uid", "Task_gid", "Task_started")
    tasks = {"mine": task(m, "mine", SHOW_ENV, args=keys, count=2)}
    nobody = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    if nobody is not None:
        # sh, not this Python: nobody may not be able to reach it.
        script = 'echo "Task_uid=$Task_uid"; echo "Task_gid=$Task_gid"; sleep 1000'
        tasks["theirs"] = shell_task(m, "theirs", script, user="nobody")
    daemon.write_config({"tasks": tasks})
    earliest = time.time()
    daemon.start()
    daemon.wait_log("mine[1] Task_started=")
    daemon.wait_log(f"mine[0] Task_uid={os.geteuid()}")
    daemon.wait_log(f"mine[0] Task_gid={os.getegid()}")
    daemon.wait_log(f"mine[1] Task_uid={os.geteuid()}")
    latest = time.time()
    for instance in (0, 1):
        (line,) = [
            line
            for line in daemon.log_text().splitlines()
            if f"mine[{instance}] Task_started=" in line
        ]
        started = float(line.rsplit("=", 1)[1])  # seconds since the epoch
        assert earliest <= started <= latest, (earliest, started, latest)
    if nobody is not None:
        daemon.wait_log(f"theirs[0] Task_uid={nobody.pw_uid}")
        daemon.wait_log(f"theirs[0] Task_gid={nobody.pw_gid}")
    # Facts of one process, not of its spec: an edit elsewhere restarts none.
    pids = daemon.pids("mine")
    tasks["other"] = task(m, "other")
    daemon.write_config({"tasks": tasks})
    daemon.wait_pids("other", 1)
    assert daemon.pids("mine") == pids
