"""umask, resource limits, a clean environment and the privilege drop, seen
in real processes started by a real daemon (told by the processes themselves,
or read from the process table)."""

from __future__ import annotations

import json
import os
import pwd
import resource
from textwrap import dedent

import pytest
from daemon_harness import FEATURES, Daemon, environ_of, shell_task, task, wait_for

from taskforce.config import check, load_config_text, validate_all
from taskforce.core.model import HostFacts, ProcessSpec


def tasks(**defs: dict) -> dict:
    return {"tasks": defs}


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


#: A task that writes its umask and limits (as ``/proc/PID/limits`` words
#: them) to the file its last argument names, then stays: the process tells
#: what it runs with, the same way on every platform.
REPORTER = """
import json, os, resource, sys, time
mask = os.umask(0)
os.umask(mask)
names = {
    "Max open files": resource.RLIMIT_NOFILE,
    "Max core file size": resource.RLIMIT_CORE,
    "Max file size": resource.RLIMIT_FSIZE,
}
word = lambda value: "unlimited" if value == resource.RLIM_INFINITY else str(value)
facts = {
    "Umask": f"{mask:04o}",
    "limits": {name: [word(v) for v in resource.getrlimit(r)] for name, r in names.items()},
}
with open(sys.argv[-1] + ".tmp", "w") as out:
    json.dump(facts, out)
os.replace(sys.argv[-1] + ".tmp", sys.argv[-1])
time.sleep(1000)
"""


def reporter(daemon: Daemon, name: str, **keys: object) -> dict:
    return task(daemon.marker, name, REPORTER, args=(str(daemon.root / f"{name}.facts"),), **keys)


def facts(daemon: Daemon, name: str) -> dict:
    """What the reporter task ``name`` said of itself (once it has)."""
    path = daemon.root / f"{name}.facts"
    wait_for(path.exists, what=f"{name}'s report")
    found = json.loads(path.read_text())
    found["limits"] = {key: tuple(value) for key, value in found["limits"].items()}
    return found


def environ(pid: int) -> dict[str, str]:
    found = environ_of(pid)
    assert found is not None, f"cannot read the environment of {pid}"
    return found


def test_umask_and_limits_reach_the_process(daemon: Daemon) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(200, soft)
    daemon.write_config(
        tasks(
            a=reporter(
                daemon,
                "a",
                umask="027",
                limits={
                    "nofile": low,
                    "core": {"soft": 0, "hard": "unlimited"}
                    if os.geteuid() == 0
                    else {"soft": 0, "hard": resource.getrlimit(resource.RLIMIT_CORE)[1]},
                    "fsize": "64M",
                },
            ),
            b=reporter(daemon, "b"),
        )
    )
    daemon.start()
    a, b = facts(daemon, "a"), facts(daemon, "b")
    assert a["Umask"] == "0027"
    assert b["Umask"] == f"{_own_umask():04o}", "a task without umask inherits"
    seen = a["limits"]
    assert seen["Max open files"] == (str(low), str(low))
    assert seen["Max core file size"][0] == "0"
    if os.geteuid() == 0:
        assert seen["Max core file size"][1] == "unlimited"
    assert seen["Max file size"] == (str(64 << 20), str(64 << 20))
    # taskforce leaves its own limits alone: b has the test's, as taskforce has
    own = tuple(
        "unlimited" if value == resource.RLIM_INFINITY else str(value)
        for value in resource.getrlimit(resource.RLIMIT_NOFILE)
    )
    assert b["limits"]["Max open files"] == own


def _own_umask() -> int:
    # The daemon runs with the test's umask (the harness does not change it).
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_limit_that_cannot_be_set_is_a_spawn_failure_naming_the_key(daemon: Daemon) -> None:
    m = daemon.marker
    # Above the kernel's ceiling (Linux's nr_open, at most 2**30; macOS's
    # kern.maxfilesperproc) even root cannot go; unprivileged, above the hard
    # limit is refused as well.
    too_many = (1 << 31) - 1
    daemon.write_config(tasks(a=task(m, "a", limits={"nofile": too_many}), b=task(m, "b")))
    daemon.start()
    daemon.wait_pids("b", 1)
    daemon.wait_log("limits.nofile")
    assert not daemon.pids("a")
    assert f"limits.nofile (soft, hard: {too_many} {too_many})" in daemon.log_text()


def test_clean_environment_keeps_only_path(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        tasks(
            clean=task(m, "clean", environment="clean", defines={"MINE": "kept"}),
            dirty=task(m, "dirty"),
        )
    )
    daemon.start(env={"TF_TEST_SECRET": "from-the-daemon"})
    (clean,) = daemon.wait_pids("clean", 1)
    (dirty,) = daemon.wait_pids("dirty", 1)
    assert environ(dirty)["TF_TEST_SECRET"] == "from-the-daemon"
    env = environ(clean)
    assert "TF_TEST_SECRET" not in env
    assert env["PATH"] == environ(dirty)["PATH"]
    assert env["MINE"] == "kept", "defines still reach a clean environment"
    assert env["Task_name"] == "clean"
    # (TASKFORCE_ID is taskforce's own marker, set on purpose: see tracking)
    extra = {k for k in env if not k.startswith("Task_")} - {"PATH", "MINE", "TASKFORCE_ID"}
    assert not extra, f"a clean environment carries {sorted(extra)}"


