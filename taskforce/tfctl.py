"""``tfctl``: talk to a running taskforce over its control socket.

It finds the daemon where the daemon listens by default
(``/var/run/s.taskforce``), or where ``-s`` or ``TASKFORCE_SOCKET`` say: a
Unix socket path, ``host:port``, or an ``http://``/``https://`` URL.

Exit codes a script can rely on:

- 0: done (the daemon said 2xx);
- 1: the daemon refused or failed the request (4xx/5xx; its reason is
  printed on stderr);
- 2: bad usage (unknown command, bad arguments);
- 3: cannot reach the daemon (nothing listens, no permission, TLS failure).

Only the standard library is used, so tfctl runs wherever Python does.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

DEFAULT_SOCKET = "/var/run/s.taskforce"
#: ``logs -f`` asks for new lines this often (seconds).
FOLLOW_POLL = 0.5
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    """The daemon cannot be reached; the message says where and why."""


class Usage(Exception):
    """Bad arguments, found after argparse had its say."""


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the tests and benchmarks use it too)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One daemon address; ``request`` returns (status, headers, body text)."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        cafile: str | None = None,
        insecure: bool = False,
        token: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.cafile = cafile
        self.insecure = insecure
        #: the bearer token sent with every request (TCP control needs one)
        self.token = token
        #: a client certificate (PEM, with its key unless ``key`` names one)
        self.cert = cert
        self.key = key

    def _connection(self) -> http.client.HTTPConnection:
        address = self.address
        if "://" in address:
            parts = urlsplit(address)
            tls = parts.scheme == "https"
            host, port = parts.hostname or "localhost", parts.port
        elif "/" in address:
            return UnixConnection(address, self.timeout)
        else:
            tls = bool(self.cafile) or self.insecure or bool(self.cert)
            host, port = _host_port(address)
        if port is None:
            port = 8443 if tls else 8080
        if not tls:
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        context = ssl.create_default_context(cafile=self.cafile)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                raise Unreachable(f"client certificate {self.cert}: {exc}") from None
        return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)

    def request(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, dict[str, str], str]:
        headers = {"Accept": "application/json, text/plain"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if params and body is None and method == "POST":
            body = urlencode(list(params)).encode()
            content_type = "application/x-www-form-urlencoded"
        elif params:
            path = f"{path}?{urlencode(list(params))}"
        if content_type:
            headers["Content-Type"] = content_type
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ssl.SSLError as exc:
            raise Unreachable(f"TLS with {self.address} failed: {exc.reason or exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(_why(self.address, exc)) from None
        finally:
            conn.close()
        found = {name.lower(): value for name, value in response.getheaders()}
        return response.status, found, data.decode("utf-8", "replace")


def _host_port(address: str) -> tuple[str, int | None]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if port and not (port.isascii() and port.isdigit()):
        raise Usage(f"bad port in {address!r}")
    return host or "localhost", int(port) if port else None


def _why(address: str, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    hint = ""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        hint = (
            "; is taskforce running with a control socket there "
            "(taskforce -w PATH, or settings.http in its config)?"
        )
    elif isinstance(exc, PermissionError):
        hint = "; the socket is mode 0600: run tfctl as the user taskforce runs as"
    return f"cannot connect to {address}: {reason}{hint}"


# --------------------------------------------------------------- commands


def is_signal(word: str) -> bool:
    """Whether ``word`` names a signal: ``HUP``, ``sighup``, ``SIGHUP``, ``1``."""
    text = word.strip().upper()
    if text.isascii() and text.isdigit():
        return 0 < int(text) < signal.NSIG
    return (text if text.startswith("SIG") else "SIG" + text) in signal.Signals.__members__


def signal_and_tasks(words: Sequence[str], explicit: str | None) -> tuple[str, list[str]]:
    """``tfctl signal`` takes the signal after the tasks (``web HUP``, as the
    README shows) or before them (``HUP web``): the end that names a signal
    is the signal.  ``--signal`` says it outright."""
    if explicit is not None:
        return explicit, list(words)
    usage = "expected TASK[:N]... SIGNAL (e.g. tfctl signal web HUP)"
    if len(words) < 2:
        raise Usage(usage)
    first, last = is_signal(words[0]), is_signal(words[-1])
    if last and not first:
        return words[-1], list(words[:-1])
    if first and not last:
        return words[0], list(words[1:])
    if first and last:
        raise Usage(
            f"{words[0]!r} and {words[-1]!r} both name signals; say which is the "
            f"signal with --signal (tfctl signal --signal {words[-1]} {' '.join(words[:-1])})"
        )
    raise Usage(f"neither {words[0]!r} nor {words[-1]!r} names a signal: {usage}")


def _assignments(items: Sequence[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise Usage(f"expected TASK={what}, got {item!r}")
        pairs.append((name, value))
    return pairs


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def status_rows(tasks: dict[str, Any], now: float) -> list[list[str]]:
    """The status table: one row per slot (or per task without slots)."""
    rows = [["TASK", "STATE", "PID", "UPTIME", "RESTARTS", "INFO"]]
    for name in sorted(tasks):
        task = tasks[name]
        notes = []
        overrides = task.get("overrides") or {}
        configured = task.get("configured") or {}
        made = task.get("overrides_t") or {}
        for key in sorted(overrides):
            since = f" for {_duration(now - made[key])}" if key in made else ""
            notes.append(
                f"override {key}={overrides[key]} (config: {configured.get(key)}){since}, "
                "until undone, a reload request or an edit of this task"
            )
        processes = task.get("processes") or []
        if not processes:
            state = task.get("state", "?")
            if state == "out_of_scope":
                why = "not in this host's roles"
            elif task.get("waiting_on"):
                why = "waiting on " + ", ".join(task["waiting_on"])
            else:
                why = f"control {task.get('control')}"
            info = "; ".join([why, *notes])
            rows.append([name, state, "-", "-", "-", info])
            continue
        for slot in processes:
            details: list[str] = []
            if slot.get("waiting_on"):
                details.append("waiting on " + ", ".join(slot["waiting_on"]))
            if slot.get("reason"):
                details.append(slot["reason"])
            if slot.get("exit") and slot["exit"] not in (slot.get("reason") or ""):
                details.append(f"last: {slot['exit']}")
            if "retry_t" in slot:
                details.append(f"retry in {max(0.0, slot['retry_t'] - now):.1f}s")
            running = slot.get("state") in ("running", "ready") and "started_t" in slot
            rows.append(
                [
                    f"{name}[{slot.get('instance', 0)}]",
                    str(slot.get("state", "?")),
                    str(slot.get("pid", "-")),
                    _duration(now - slot["started_t"]) if running else "-",
                    str(slot.get("restarts", 0)),
                    "; ".join(details + notes),
                ]
            )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        cells.append(row[-1])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_plan(answer: dict[str, Any]) -> str:
    lines = []
    for kind in ("start", "restart", "stop"):
        for change in answer.get(kind) or ():
            slots = ",".join(str(i) for i in change["instances"])
            lines.append(f"{kind:<8} {change['task']}[{slots}]  {change['why']}")
    if not lines:
        lines.append("no change: nothing would start, stop or restart")
    unchanged = answer.get("unchanged") or []
    if unchanged:
        lines.append(f"unchanged: {len(unchanged)} task{'s' if len(unchanged) != 1 else ''}")
    return "\n".join(lines)


def _print_body(body: str, stream: Any = None) -> None:
    if body:
        print(body, end="" if body.endswith("\n") else "\n", file=stream or sys.stdout)


def _finish(code: int, headers: dict[str, str], body: str, address: str) -> int:
    if code < 400:
        _print_body(body)
        return EXIT_OK
    if code == 401:
        print(
            f"tfctl: {body.strip() or 'unauthorized'} ({address}): give --token-file FILE "
            "(or $TASKFORCE_TOKEN_FILE), or --cert PEM",
            file=sys.stderr,
        )
    elif code == 403 and body.startswith("not allowed"):
        print(f"tfctl: {body.strip()} ({address})", file=sys.stderr)
    elif code == 403:
        print(
            f"tfctl: {body.strip() or 'forbidden'} ({address}): start taskforce with -A, "
            "or set allow_control: true for this listener in settings.http",
            file=sys.stderr,
        )
    else:
        print(f"tfctl: refused ({code}): {one_line(body)}", file=sys.stderr)
    return EXIT_REFUSED


def one_line(body: str) -> str:
    """A refusal's reason on one line: the per-task lines (``task<TAB>why``)
    joined as ``task: why; task: why``."""
    lines = [line.strip().replace("\t", ": ") for line in body.splitlines() if line.strip()]
    return "; ".join(lines) or "no reason given"


def format_version(info: dict[str, Any]) -> str:
    """``taskforce 1.2 (Python 3.12.1, Linux-6.1-x86_64)``."""
    where = info.get("platform") or {}
    system = where.get("platform") or where.get("system") or "?"
    return f"taskforce {info.get('taskforce', '?')} (Python {info.get('python', '?')}, {system})"


def run(args: argparse.Namespace, client: Client) -> int:
    command = args.command
    if command == "status":
        code, headers, body = client.request("GET", "/status/tasks")
        if code >= 400:
            return _finish(code, headers, body, client.address)
        tasks = json.loads(body)
        if args.tasks:
            missing = [name for name in args.tasks if name not in tasks]
            if missing:
                print(f"tfctl: no such task: {', '.join(missing)}", file=sys.stderr)
                return EXIT_REFUSED
            tasks = {name: tasks[name] for name in args.tasks}
        if args.json:
            print(json.dumps(tasks, indent=2))
        else:
            print(format_table(status_rows(tasks, time.time())))
        return EXIT_OK
    if command == "health":
        code, headers, body = client.request("GET", "/status/health")
        if args.json or code >= 500 and not body.startswith("{"):
            _print_body(body)
        else:
            report = json.loads(body)
            print(report["status"])
            for where, why in sorted(report.get("problems", {}).items()):
                print(f"  {where}: {why}")
        return EXIT_OK if code == 200 else EXIT_REFUSED
    if command == "version":
        code, headers, body = client.request("GET", "/status/version")
        if code >= 400 or args.json:
            return _finish(code, headers, body, client.address)
        print(format_version(json.loads(body)))
        return EXIT_OK
    if command == "plan":
        return _plan(args, client)
    if command == "logs":
        return _logs(args, client)
    params: list[tuple[str, str]] = []
    path = ""
    if command in ("start", "stop"):
        path = "/manage/start" if command == "start" else "/manage/control"
        for task in args.tasks:
            params.append(("task", task) if command == "start" else (task, "off"))
    elif command == "restart":
        return _each(client, "/manage/restart", args.tasks, [])
    elif command == "signal":
        name, tasks = signal_and_tasks(args.words, args.signal)
        return _each(client, "/manage/signal", tasks, [("signal", name)])
    elif command == "control":
        path, params = "/manage/control", _assignments(args.assignments, "CONTROL")
    elif command == "count":
        path, params = "/manage/count", _assignments(args.assignments, "N")
    elif command == "event":
        path, params = "/manage/event", [("name", args.name)]
    else:
        path = {"reload": "/manage/reload", "reset": "/manage/reset", "shutdown": "/manage/stop"}[
            command
        ]
    code, headers, body = client.request("POST", path, params)
    status = _finish(code, headers, body, client.address)
    outcome = headers.get("x-taskforce-reload", "")
    if command == "reload" and outcome.startswith("rejected"):
        print(f"tfctl: the config was {outcome}; nothing was changed", file=sys.stderr)
        return EXIT_REFUSED
    return status


def _each(client: Client, path: str, targets: Sequence[str], extra: list[tuple[str, str]]) -> int:
    worst = EXIT_OK
    for target in targets:
        # A slot goes as written (web[0] or web:0): taskforce knows the names.
        code, headers, body = client.request("POST", path, [("task", target), *extra])
        worst = max(worst, _finish(code, headers, body, client.address))
    return worst


def _plan(args: argparse.Namespace, client: Client) -> int:
    try:
        with open(args.file, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        print(f"tfctl: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    params = [("roles", args.roles)] if args.roles is not None else []
    code, headers, body = client.request(
        "POST", "/manage/plan", params, body=data, content_type="application/yaml"
    )
    if code == 400:  # the config's errors, one a line, as taskforce -C prints them
        for line in body.replace("<posted config>", args.file).splitlines():
            print(f"tfctl: {line}", file=sys.stderr)
        return EXIT_REFUSED
    if code >= 400:
        return _finish(code, headers, body, client.address)
    if args.json:
        _print_body(body)
    else:
        print(format_plan(json.loads(body)))
    return EXIT_OK


def format_log_line(task: str, line: dict[str, Any]) -> str:
    """``time task[instance] text``, the time local, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(line["time"])
    return f"{moment.isoformat(timespec='milliseconds')} {task}[{line['instance']}] {line['text']}"


