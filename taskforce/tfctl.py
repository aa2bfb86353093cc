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
import json
import os
import signal
import sys
import time
from collections.abc import Sequence

from taskforce import completion, tffollow, tflogs, tfwait
from taskforce.tfclient import Client as Client
from taskforce.tfclient import UnixConnection as UnixConnection
from taskforce.tfclient import Unreachable as Unreachable
from taskforce.tfclient import Usage
from taskforce.tfformat import (
    format_plan,
    format_table,
    format_version,
    one_line,
    status_rows,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/var/run/s.taskforce"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


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
    if command == "rollout":
        return tfwait.rollout(args, client)
    if command == "wait":
        return tfwait.wait(args, client)
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


def _logs(args: argparse.Namespace, client: Client) -> int:
    if not args.follow:
        return tflogs.show(
            args,
            client,
            time.time(),
            lambda code, headers, body: _finish(code, headers, body, client.address),
        )
    if args.lines is None:
        args.lines = tflogs.DEFAULT_LINES
    if args.lines < 0:
        raise Usage(f"-n wants a number of lines >= 0, got {args.lines}")
    return tffollow.follow(args, client, _finish)


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

    # The reading commands, each with --json: (name, what it prints, what --json prints).
    for name, summary, answer in (
        ("status", "every task and process, as a table", "status"),
        ("health", "ok, or what should run but does not", "report"),
        ("version", "taskforce and Python versions", "answer"),
    ):
        reader = sub.add_parser(name, help=summary)
        if name == "status":
            reader.add_argument("tasks", nargs="*", metavar="TASK", help="only these tasks")
        reader.add_argument("--json", action="store_true", help=f"print the JSON {answer}")

    # The commands that take task names and nothing else.
    for name, summary, metavar in (
        ("start", "start tasks that are off, or run a once task again", "TASK"),
        ("stop", "stop tasks (control off until started, reloaded or their entry changes)", "TASK"),
        ("restart", "restart tasks, or one slot as TASK:N (or TASK[N])", "TASK[:N]"),
    ):
        sub.add_parser(name, help=summary).add_argument("tasks", nargs="+", metavar=metavar)
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
    completion.add_command(sub)
    tfwait.add_commands(sub)
    logs = sub.add_parser(
        "logs", help="a task's output lines (older ones from its files); -f: follow"
    )
    logs.add_argument("task", metavar="TASK[:INSTANCE]")
    logs.add_argument(
        "-n",
        "--lines",
        type=int,
        default=None,
        metavar="N",
        help="show the last N (default 50; all with --since or --until)",
    )
    logs.add_argument(
        "-S",
        "--since",
        metavar="TIME",
        help="lines from TIME on (2026-12-07 01:00, today, 1h ago; --since=-5m)",
    )
    logs.add_argument("-U", "--until", metavar="TIME", help="lines up to TIME")
    logs.add_argument("-g", "--grep", metavar="REGEX", help="lines that match REGEX")
    case = logs.add_mutually_exclusive_group()
    case.add_argument(
        "--case-sensitive",
        nargs="?",
        const=True,
        default=None,
        type=_yes_no,
        metavar="BOOL",
        help="--grep minds case (default: only if REGEX has a capital)",
    )
    case.add_argument(
        "-i",
        "--ignore-case",
        dest="case_sensitive",
        action="store_false",
        help="--grep ignores case",
    )
    logs.add_argument("--stream", choices=("stdout", "stderr"), help="lines of one stream only")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="go on printing new lines until interrupted"
    )
    return parser


def _yes_no(word: str) -> bool:
    value = word.strip().lower()
    if value in ("1", "yes", "y", "true", "on"):
        return True
    if value in ("0", "no", "n", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {word!r}")


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
    if args.command == "completion":
        print(completion.script(args.shell, "tfctl"), end="")
        return EXIT_OK
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