def test_changing_umask_restarts_the_task(daemon: Daemon) -> None:
    daemon.write_config(tasks(a=reporter(daemon, "a", umask="022")))
    daemon.start()
    assert facts(daemon, "a")["Umask"] == "0022"
    (old,) = daemon.wait_pids("a", 1)
    (daemon.root / "a.facts").unlink()
    daemon.write_config(tasks(a=reporter(daemon, "a", umask="077")))
    wait_for(lambda: daemon.pids("a") - {old}, what="a restarted")
    assert facts(daemon, "a")["Umask"] == "0077"


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(not FEATURES.proc, reason="reads the ids of a process of nobody in /proc")
@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.skipif(_nobody() is None, reason="no user 'nobody'")
def test_privilege_drop_sets_the_users_supplementary_groups(daemon: Daemon) -> None:
    m = daemon.marker
    nobody = _nobody()
    assert nobody is not None
    gid = str(nobody.pw_gid)
    # A system shell: nobody may not be able to run the test's Python.  It
    # does not exec sleep in its place, so its argv keeps the marker.
    script = "sleep 1000; exit 0"
    daemon.write_config(
        tasks(
            a=shell_task(m, "a", script, user="nobody"),
            g=shell_task(m, "g", script, group=gid),
        )
    )
    daemon.start()
    (a,) = daemon.wait_pids("a", 1)
    (g,) = daemon.wait_pids("g", 1)
    seen = status(a)
    assert seen["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert seen["Gid"].split() == [str(nobody.pw_gid)] * 4
    expected = sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    assert sorted(int(x) for x in seen["Groups"].split()) == expected
    assert 0 not in expected, "root's group must not leak into nobody's groups"
    # group alone: exactly that group, none of the daemon's (root's) groups.
    seen = status(g)
    assert seen["Uid"].split() == ["0"] * 4
    assert seen["Gid"].split() == [gid] * 4
    assert seen["Groups"].split() == [gid]


# ------------------------------------------------------- schema and core


FACTS = HostFacts(environ={"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET": "s"})


def built(text: str) -> dict[str, ProcessSpec]:
    config = load_config_text(dedent(text), "tf.conf", roles=None, facts=FACTS)
    return {
        name: spec.processes[0]
        for name, spec in check(config, "tf.conf", None, facts=FACTS).items()
    }


def errors(text: str) -> list[str]:
    return [str(err) for err in validate_all(dedent(text), "tf.conf", roles=None, facts=FACTS)]


def test_umask_limits_environment_are_built_into_the_spec() -> None:
    specs = built(
        """
        defines: {FILES: "2048"}
        tasks:
          a:
            commands: {start: [x]}
            umask: 027
            limits: {nofile: "{FILES}", core: unlimited, stack: {soft: 8M, hard: 64M}}
            environment: clean
          b: {commands: {start: [x]}, umask: "0o77"}
        """
    )
    a, b = specs["a"], specs["b"]
    assert a.umask == 0o27 and b.umask == 0o77
    assert a.limits == (("core", None, None), ("nofile", 2048, 2048), ("stack", 8 << 20, 64 << 20))
    assert "SECRET" not in a.env and a.env["PATH"] == "/usr/bin:/bin"
    assert b.env["SECRET"] == "s" and b.limits == () and b.umask is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "umask: 22",
            "tf.conf:3: tasks.a.umask: a umask is octal, but YAML reads 22 as the "
            'decimal number 22 (hint: quote it: "022")',
        ),
        ("umask: '9'", "tasks.a.umask: expected an octal umask"),
        ("limits: {nofiles: 3}", "unknown limits key 'nofiles' (hint: did you mean \"nofile\"?)"),
        (
            "limits: {core: lots}",
            "tasks.a.limits.core: expected a whole number >= 0 or 'unlimited'",
        ),
        ("limits: {as: {soft: 10, hard: 5}}", "tasks.a.limits.as: soft limit 10 is above hard"),
        ("limits: {as: {soft: 10}}", "tasks.a.limits.as: a limit given as a mapping needs hard"),
        ("limits: 5", "tasks.a.limits: expected a mapping of resource names"),
        ("environment: off", "tasks.a.environment: environment must be one of inherit, clean"),
        ("environment: '{E}'", "tasks.a.environment: environment must be one of"),
    ],
)
def test_schema_errors_name_file_line_and_key(text: str, expected: str) -> None:
    found = errors(f"tasks:\n  a:\n    {text}\n    commands: {{start: [x]}}\n")
    assert any(expected in err for err in found), found


def test_a_limit_change_is_a_process_change() -> None:
    first = built("tasks: {a: {commands: {start: [x]}, limits: {nofile: 100}}}")["a"]
    second = built("tasks: {a: {commands: {start: [x]}, limits: {nofile: 200}}}")["a"]
    assert first != second
    assert first.diff(second) == "limits"
