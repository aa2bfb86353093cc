"""Let no one in: who may do what on the control path, secrets, private files.

From outside where it can be: a real daemon over real sockets (TCP with a
token, mutual TLS, a Unix socket reached by a second user), plus the pure
decisions (``core.access``, ``core.secrets``) driven directly.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import pwd
import re
import shutil
import ssl
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, shell_task, task, wait_for
from test_control import FAST, call, make_certificate

from taskforce.config import ConfigError, load_config_text
from taskforce.core import access, secrets
from taskforce.core import events as ev
from taskforce.core.supervisor import Supervisor
from taskforce.simulator import Simulation
from taskforce.tfctl import UnixConnection

TOKEN = "a-long-random-token-0123456789abcdef"
SECRET = "hunter2-correct-horse-battery"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="a second user needs root to become it")


# ================================================================ the core


def test_grants_read_users_groups_tokens_and_certificates() -> None:
    alice = {"uid": 1000, "gid": 100, "user": "alice", "groups": ["users", "wheel"], "gids": [100]}
    assert access.grants(None, {}), "None: unchecked (logs from before access control)"
    assert not access.grants((), alice)
    assert access.grants(("user:alice",), alice)
    assert access.grants(("group:wheel",), alice)
    assert access.grants(("uid:1000",), alice) and not access.grants(("uid:0",), alice)
    assert access.grants(("gid:100",), alice)
    assert not access.grants(("token",), alice)
    assert access.grants(("token",), {"token": True})
    assert access.grants(("cert",), {"subject": "CN=ops"})
    assert access.grants(("subject:CN=ops",), {"subject": "CN=ops"})
    assert not access.grants(("subject:CN=ops",), {"subject": "CN=dev"})
    assert [access.grant_of(e) for e in ("bob", "@wheel", "0", "@0")] == [
        "user:bob",
        "group:wheel",
        "uid:0",
        "gid:0",
    ]


def _world() -> Simulation:
    sim = Simulation()
    sim.boot(load_config_text('{tasks: {a: {commands: {start: ["x"]}}}}', "t"))
    return sim


def test_the_core_refuses_who_is_not_allowed_and_logs_who_did_what() -> None:
    sim = _world()
    nobody = {"uid": 65534, "user": "nobody", "groups": ["nogroup"]}
    sim.advance(1.0)
    out = sim.feed(
        ev.ControlRequested(sim.now, 1, "control", {"a": "off"}, who=nobody, allow=("uid:0",))
    )
    reply = [e for e in out if type(e).__name__ == "Reply"][0]
    assert reply.code == 403 and "uid 65534 (nobody)" in reply.body
    assert sim.core.tasks["a"].control == "wait", "a refused request changes nothing"
    root = {"uid": 0, "user": "root"}
    sim.advance(1.0)
    out = sim.feed(
        ev.ControlRequested(sim.now, 2, "control", {"a": "off"}, who=root, allow=("uid:0",))
    )
    reply = [e for e in out if type(e).__name__ == "Reply"][0]
    assert reply.code == 202
    logs = [e.message for e in out if type(e).__name__ == "Log"]
    assert any("control request by uid 0 (root): control a=off -> 202" in m for m in logs)
    # Actions the shell performs are granted (or not) by the core too.
    sim.advance(1.0)
    out = sim.feed(ev.ControlRequested(sim.now, 3, "stop", {}, who=nobody, allow=("uid:0",)))
    assert [e.code for e in out if type(e).__name__ == "Reply"] == [403]


def test_secret_names_are_redacted_and_digested() -> None:
    config = {
        "settings": {"secret_names": ["*PASSWORD*", "api_*"]},
        "defines": {"DB_PASSWORD": SECRET, "DSN": "pg://app:{DB_PASSWORD}@db", "Api_Key": "k"},
        "tasks": {"t": {"commands": {"start": ["run", f"--dsn=pg://app:{SECRET}@db"]}}},
    }
    shown = json.dumps(secrets.redact_config(config))
    assert SECRET not in shown and '"DB_PASSWORD": "<redacted>"' in shown
    assert '"Api_Key": "<redacted>"' in shown, "patterns match whatever the case"
    assert "--dsn=pg://app:<redacted>@db" in shown, "a spliced secret is hidden too"
    assert '"secret_names": ["*PASSWORD*", "api_*"]' in shown
    one, other = secrets.digest("salt", SECRET), secrets.digest("salt", SECRET + "!")
    assert one == secrets.digest("salt", SECRET) and one != other
    assert secrets.digest("pepper", SECRET) != one, "salted per log"


def test_entry_values_look_again_only_at_entries_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = secrets.SecretNames()
    plain = {"commands": {"start": ["run"]}}
    holding = {"commands": {"start": ["run"]}, "defines": {"DB_PASSWORD": SECRET}}
    entries = secrets.EntryValues()
    assert entries.of({"a": plain, "b": holding}, names) == {SECRET}
    looked: list[Any] = []
    real = secrets.secret_values

    def spy(data: Any, *args: Any, **kwargs: Any) -> set[str]:
        if isinstance(data, dict) and "commands" in data:  # (an entry, not a part)
            looked.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(secrets, "secret_values", spy)
    # The same entries: nothing is looked at, and the values are still known.
    assert entries.of({"a": plain, "b": holding}, names) == {SECRET}
    assert looked == []
    # An entry changed, or moved to another name: only that one is looked at.
    other = {"commands": {"start": ["run"]}, "defaults": {"API_TOKEN": "tok-tok-tok"}}
    assert entries.of({"a": plain, "b": other}, names) == {"tok-tok-tok"}
    assert looked == [other]
    looked.clear()
    assert entries.of({"a": other, "b": plain}, names) == {"tok-tok-tok"}
    assert looked == [other, plain]
    # Other secret names: everything again.
    looked.clear()
    assert entries.of({"a": other, "b": plain}, secrets.SecretNames(["*PASS*"])) == set()
    assert looked == [other, plain]


def test_a_tcp_service_with_control_and_no_credential_is_a_located_error() -> None:
    text = "settings:\n  http:\n    - listen: ':8080'\n      allow_control: true\ntasks: {}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "tf.yaml")
    assert "tf.yaml:4: settings.http[0].allow_control" in str(caught.value)
    assert "token_file or cafile" in str(caught.value)
    ok = text.replace("allow_control: true", "allow_control: true\n      token_file: /etc/tf.token")
    load_config_text(ok, "tf.yaml")


# ========================================================== a real daemon


def _token_file(folder: Path) -> Path:
    path = folder / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def _tcp_address(daemon: Daemon, scheme: str = "http") -> str:
    found = wait_for(
        lambda: re.search(rf"listening on ({scheme}://127\.0\.0\.1:\d+)", daemon.log_text()),
        what="the TCP listener",
    )
    return found.group(1)


def _http(
    address: str,
    target: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], str]:
    host, port = address.split("://")[1].rsplit(":", 1)
    if context is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, int(port), timeout=10, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def test_control_over_tcp_without_a_credential_does_not_start(daemon: Daemon) -> None:
    daemon.write_config({"settings": FAST, "tasks": {"a": task(daemon.marker, "a")}})
    checked = subprocess.run(
        daemon.command("-C", "-w", "127.0.0.1:0", "-A"), capture_output=True, text=True
    )
    assert checked.returncode == 1
    assert "control over TCP needs token_file or cafile" in checked.stderr
    daemon.start("-w", "127.0.0.1:0", "-A")
    assert daemon.proc is not None and daemon.proc.wait(20) == 1
    assert "control over TCP needs token_file or cafile" in daemon.log_text()
    assert not daemon.pids("a"), "nothing started"
    # A Unix socket needs no credential: the kernel says who connects.
    checked = subprocess.run(
        daemon.command("-C", "-w", str(daemon.root / "s"), "-A"), capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def test_a_token_over_tcp(daemon: Daemon) -> None:
    m = daemon.marker
    token = _token_file(daemon.root)
    http_settings = [{"listen": "127.0.0.1:0", "allow_control": True, "token_file": str(token)}]
    daemon.write_config({"settings": {**FAST, "http": http_settings}, "tasks": {"a": task(m, "a")}})
    daemon.start()
    address = _tcp_address(daemon)
    daemon.wait_pids("a", 1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Status on loopback is open; control needs the token, even on loopback.
    assert _http(address, "/status/version")[0] == 200
    code, headers, text = _http(address, "/manage/control?a=off")
    assert code == 401 and headers["www-authenticate"].startswith("Bearer")
    assert _http(address, "/manage/control?a=off", {"Authorization": "Bearer nope"})[0] == 401
    assert daemon.pids("a"), "a refused request changes nothing"
    # DNS rebinding: a name that is not ours is refused, token or not.
    code, _, text = _http(address, "/status/tasks", {"Host": "attacker.example"})
    assert code == 421 and "attacker.example" in text
    code, _, _ = _http(address, "/manage/control?a=off", {**auth, "Host": "attacker.example"})
    assert code == 421 and daemon.pids("a")
    assert _http(address, "/status/version", {"Host": "localhost"})[0] == 200
    # The right token works, with GET as the original's clients send it.
    code, _, text = _http(address, "/manage/control?a=off", auth)
    assert (code, text) == (202, "a\tok\n")
    wait_for(lambda: not daemon.pids("a"), what="a stopped")
    daemon.wait_log("control request by token from 127.0.0.1: control a=off -> 202")
    _, _, metrics = _http(address, "/metrics")
    assert 'taskforce_http_refused_total{reason="host"} 2' in metrics
    assert 'taskforce_http_refused_total{reason="bad_token"} 1' in metrics
    assert 'taskforce_http_refused_total{reason="no_credentials"} 1' in metrics
    assert _http(address, "/manage/stop", auth)[0] == 202
    assert daemon.proc is not None and daemon.proc.wait(20) == 0


def _client_certificate(folder: Path, name: str) -> Path:
    openssl = shutil.which("openssl")
    assert openssl is not None  # make_certificate skipped otherwise
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"],
        capture_output=True,
        check=True,
    )
    both = folder / f"{name}.pem"
    both.write_text(cert.read_text() + key.read_text())
    return both


def test_mutual_tls_beyond_loopback_rules(daemon: Daemon) -> None:
    m = daemon.marker
    server = make_certificate(daemon.root)
    ops, dev = _client_certificate(daemon.root, "ops"), _client_certificate(daemon.root, "dev")
    cas = daemon.root / "clients.pem"
    cas.write_text((daemon.root / "ops.crt").read_text() + (daemon.root / "dev.crt").read_text())
    service = {
        "listen": "127.0.0.1:0",
        "certfile": str(server),
        "cafile": str(cas),
        "client_subject": "CN=ops",
        "allow_control": True,
    }
    daemon.write_config({"settings": {**FAST, "http": [service]}, "tasks": {"a": task(m, "a")}})
    daemon.start()
    address = _tcp_address(daemon, "https")
    daemon.wait_pids("a", 1)

    def context(cert: Path | None) -> ssl.SSLContext:
        made = ssl.create_default_context(cafile=str(server))
        if cert is not None:
            made.load_cert_chain(str(cert))
        return made

    assert _http(address, "/status/version", context=context(None))[0] == 200
    assert _http(address, "/manage/control?a=off", context=context(None))[0] == 401
    code, _, text = _http(address, "/manage/control?a=off", context=context(dev))
    assert code == 403 and "certificate CN=dev" in text, "a subject not listed is refused"
    assert daemon.pids("a")
    code, _, text = _http(address, "/manage/control?a=off", context=context(ops))
    assert (code, text) == (202, "a\tok\n")
    daemon.wait_log("control request by certificate CN=ops")
    assert _http(address, "/manage/stop", context=context(ops))[0] == 202
    assert daemon.proc is not None and daemon.proc.wait(20) == 0


def _open_dir() -> Path:
    """A folder a second user can reach (pytest's own are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="tf", dir="/tmp"))
    folder.chmod(0o755)
    return folder


def _as_user(uid: int, gid: int, sock: str, target: str) -> tuple[int, str]:
    """GET ``target`` on ``sock`` from a forked client that became ``uid``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, ask, report
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            conn = UnixConnection(sock)
            conn.request("GET", target)
            response = conn.getresponse()
            answer = json.dumps([response.status, response.read().decode()])
        except BaseException as exc:  # noqa: BLE001 -- all must reach the parent
            answer = json.dumps([0, repr(exc)])
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    code, text = json.loads(data)
    return int(code), str(text)


@needs_root
def test_a_second_user_cannot_control_over_a_unix_socket_unless_allowed(daemon: Daemon) -> None:
    m = daemon.marker
    nobody = pwd.getpwnam("nobody")
    folder = _open_dir()
    sock = str(folder / "s.taskforce")
    settings: dict[str, Any] = {**FAST, "file_group": nobody.pw_gid}
    settings["http"] = [{"listen": sock, "allow_control": True}]
    daemon.write_config({"settings": settings, "tasks": {"a": task(m, "a")}})
    daemon.start()
    wait_for(lambda: os.path.exists(sock), what="the control socket")
    daemon.wait_pids("a", 1)
    info = os.stat(sock)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == nobody.pw_gid
    who = (nobody.pw_uid, nobody.pw_gid)
    assert _as_user(*who, sock, "/status/version")[0] == 200, "status as the socket allows"
    code, text = _as_user(*who, sock, "/manage/control?a=off")
    assert code == 403 and "uid 65534 (nobody)" in text or f"uid {nobody.pw_uid}" in text
    assert daemon.pids("a")
    daemon.wait_log(f"control request refused: uid {nobody.pw_uid} (nobody) may not control")
    # Allowed by name, and kept from status by another list.
    settings["http"] = [
        {"listen": sock, "allow_control": True, "allow": {"control": ["nobody"]}},
    ]
    daemon.write_config({"settings": settings, "tasks": {"a": task(m, "a")}})
    wait_for(lambda: _as_user(*who, sock, "/manage/control?a=off")[0] == 202, what="nobody allowed")
    wait_for(lambda: not daemon.pids("a"), what="a stopped by nobody")
    settings["http"][0]["allow"] = {"status": ["root"], "control": ["root"]}
    daemon.write_config({"settings": settings, "tasks": {"a": task(m, "a")}})
    wait_for(
        lambda: _as_user(*who, sock, "/status/tasks")[0] == 403, what="status kept from nobody"
    )
    shutil.rmtree(folder, ignore_errors=True)


def test_no_secret_is_served_logged_or_recorded_and_files_are_private(
    daemon: Daemon, tmp_path: Path
) -> None:
    m = daemon.marker
    out_file = daemon.root / "b.log"
    say = "import os, time; print({}, flush=True); time.sleep(1000)"
    defs = {
        "a": task(m, "a", say.format("'pw is', os.environ['DB_PASSWORD']"), output="log"),
        "b": task(m, "b", say.format("os.environ['DSN']"), output={"file": str(out_file)}),
        "bad": {"commands": {"start": [f"/nonexistent/{{DB_PASSWORD}}-{m}"]}},
    }
    config = {
        "settings": FAST,
        "defines": {"DB_PASSWORD": SECRET, "DSN": "pg://app:{DB_PASSWORD}@db"},
        "tasks": defs,
    }
    daemon.write_config(config)
    sock = str(daemon.root / "s")
    old = os.umask(0)  # whatever the umask, taskforce's files are private
    try:
        daemon.start("-w", sock, "-A")
    finally:
        os.umask(old)
    wait_for(lambda: os.path.exists(sock), what="the control socket")
    daemon.wait_pids("a", 1)
    daemon.wait_log("pw is <redacted>")
    wait_for(lambda: out_file.exists() and out_file.read_text(), what="b's output")
    code, _, text = call(sock, "/status/config")
    assert code == 200 and SECRET not in text and '"DB_PASSWORD":"<redacted>"' in text
    # A changed secret is a change: the tasks using it restart.
    (before,) = daemon.pids("a")
    config["defines"]["DB_PASSWORD"] = SECRET + "-rotated"
    daemon.write_config(config)
    wait_for(lambda: daemon.pids("a") and daemon.pids("a") != {before}, what="a restarted")
    # A listener without a token ignores one (tfctl may send it everywhere).
    assert call(sock, "/manage/stop", headers={"Authorization": "Bearer other"})[0] == 202
    assert daemon.proc is not None and daemon.proc.wait(20) == 0
    assert SECRET not in daemon.log_text()
    recorded = "".join(p.read_text() for p in daemon.root.glob("events.jsonl*"))
    assert SECRET not in recorded and "<secret:" in recorded
    for path in [daemon.events, out_file]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # (the conftest replays the recorded run: digested, it must still match)


@needs_root
def test_a_task_run_as_its_user_gets_its_home(daemon: Daemon) -> None:
    nobody = pwd.getpwnam("nobody")
    out = _open_dir() / "env.txt"
    script = f'echo "$HOME $USER $LOGNAME $SHELL $KEPT" > {out}; exec sleep 1000'
    daemon.write_config(
        {
            "settings": FAST,
            "tasks": {
                "as_nobody": {**shell_task(daemon.marker, "n", script), "user": "nobody"},
            },
            "defines": {"KEPT": "kept"},
        }
    )
    out.parent.chmod(0o777)
    daemon.start()
    wait_for(lambda: out.exists() and out.read_text().strip(), what="the task's environment")
    home, user, logname, shell, kept = out.read_text().split()
    assert (home, user, logname, shell) == (nobody.pw_dir, "nobody", "nobody", nobody.pw_shell)
    assert kept == "kept"
    assert daemon.stop() == 0


def test_a_user_task_leaves_home_to_its_passwd_entry_unless_defined() -> None:
    sup = Supervisor()
    sup.handle(ev.Booted(at=0.0, environ={"HOME": "/root", "USER": "root", "PATH": "/bin"}))
    text = """
    tasks:
      mine: {commands: {start: [x]}, user: nobody}
      defined: {commands: {start: [x]}, user: nobody, defines: {HOME: /srv/defined}}
      plain: {commands: {start: [x]}}
    """
    sup.handle(ev.ConfigLoaded(at=0.0, config=load_config_text(text, "t")))
    env = {name: sup.tasks[name].spec.processes[0].env for name in ("mine", "defined", "plain")}
    assert "HOME" not in env["mine"] and "USER" not in env["mine"], "filled in from passwd"
    assert env["mine"]["PATH"] == "/bin"
    assert env["defined"]["HOME"] == "/srv/defined"
    assert env["plain"]["HOME"] == "/root"


def test_a_recorded_run_with_secrets_replays_through_its_checkpoints(tmp_path: Path) -> None:
    """Digested events, effects and checkpoints agree with each other: the
    log replays exactly, from its start and from every checkpoint, and holds
    no secret; a rotated secret shows as a change (the task restarts)."""
    from taskforce.core.snapshot import snapshot
    from taskforce.eventlog import Checkpoints, Recorder
    from taskforce.tools import replay

    sim = Simulation(start=1.0)
    path = tmp_path / "events.jsonl"
    recorder = Recorder(
        str(path), snapshot=lambda: snapshot(sim.core), checkpoints=Checkpoints(1, ratio=0)
    )
    sim.recorder = recorder

    def config(secret: str) -> dict[str, Any]:
        text = json.dumps(
            {
                "defines": {"API_TOKEN": secret, "URL": "https://x:{API_TOKEN}@h"},
                "tasks": {"a": {"commands": {"start": ["run", "{URL}"]}, "count": 2}},
            }
        )
        return dict(load_config_text(text, "t"))

    sim.boot(config(SECRET), environ={"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "aws-" + SECRET})
    sim.advance(1.0)
    out = sim.reload(config(SECRET + "-rotated"))
    assert any(type(e).__name__ == "Signal" for e in out), "a changed secret is a change"
    recorder.close()
    text = path.read_text()
    assert SECRET not in text and text.count('{"snapshot"') >= 2
    report = io.StringIO()
    assert replay(str(path), out=report) == 0, report.getvalue()
