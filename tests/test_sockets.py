"""Sockets held by taskforce: real daemon, real sockets, real clients.

A task's program (``SERVER``) writes what it was given -- ``LISTEN_*``,
its open descriptors, the socket behind each -- to a JSON file, then
answers every connection on each of them with its pid.  The socket's
identity is its inode (``fstat``), written as the ``socket:[inode]`` link
of its descriptor in /proc; which sockets taskforce itself holds is read
from /proc where there is one (elsewhere those checks are left out).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import USE_PROC, Daemon, task, wait_for

from taskforce.config import load_config_text, validate_all

#: Reports what it got to the file named by its fourth argument
#: (``{file}.{pid}``), then serves: each connection gets its pid and a newline.
SERVER = r"""
import json, os, selectors, stat, sys
report = sys.argv[3]
fds = []
for fd in range(64):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(fd)
links = {}
for fd in fds:
    info = os.fstat(fd)
    if stat.S_ISSOCK(info.st_mode):
        links[fd] = f"socket:[{info.st_ino}]"
seen = {
    "pid": os.getpid(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    "fds": fds,
    "links": {str(fd): link for fd, link in links.items()},
}
import socket
count = int(os.environ.get("LISTEN_FDS", "0"))
socks = [socket.socket(fileno=fd) for fd in range(3, 3 + count)]
seen["names"] = [str(s.getsockname()) for s in socks]
with open(report + ".tmp", "w") as out:
    json.dump(seen, out)
os.replace(report + ".tmp", f"{report}.{os.getpid()}")
chooser = selectors.DefaultSelector()
for s in socks:
    chooser.register(s, selectors.EVENT_READ)
while True:
    for key, _ in chooser.select():
        conn, _ = key.fileobj.accept()
        try:
            conn.sendall(f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a client gone already (taskforce's probe of a live socket)
        conn.close()
"""


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def server_task(daemon: Daemon, name: str, sockets: list[str], **keys: Any) -> dict[str, Any]:
    report = str(daemon.root / f"seen-{name}")
    return task(daemon.marker, name, SERVER, args=(report,), sockets=sockets, **keys)


def seen(daemon: Daemon, name: str, pid: int) -> dict[str, Any]:
    path = daemon.root / f"seen-{name}.{pid}"
    wait_for(path.exists, what=f"{name} ({pid}) reporting what it got")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def ask(address: Any, family: int = socket.AF_INET, timeout: float = 10.0) -> int:
    """Connect, and read the pid of the process that answered."""
    with socket.socket(family) as client:
        client.settimeout(timeout)
        client.connect(address)
        return int(client.makefile().readline())


def answers(address: Any) -> bool:
    """Whether something listens at ``address`` (a connection is taken)."""
    try:
        with socket.create_connection(address, timeout=5):
            return True
    except OSError:
        return False


def socket_links(pid: int) -> set[str] | None:
    """The ``socket:[inode]`` of every socket ``pid`` holds; None where
    there is no /proc to tell (the checks that need it are left out)."""
    if not USE_PROC:
        return None
    found = set()
    folder = f"/proc/{pid}/fd"
    for entry in os.listdir(folder):
        try:
            link = os.readlink(f"{folder}/{entry}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found.add(link)
    return found


def test_a_task_gets_its_sockets_from_fd_3_with_listen_env(daemon: Daemon) -> None:
    web, api = free_port(), free_port()
    path = str(daemon.root / "admin.sock")
    daemon.write_config(
        {
            "sockets": {
                "web": {"listen": f"127.0.0.1:{web}"},
                "api": {"listen": f"127.0.0.1:{api}", "backlog": 16},
                "admin": {"listen": path, "mode": "0600"},
            },
            "tasks": {"srv": server_task(daemon, "srv", ["api", "web", "admin"])},
        }
    )
    daemon.start()
    (pid,) = daemon.wait_pids("srv", 1)
    got = seen(daemon, "srv", pid)
    assert got["env"] == {
        "LISTEN_FDS": "3",
        "LISTEN_PID": str(pid),
        "LISTEN_FDNAMES": "api:web:admin",
    }
    # 0-2, the three sockets, and nothing else of taskforce's.
    assert got["fds"] == [0, 1, 2, 3, 4, 5]
    assert got["names"] == [str(("127.0.0.1", api)), str(("127.0.0.1", web)), path]
    held = socket_links(daemon.pid)
    assert held is None or {got["links"][fd] for fd in ("3", "4", "5")} <= held
    assert ask(("127.0.0.1", web)) == pid
    assert ask(("127.0.0.1", api)) == pid
    assert ask(path, socket.AF_UNIX) == pid
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert daemon.stop() == 0
    assert not os.path.exists(path), "a final shutdown removes its Unix sockets"
    with pytest.raises(ConnectionRefusedError):
        ask(("127.0.0.1", web))
    assert daemon.replay_problems() == []


@pytest.mark.skipif(not has_ipv6(), reason="no ::1 here")
def test_ipv6_socket(daemon: Daemon) -> None:
    port = free_port(socket.AF_INET6, "::1")
    daemon.write_config(
        {
            "sockets": {"six": {"listen": f"[::1]:{port}"}},
            "tasks": {"srv": server_task(daemon, "srv", ["six"])},
        }
    )
    daemon.start()
    (pid,) = daemon.wait_pids("srv", 1)
    assert seen(daemon, "srv", pid)["env"]["LISTEN_FDNAMES"] == "six"
    assert ask(("::1", port), socket.AF_INET6) == pid
    assert daemon.stop() == 0


def test_connection_waits_while_the_task_is_down_and_socket_survives(daemon: Daemon) -> None:
    port = free_port()
    daemon.write_config(
        {
            "sockets": {"web": {"listen": f"127.0.0.1:{port}"}},
            "tasks": {"srv": server_task(daemon, "srv", ["web"])},
            # Every exit is a fast failure, restarted only after a while:
            # a window with no process at all.
            "settings": {"stable_after": 600, "backoff_initial": 1.5},
        }
    )
    daemon.start()
    (first,) = daemon.wait_pids("srv", 1)
    inode = seen(daemon, "srv", first)["links"]["3"]
    assert inode in (socket_links(daemon.pid) or {inode})
    os.kill(first, signal.SIGKILL)
    daemon.wait_log("failing fast")
    assert daemon.pids("srv") == set()
    with socket.socket() as client:
        client.settimeout(20)
        client.connect(("127.0.0.1", port))  # queued in the backlog, not refused
        assert daemon.pids("srv") == set(), "connected while nothing accepts"
        answer = int(client.makefile().readline())
    (second,) = daemon.wait_pids("srv", 1)
    assert answer == second != first
    assert seen(daemon, "srv", second)["links"]["3"] == inode, "the same socket after a restart"
    # A reset (SIGHUP) re-executes taskforce: the socket goes through it,
    # and a client that comes meanwhile is served all the same.
    os.kill(daemon.pid, signal.SIGHUP)
    assert ask(("127.0.0.1", port), timeout=20) in (second, *daemon.pids("srv"))
    third = wait_for(
        lambda: (lambda p: p if p and p != {second} else None)(daemon.pids("srv")),
        timeout=20,
        what="srv started again after the reset",
    )
    (third_pid,) = third
    got = seen(daemon, "srv", third_pid)
    assert got["links"]["3"] == inode, "the same socket after a reset"
    assert got["env"]["LISTEN_PID"] == str(third_pid)
    assert inode in (socket_links(daemon.pid) or {inode})
    assert ask(("127.0.0.1", port)) == third_pid
    assert daemon.stop() == 0
    assert daemon.replay_problems() == []


def test_changed_listen_restarts_only_the_tasks_using_it(daemon: Daemon) -> None:
    a, b, c = free_port(), free_port(), free_port()

    def config(a_port: int) -> dict[str, Any]:
        return {
            "sockets": {
                "a": {"listen": f"127.0.0.1:{a_port}"},
                "b": {"listen": f"127.0.0.1:{b}"},
            },
            "tasks": {
                "uses_a": server_task(daemon, "uses_a", ["a"]),
                "uses_b": server_task(daemon, "uses_b", ["b"]),
                "none": task(daemon.marker, "none"),
            },
        }

    daemon.write_config(config(a))
    daemon.start()
    (old_a,) = daemon.wait_pids("uses_a", 1)
    (old_b,) = daemon.wait_pids("uses_b", 1)
    (old_none,) = daemon.wait_pids("none", 1)
    daemon.write_config(config(c))
    # (A rollout: a surge process first, then the old one goes, and with it
    # the last copy of the old socket; a new one takes its slot, and the
    # surge process goes.  Until it is done, the one process seen may be the
    # surge's.)
    daemon.wait_log("config changed: sockets")
    daemon.wait_log("rollout of uses_a done")
    new_a = wait_for(
        lambda: (lambda p: p if len(p) == 1 and old_a not in p else None)(daemon.pids("uses_a")),
        what="uses_a replaced",
    )
    (new_a_pid,) = new_a
    assert ask(("127.0.0.1", c)) == new_a_pid
    with pytest.raises(ConnectionRefusedError):
        ask(("127.0.0.1", a))  # the old address is closed
    assert daemon.pids("uses_b") == {old_b}
    assert daemon.pids("none") == {old_none}
    # A socket removed from the config (and from the task that used it) is
    # closed by taskforce.
    cfg = config(c)
    del cfg["sockets"]["b"]
    cfg["tasks"]["uses_b"]["sockets"] = []
    held = socket_links(daemon.pid)
    daemon.write_config(cfg)
    if held is not None:
        wait_for(lambda: len(socket_links(daemon.pid) or ()) < len(held), what="socket b closed")
    else:  # seen from outside instead: its address no longer answers
        wait_for(lambda: not answers(("127.0.0.1", b)), what="socket b closed")
    assert daemon.stop() == 0


def test_busy_port_refuses_start_and_reload_changes_nothing(daemon: Daemon) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        daemon.write_config(
            {
                "sockets": {"web": {"listen": f"127.0.0.1:{busy}"}},
                "tasks": {"srv": server_task(daemon, "srv", ["web"])},
            }
        )
        daemon.start()
        assert daemon.proc is not None
        assert daemon.proc.wait(20) != 0
        text = daemon.log_text()
        assert f"sockets.web.listen: cannot listen on 127.0.0.1:{busy}" in text
        assert "in use" in text
        assert daemon.processes() == {}

        good = free_port()
        daemon.write_config(
            {
                "sockets": {"web": {"listen": f"127.0.0.1:{good}"}},
                "tasks": {"srv": server_task(daemon, "srv", ["web"])},
            }
        )
        daemon.start()
        (pid,) = daemon.wait_pids("srv", 1)
        held = socket_links(daemon.pid)
        daemon.write_config(
            {
                "sockets": {
                    "web": {"listen": f"127.0.0.1:{busy}"},
                    "more": {"listen": f"127.0.0.1:{free_port()}"},
                },
                "tasks": {"srv": server_task(daemon, "srv", ["web", "more"])},
            }
        )
        daemon.wait_log("nothing was changed")
        assert f"cannot listen on 127.0.0.1:{busy}" in daemon.log_text()
        assert daemon.pids("srv") == {pid}
        assert socket_links(daemon.pid) == held, "no socket opened or closed"
        assert ask(("127.0.0.1", good)) == pid
    assert daemon.stop() == 0


def start_web_and_app(daemon: Daemon) -> tuple[int, Path]:
    """Start ``daemon`` with one task on a TCP and a Unix socket: (port, path)."""
    port = free_port()
    path = daemon.root / "app.sock"
    daemon.write_config(
        {
            "sockets": {"web": {"listen": f"127.0.0.1:{port}"}, "app": {"listen": str(path)}},
            "tasks": {"srv": server_task(daemon, "srv", ["web", "app"])},
        }
    )
    daemon.start()
    return port, path


def test_after_a_crash_taskforce_binds_beside_its_leftovers(daemon: Daemon) -> None:
    port, path = start_web_and_app(daemon)
    (old,) = daemon.wait_pids("srv", 1)
    assert daemon.proc is not None
    daemon.proc.kill()  # taskforce dies; its task (and the sockets it holds) live on
    daemon.proc.wait(10)
    assert daemon.pids("srv") == {old}
    assert ask(("127.0.0.1", port)) == old
    daemon.start()
    new = wait_for(
        lambda: (lambda p: p if p and old not in p else None)(daemon.pids("srv")),
        timeout=20,
        what="the leftover stopped and a new srv running",
    )
    (new_pid,) = new
    assert ask(("127.0.0.1", port)) == new_pid
    assert ask(str(path), socket.AF_UNIX) == new_pid
    assert daemon.stop() == 0


def test_a_second_taskforce_does_not_take_the_sockets_of_a_live_one(daemon: Daemon) -> None:
    port, path = start_web_and_app(daemon)
    (pid,) = daemon.wait_pids("srv", 1)
    second = subprocess.run(
        daemon.command(), cwd=daemon.root, capture_output=True, text=True, timeout=60
    )
    assert second.returncode != 0
    assert "in use" in second.stderr
    assert ask(("127.0.0.1", port)) == pid
    assert ask(str(path), socket.AF_UNIX) == pid
    assert daemon.stop() == 0


def test_unix_socket_stale_file_replaced_other_file_refused(daemon: Daemon) -> None:
    path = daemon.root / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a file nobody listens on: a leftover
    daemon.write_config(
        {
            "sockets": {"app": {"listen": str(path)}},
            "tasks": {"srv": server_task(daemon, "srv", ["app"])},
        }
    )
    daemon.start()
    (pid,) = daemon.wait_pids("srv", 1)
    assert ask(str(path), socket.AF_UNIX) == pid
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    assert daemon.stop() == 0
    assert not path.exists()
    path.write_text("not a socket")
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(20) != 0
    assert "exists and is not a socket" in daemon.log_text()
    assert path.read_text() == "not a socket"


# ------------------------------------------------------------ config errors


def errors(text: str) -> list[str]:
    return [str(error) for error in validate_all(text, "c.yaml", roles=None)]


def test_config_errors_name_the_key() -> None:
    text = """\
sockets:
  web: {listen: "localhost:80", colour: red}
  api: {listen: "127.0.0.1:99999"}
  ok: {listen: 8080}
  same: {listen: "0.0.0.0:8080"}
  tcp: {listen: "127.0.0.1:81", mode: "0600"}
  bare: {backlog: 5}
tasks:
  a:
    commands: {start: [x]}
    sockets: [ok, wbe, ok]
"""
    found = errors(text)
    assert "c.yaml:2: sockets.web.colour: unknown socket key 'colour'" in found[0]
    assert any(
        e.startswith("c.yaml:2: sockets.web.listen: 'localhost' is not an IPv4") for e in found
    )
    assert any(e.startswith("c.yaml:3: sockets.api.listen: port must be") for e in found)
    assert "c.yaml:5: sockets.same.listen: 0.0.0.0:8080 is also the address of sockets.ok" in found
    assert "c.yaml:6: sockets.tcp.mode: mode is only for Unix sockets (a path)" in found
    assert any(
        e.startswith("c.yaml:7: sockets.bare: the socket has no listen address") for e in found
    )
    assert any(
        e.startswith("c.yaml:11: tasks.a.sockets[1]: no socket 'wbe'") and "did you mean" in e
        for e in found
    )
    assert "c.yaml:11: tasks.a.sockets[2]: socket 'ok' is listed twice (first at [0])" in found


@pytest.mark.parametrize(
    ("listen", "canonical"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        (8080, "0.0.0.0:8080"),
        ("8080", "0.0.0.0:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("[0:0::1]:8080", "[::1]:8080"),
        ("/run//app/./x.sock", "/run/app/x.sock"),
    ],
)
def test_listen_is_written_one_way(listen: Any, canonical: str) -> None:
    config = load_config_text(
        json.dumps(
            {
                "sockets": {"s": {"listen": listen}},
                "tasks": {"a": {"commands": {"start": ["x"]}, "sockets": "s"}},
            }
        ),
        roles=None,
    )
    from taskforce.core.model import build
    from taskforce.core.specs import HostFacts

    (spec,) = build(config, HostFacts(), None)["a"].process(0).sockets
    assert (spec.name, spec.listen) == ("s", canonical)


@pytest.mark.parametrize(
    "listen",
    ["::1:80", "[::1]", "relative/x.sock", "127.0.0.1:0", "1.2.3:80", "/" + "x" * 200, True],
)
def test_bad_listen_is_a_config_error(listen: Any) -> None:
    text = json.dumps(
        {"sockets": {"s": {"listen": listen}}, "tasks": {"a": {"commands": {"start": ["x"]}}}}
    )
    (found,) = errors(text)
    assert "sockets.s.listen" in found


# ------------------------------------------------- the shell's parts, alone


def test_sockets_are_kept_by_address_through_renames_and_swaps() -> None:
    from taskforce.core.sockets import SocketSpec
    from taskforce.sockets import Sockets

    one, two = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    held = Sockets()
    try:
        said = held.update({"a": SocketSpec("a", one), "b": SocketSpec("b", two)})
        assert len(said) == 2
        fds = {listen: item.sock.fileno() for listen, item in held.held.items()}
        # The names trade addresses: nothing is bound again (it could not be).
        held.update({"a": SocketSpec("a", two), "b": SocketSpec("b", one, backlog=4)})
        assert {listen: item.sock.fileno() for listen, item in held.held.items()} == fds
        assert held.fds([SocketSpec("a", two), SocketSpec("b", one, backlog=4)]) == [
            ("a", fds[two]),
            ("b", fds[one]),
        ]
        said = held.update({"b": SocketSpec("b", one, backlog=4)})
        assert said == [f"socket a: closed ({two} is not in the config)"]
    finally:
        held.close()
    assert held.held == {}


def test_bound_sockets_let_nobody_in_until_committed_and_release_unbinds() -> None:
    from taskforce.core.sockets import SocketSpec
    from taskforce.sockets import Sockets

    one, two = free_port(), free_port()
    held = Sockets()
    try:
        held.update({"a": SocketSpec("a", f"127.0.0.1:{one}")})
        wanted = {
            "a": SocketSpec("a", f"127.0.0.1:{one}"),
            "b": SocketSpec("b", f"127.0.0.1:{two}"),
        }
        held.bind(wanted)
        assert not refuses(two), "bound: the port is ours (a busy one would say so now)"
        assert not answers(("127.0.0.1", two)), "but nobody can connect yet"
        held.release()
        assert refuses(two) and answers(("127.0.0.1", one)), "released: unbound, the rest kept"
        held.bind(wanted)
        assert held.commit(wanted) == [f"socket b: listening on 127.0.0.1:{two}"]
        assert answers(("127.0.0.1", two)) and not held.bound
    finally:
        held.close()
    assert refuses(one) and refuses(two)


def test_pass_on_and_inherited_hand_the_same_sockets_over(tmp_path: Path) -> None:
    from taskforce.core.sockets import SocketSpec
    from taskforce.sockets import INHERIT_ENV, Sockets

    path = str(tmp_path / "x.sock")
    specs = {"t": SocketSpec("t", f"127.0.0.1:{free_port()}"), "u": SocketSpec("u", path)}
    before = Sockets()
    before.update(specs)
    links = {listen: os.fstat(h.sock.fileno()).st_ino for listen, h in before.held.items()}
    before.pass_on()
    assert all(h.sock.get_inheritable() for h in before.held.values())
    for item in before.held.values():
        item.sock.detach()  # the "new image" owns the descriptors now
    after = Sockets.inherited()
    try:
        assert INHERIT_ENV not in os.environ
        assert {
            listen: os.fstat(h.sock.fileno()).st_ino for listen, h in after.held.items()
        } == links
        assert not any(h.sock.get_inheritable() for h in after.held.values())
        assert after.update(specs) == []  # adopted: nothing bound again
    finally:
        after.close()
    assert not os.path.exists(path)


@pytest.mark.parametrize("fast", [True, False], ids=["posix_spawn", "fork"])
def test_a_child_gets_its_sockets_in_order_whatever_their_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    from taskforce import process

    monkeypatch.setattr(process, "FAST_SPAWN", fast and process.FAST_SPAWN)

    first, second = socket.socket(), socket.socket()
    first.bind(("127.0.0.1", 0))
    second.bind(("127.0.0.1", 0))
    out = tmp_path / "out"
    code = (
        "import os, socket, sys; "
        "fds = [fd for fd in range(3, 64) if os.path.exists(f'/dev/fd/{fd}')]; "
        "names = [socket.socket(fileno=fd).getsockname()[1] for fd in (3, 4)]; "
        "env = [os.environ.get(k) for k in ('LISTEN_FDS', 'LISTEN_FDNAMES', 'LISTEN_PID')]; "
        "open(sys.argv[1], 'w').write(repr((names, env, os.getpid(), fds)))"
    )
    try:
        # Given in the opposite order of their descriptors: each is moved
        # out of the way before the other takes its place.
        pid = process.spawn(
            [sys.executable, "-c", code, str(out)],
            dict(os.environ),
            sockets=[("two", second.fileno()), ("one", first.fileno())],
        )
        os.waitpid(pid, 0)
        names, env, child, fds = eval(out.read_text())  # noqa: S307 -- our own child's repr
        assert names == [second.getsockname()[1], first.getsockname()[1]]
        assert env == ["2", "two:one", str(child)]
        # (What else this test's process left inheritable may follow on the
        # posix_spawn path; taskforce marks everything close-on-exec at
        # start, which the daemon tests check.)
        assert fds[:2] == [3, 4]
    finally:
        first.close()
        second.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_unix_socket_owner_and_mode(tmp_path: Path) -> None:
    from taskforce.core.sockets import SocketSpec
    from taskforce.sockets import Sockets

    path = str(tmp_path / "owned.sock")
    held = Sockets()
    try:
        held.update({"o": SocketSpec("o", path, mode=0o640, owner="nobody")})
        found = os.stat(path)
        assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (65534, 0o640)
        # Changed in place: the same socket, its file adjusted.
        fd = held.held[path].sock.fileno()
        held.update({"o": SocketSpec("o", path, mode=0o600, owner="0:0")})
        found = os.stat(path)
        assert (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) == (0, 0, 0o600)
        assert held.held[path].sock.fileno() == fd
    finally:
        held.close()


def test_a_socket_file_replaced_by_a_link_never_passes_its_mode_and_owner_on(
    tmp_path: Path,
) -> None:
    """Whoever may write to a socket's folder can swap its file for a link
    to any other file; a reload giving the socket a new mode or owner must
    not then chmod or chown that file (as root, it would be anyone's)."""
    from taskforce.core.sockets import SocketSpec
    from taskforce.sockets import SocketError, Sockets

    path = str(tmp_path / "owned.sock")
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    before = os.stat(victim)
    held = Sockets()
    try:
        held.update({"o": SocketSpec("o", path, mode=0o640)})
        os.unlink(path)
        os.symlink(victim, path)
        with pytest.raises(SocketError, match=r"sockets\.o\.listen: .* no longer the socket"):
            held.update({"o": SocketSpec("o", path, mode=0o666, owner="nobody")})
        after = os.stat(victim)
        assert (after.st_uid, after.st_gid, after.st_mode) == (
            before.st_uid,
            before.st_gid,
            before.st_mode,
        )
    finally:
        held.close()
    assert os.path.islink(path), "and closing removes only a file that is ours"


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A daemon's shell in this process (no loop, no signals, no cgroups):
    its config file and roles path, fed events by the test."""
    import logging

    from taskforce.core import events as ev
    from taskforce.daemon import Daemon as Shell
    from taskforce.redact import LOGGERS

    monkeypatch.setenv("TASKFORCE_CGROUPS", "off")
    config = tmp_path / "taskforce.conf"
    config.write_text("tasks: {}\n")
    made: list[Any] = []

    def make(roles: Path | None = None) -> Any:
        """A shell whose core has seen ``Booted`` (and nothing else)."""
        shell = Shell(str(config), str(roles) if roles else None)
        made.append(shell)
        shell.feed(ev.Booted(at=shell.now, environ={}, host="h", fqdn="h", pid=1, ppid=0))
        return shell

    yield config, make
    for shell in made:
        shell.sockets.close()
        shell.notify.close()
        shell.probes.close()
        shell.output.close()
        shell.watcher.close()
        shell.tracker.close()
        for fd in (shell._wake_r, shell._wake_w):
            os.close(fd)
        shell.selector.close()
        for name in LOGGERS:
            logging.getLogger(name).removeFilter(shell.log_secrets)


def refuses(port: int) -> bool:
    """Whether nothing is bound at 127.0.0.1:``port`` (we can bind it)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_config_the_core_refuses_leaves_its_new_sockets_unbound(shell: Any) -> None:
    """The shell binds a new config's sockets before the core sees it (a
    busy port rejects it), but they listen only once the core has taken
    it: a config the core refuses leaves its new port unbound, and what is
    held as it was."""
    import dataclasses

    from taskforce.core import events as ev

    config, make = shell
    kept, new = free_port(), free_port()
    config.write_text(
        json.dumps(
            {
                "sockets": {"web": {"listen": f"127.0.0.1:{kept}"}},
                "tasks": {"t": {"commands": {"start": ["true"]}, "control": "off"}},
            }
        )
    )
    daemon = make()
    taken = daemon.reload("config")
    assert isinstance(taken, ev.ConfigLoaded) and answers(("127.0.0.1", kept))
    before = dict(daemon.core.config)

    # A reload adding a socket, in a config the core's build refuses (the
    # shell's check passed it: here, a requirement made unknown after it).
    config.write_text(
        json.dumps(
            {
                "sockets": {
                    "web": {"listen": f"127.0.0.1:{kept}"},
                    "more": {"listen": f"127.0.0.1:{new}"},
                },
                "tasks": {"t": {"commands": {"start": ["true"]}, "control": "off"}},
            }
        )
    )
    loaded = daemon.load_inputs("config")
    assert isinstance(loaded, ev.ConfigLoaded)
    tasks = {"t": {**loaded.config["tasks"]["t"], "requires": ["nosuch"]}}
    refused = dataclasses.replace(loaded, config={**loaded.config, "tasks": tasks})
    daemon.apply_loaded(refused)
    assert daemon.core.counters["reload_errors"] == 1, "the core refused it"
    assert refuses(new), "the refused config's new port is not bound"
    assert answers(("127.0.0.1", kept)), "the held socket still listens"
    assert set(daemon.sockets.held) == {f"127.0.0.1:{kept}"} and not daemon.sockets.bound
    assert daemon.core.config == before

    # Taken, the same config's sockets listen.
    daemon.apply_loaded(loaded)
    assert daemon.core.in_force(loaded.config) and answers(("127.0.0.1", new))


def test_a_first_config_the_core_refuses_opens_no_socket(shell: Any, tmp_path: Path) -> None:
    """At start-up (here: after a reset that found the roles file gone, the
    core refuses to start anything), the config's sockets are not left bound."""
    from taskforce.core import events as ev

    config, make = shell
    port = free_port()
    config.write_text(
        json.dumps(
            {
                "sockets": {"web": {"listen": f"127.0.0.1:{port}"}},
                "tasks": {"t": {"commands": {"start": ["true"]}, "control": "off"}},
            }
        )
    )
    daemon = make(roles=tmp_path / "gone")
    (loaded,) = (e for e in daemon.boot_events() if not isinstance(e, ev.Booted))
    assert isinstance(loaded, ev.ConfigLoaded) and loaded.roles_missing
    daemon.feed(loaded)
    assert daemon.core.counters["reload_errors"] == 1 and not daemon.core.tasks
    assert refuses(port) and not daemon.sockets.held and not daemon.sockets.bound