def _logs(args: argparse.Namespace, client: Client) -> int:
    if args.lines < 0:
        raise Usage(f"-n wants a number of lines >= 0, got {args.lines}")
    # A slot goes as written (web[0] or web:0): taskforce knows the names.
    params = [("task", args.task)]
    name = args.task
    asked = [*params, ("lines", str(args.lines))]
    try:
        while True:
            code, headers, body = client.request("GET", "/status/logs", asked)
            if code >= 400:
                return _finish(code, headers, body, client.address)
            answer = json.loads(body)
            name = answer["task"]
            if answer["dropped"]:
                print(
                    f"tfctl: {answer['dropped']} lines of {name} were dropped before "
                    "they could be shown",
                    file=sys.stderr,
                )
            for line in answer["lines"]:
                print(format_log_line(name, line))
            sys.stdout.flush()
            if not args.follow:
                return EXIT_OK
            since = int(answer["next"])
            if asked[-1][0] == "since" and since < int(asked[-1][1]):
                # Numbered afresh: taskforce was restarted.
                since = 1
            asked = [*params, ("since", str(since))]
            time.sleep(FOLLOW_POLL)
    except KeyboardInterrupt:
        return EXIT_OK


# ------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfctl",
        description="Show and control a running taskforce.",
        epilog="Exit codes: 0 done, 1 refused by taskforce, 2 usage, 3 cannot connect.",
    )
    parser.add_argument(
        "-s",
        "--socket",
        metavar="ADDRESS",
        default=os.environ.get("TASKFORCE_SOCKET") or DEFAULT_SOCKET,
        help="Unix socket path, host:port or http(s):// URL of taskforce "
        f"(default: $TASKFORCE_SOCKET or {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--cafile", metavar="PEM", help="verify a TLS server against these certificates"
    )
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="TLS without verifying the server"
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=os.environ.get("TASKFORCE_TOKEN_FILE") or None,
        help="send the bearer token in FILE (default: $TASKFORCE_TOKEN_FILE)",
    )
    parser.add_argument(
        "--cert", metavar="PEM", help="a client certificate (with its key, or see --key)"
    )
    parser.add_argument("--key", metavar="PEM", help="the client certificate's key")
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECS", help="give up after SECS"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    status = sub.add_parser("status", help="every task and process, as a table")
    status.add_argument("tasks", nargs="*", metavar="TASK", help="only these tasks")
    status.add_argument("--json", action="store_true", help="print the JSON status")
    health = sub.add_parser("health", help="ok, or what should run but does not")
    health.add_argument("--json", action="store_true", help="print the JSON report")
    version = sub.add_parser("version", help="taskforce and Python versions")
    version.add_argument("--json", action="store_true", help="print the JSON answer")

    start = sub.add_parser("start", help="start tasks that are off, or run a once task again")
    start.add_argument("tasks", nargs="+", metavar="TASK")
    stop = sub.add_parser(
        "stop", help="stop tasks (control off until started, reloaded or their entry changes)"
    )
    stop.add_argument("tasks", nargs="+", metavar="TASK")
    restart = sub.add_parser("restart", help="restart tasks, or one slot as TASK:N (or TASK[N])")
    restart.add_argument("tasks", nargs="+", metavar="TASK[:N]")
    sig = sub.add_parser(
        "signal",
        help="send a signal to tasks' processes: TASK[:N]... SIGNAL (or SIGNAL TASK[:N]...)",
    )
    sig.add_argument(
        "words", nargs="+", metavar="TASK[:N]... SIGNAL", help="SIGNAL: HUP, SIGHUP, 1 ..."
    )
    sig.add_argument("--signal", metavar="SIGNAL", help="the signal, when every word names a task")
    control = sub.add_parser("control", help="set tasks' control until the next reload")
    control.add_argument("assignments", nargs="+", metavar="TASK=CONTROL")
    count = sub.add_parser("count", help="set tasks' count until the next reload")
    count.add_argument("assignments", nargs="+", metavar="TASK=N")
    event = sub.add_parser("event", help="fire the external event NAME")
    event.add_argument("name", metavar="NAME")
    sub.add_parser("reload", help="re-read the config and roles files")
    sub.add_parser("reset", help="stop every task and restart taskforce")
    sub.add_parser("shutdown", help="stop every task and exit taskforce")
    plan = sub.add_parser("plan", help="what a new config would start, stop or restart")
    plan.add_argument("-f", "--file", required=True, metavar="NEW", help="the new config")
    plan.add_argument(
        "--roles", metavar="ROLES", help='plan for these roles (comma-separated; "-": none)'
    )
    plan.add_argument("--json", action="store_true", help="print the JSON plan")
    logs = sub.add_parser("logs", help="a task's recent output lines; -f: follow them")
    logs.add_argument("task", metavar="TASK[:INSTANCE]")
    logs.add_argument(
        "-n", "--lines", type=int, default=50, metavar="N", help="show the last N (default 50)"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="go on printing new lines until interrupted"
    )
    return parser


def _read_token(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read(4096).strip()


def reader_gone() -> int:
    """Our output's reader went away (``| head``): done, quietly.

    Standard output is pointed at /dev/null so that the interpreter's own
    flush at exit does not fail again.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        token = _read_token(args.token_file) if args.token_file else None
    except OSError as exc:
        print(f"tfctl: token file {args.token_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    client = Client(
        args.socket,
        timeout=args.timeout,
        cafile=args.cafile,
        insecure=args.insecure,
        token=token,
        cert=args.cert,
        key=args.key,
    )
    try:
        return run(args, client)
    except BrokenPipeError:  # `tfctl logs | head`, `tfctl status | head`
        return reader_gone()
    except Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"tfctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"tfctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (json.JSONDecodeError, KeyError) as exc:
        print(f"tfctl: unexpected answer from {args.socket}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
