"""The ``taskforce`` command line: options, exit codes, starting the daemon.

Options and defaults follow the original taskforce.  Exit codes:

- 0: normal exit (including after SIGTERM/SIGINT), ``-V``, a signal sent by
  ``-R``/``-S``, a valid config under ``-C``;
- 1: a bad config (``-C`` or at start-up), a bad roles file, a failed
  ``-R``/``-S``, bad arguments (argparse uses 2 for those, as usual);
- 2: the pidfile is held by a live taskforce;
- 3: taskforce failed while running.

Where the daemon logs is set up in ``taskforce.logsetup``, its pidfile and
the detaching of ``-b`` are in ``taskforce.pidlock``, and the checks that
refuse a start (unprotected or held control sockets) in
``taskforce.preflight``.

This module never decides anything about tasks; it only sets the stage for
``taskforce.daemon``.
"""

from __future__ import annotations

# Before anything imports dataclasses: a daemon need not load inspect.
from taskforce import inspect_later  # noqa: F401  # isort: skip

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from taskforce import __version__, descriptors, files, signals
from taskforce.config import (
    ConfigError,
    check_roles_against,
    load_config,
    load_roles,
    program_warnings,
)
from taskforce.logsetup import setup_logging, syslog_socket
from taskforce.pidlock import Pidfile, PidfileHeld, daemonize
from taskforce.preflight import auth_problems, held_sockets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONFIG = "/usr/local/etc/taskforce.conf"
DEFAULT_ROLES = ("/var/local/etc/tf_roles.conf", "/usr/local/etc/tf_roles.conf")
DEFAULT_PIDFILE = "/var/run/taskforce.pid"

EXIT_OK, EXIT_BAD, EXIT_PIDFILE, EXIT_FAILED = 0, 1, 2, 3

log = logging.getLogger("taskforce")


#: ``taskforce replay|simulate|plan`` (run by ``taskforce.tools``) and
#: ``taskforce completion`` (``taskforce.completion``), with what each is for.
TOOLS = {
    "replay": "check that a recorded event log replays exactly",
    "simulate": "what taskforce would do with a config, without doing it",
    "plan": "what a config runs on each kind of host, or would change after a run",
    "completion": "print the bash or zsh completion script",
}


def build_tool_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of the commands in ``TOOLS``, and each command's own."""
    parser = argparse.ArgumentParser(prog="taskforce")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {name: commands.add_parser(name, help=text) for name, text in TOOLS.items()}
    rep = subs["replay"]
    rep.add_argument("log", metavar="LOG")
    rep.add_argument("--timeline", action="store_true", help="print the run as a timeline")
    rep.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        help="replay segments between checkpoints in this many processes "
        "(default: one per CPU for a long log, else 1)",
    )
    sim = subs["simulate"]
    sim.add_argument("-f", "--config-file", metavar="CONFIG", required=True)
    sim.add_argument("-r", "--roles-file", metavar="ROLES")
    sim.add_argument(
        "script",
        metavar="SCRIPT",
        nargs="?",
        help="YAML list of happenings, e.g. [{at: 5, kill: web:0}, {at: 8, stop: true}]",
    )
    plan = subs["plan"]
    plan.add_argument("-f", "--config-file", metavar="CONFIG", required=True)
    plan.add_argument(
        "-r",
        "--roles-file",
        metavar="ROLES",
        action="append",
        default=[],
        help="a roles file; one per kind of host",
    )
    plan.add_argument("--against", metavar="LOG", help="a recorded run to diff against")
    subs["completion"].add_argument(
        "shell", metavar="SHELL", choices=("bash", "zsh"), help="bash or zsh"
    )
    return parser, subs


def _tool_summary() -> str:
    """The commands of ``TOOLS`` for ``taskforce -h``: usage and purpose."""
    lines = ["other commands (each with its own -h):"]
    for name, sub in build_tool_parser()[1].items():
        usage = " ".join(sub.format_usage().split()[1:])
        lines += [f"  {usage}", f"      {TOOLS[name]}"]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """The daemon's parser; its epilog (every tool's usage, which takes
    building the tools' parsers) is made only when help is printed, not at
    every start."""

    def format_help(self) -> str:
        if self.epilog is None:
            self.epilog = _tool_summary()
        return super().format_help()


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` answers: ``COLUMNS``, else
    the width of the terminal on standard output, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the terminal's width rather than asking
    ``shutil`` for it: argparse makes a formatter for every ``add_argument``,
    and ``shutil`` brings ``bz2``, ``lzma`` and ``zlib`` (0.56 MiB that a
    daemon would keep for good)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
        **more: Any,
    ) -> None:
        # argparse's own default is the terminal's width less 2.
        width = _terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width, **more)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="taskforce",
        description="Start daemons from one config, keep them running, and restart "
        "exactly what a change affects.",
        formatter_class=_Formatter,
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose (debug) logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "-e", "--log-stderr", action="store_true", help="log to stderr instead of syslog"
    )
    parser.add_argument("-L", "--logging-name", metavar="NAME", help="name to log under")
    parser.add_argument("-b", "--background", action="store_true", help="run in the background")
    parser.add_argument(
        "-p",
        "--pidfile",
        metavar="PIDFILE",
        help=f'pidfile; default none, or {DEFAULT_PIDFILE} with -b, -R or -S; "-" means none',
    )
    parser.add_argument(
        "-f",
        "--config-file",
        metavar="CONFIG",
        default=DEFAULT_CONFIG,
        help=f"config file, watched for changes (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "-r",
        "--roles-file",
        metavar="ROLES",
        help="roles file, watched for changes; it must exist (default: the first of "
        + ", ".join(DEFAULT_ROLES)
        + ' that exists; "-" or none of them: every task is in scope)',
    )
    parser.add_argument(
        "-C",
        "--check-config",
        action="store_true",
        help="check the config and exit; starts nothing",
    )
    parser.add_argument(
        "-R", "--reset", action="store_true", help="make the running taskforce stop all and restart"
    )
    parser.add_argument(
        "-S", "--stop", action="store_true", help="make the running taskforce stop all and exit"
    )
    parser.add_argument(
        "--expires", metavar="SECS", type=float, help="stop all and exit after SECS seconds"
    )
    # --- event log (replay with `taskforce replay FILE`)
    parser.add_argument(
        "--record", metavar="FILE", help="record every event and effect to FILE (JSON Lines)"
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="with -C: also print which tasks this host would run",
    )
    # --- control server (issue 5): overrides settings.http[0], as in the original
    parser.add_argument(
        "-w",
        "--http",
        metavar="LISTEN",
        help="serve status and control here: a Unix socket path (with a '/'), or "
        "[host]:port (default port 8080, 8443 with -c); empty means /var/run/s.taskforce",
    )
    parser.add_argument(
        "-c", "--certfile", metavar="CERTFILE", help="PEM certificate and key: serve over TLS"
    )
    parser.add_argument(
        "-A", "--allow-control", action="store_true", help="allow /manage/... requests"
    )
    return parser


def pick_roles_file(option: str | None) -> str | None:
    """The roles file to use: ``-r PATH``, else the first default that exists.

    None (every task in scope) only for ``-r -`` or when no default exists:
    a default that exists but cannot be read is reported by ``load_roles``,
    not skipped, and so is a ``-r PATH`` that does not exist.
    """
    if option is not None:
        return None if option in ("", "-") else option
    for candidate in DEFAULT_ROLES:
        if os.path.lexists(candidate):
            return candidate
    return None


def pick_pidfile(args: argparse.Namespace) -> str | None:
    if args.pidfile is not None:
        return None if args.pidfile in ("", "-") else str(args.pidfile)
    if args.background or args.reset or args.stop:
        return DEFAULT_PIDFILE
    return None


def signal_running(pidfile: str, signum: int) -> int:
    """-R / -S: signal the taskforce that holds ``pidfile``."""
    what = "reset" if signum == signal.SIGHUP else "stop"
    try:
        with open(pidfile) as handle:
            text = handle.read().strip()
        pid = int(text)
    except FileNotFoundError:
        print(f"taskforce: cannot {what}: no pidfile {pidfile}", file=sys.stderr)
        return EXIT_BAD
    except (OSError, ValueError) as exc:
        print(f"taskforce: cannot {what}: bad pidfile {pidfile}: {exc}", file=sys.stderr)
        return EXIT_BAD
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        print(f"taskforce: cannot {what}: pid {pid} from {pidfile} is not running", file=sys.stderr)
        return EXIT_BAD
    except PermissionError:
        print(f"taskforce: cannot {what}: not allowed to signal pid {pid}", file=sys.stderr)
        return EXIT_BAD
    return EXIT_OK


def check_config(
    config_path: str, roles_path: str | None, args: argparse.Namespace | None = None
) -> int:
    """-C: validate and report; never starts anything."""
    try:
        roles = load_roles(roles_path)
        config = load_config(config_path, roles=roles.names, role_values=roles.values)
        check_roles_against(config, roles)
    except ConfigError as exc:
        for error in getattr(exc, "errors", None) or [exc]:
            print(f"taskforce: {error}", file=sys.stderr)
        return EXIT_BAD
    except OSError as exc:
        print(f"taskforce: {exc.filename or config_path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD
    problems = auth_problems(args, dict(config)) if args is not None else []
    for problem in problems:
        print(f"taskforce: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BAD
    for warning in program_warnings(config, config_path, roles):
        print(f"taskforce: {warning}", file=sys.stderr)
    tasks = config.get("tasks", {})
    print(f"{config_path}: ok, {len(tasks)} task{'s' if len(tasks) != 1 else ''}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "completion":
        from taskforce.completion import script

        print(script(build_tool_parser()[0].parse_args(argv).shell, "taskforce"), end="")
        return EXIT_OK
    if argv and argv[0] in TOOLS:
        from taskforce.tfctl import reader_gone
        from taskforce.tools import main as tools_main

        try:
            return tools_main(argv)
        except BrokenPipeError:
            return reader_gone()
    args = build_parser().parse_args(argv)
    if args.record:
        args.record = os.path.abspath(args.record)
    # --- control server: paths made absolute before -b changes directory
    if args.http is not None and "/" in args.http:
        args.http = os.path.abspath(args.http)
    if args.certfile:
        args.certfile = os.path.abspath(args.certfile)
    if args.version:
        print(f"taskforce {__version__}")
        return EXIT_OK
    pidfile_path = pick_pidfile(args)
    if pidfile_path is not None:
        pidfile_path = os.path.abspath(pidfile_path)
    roles_path = pick_roles_file(args.roles_file)
    if args.reset or args.stop:
        if pidfile_path is None:
            print("taskforce: -R and -S need a pidfile", file=sys.stderr)
            return EXIT_BAD
        return signal_running(pidfile_path, signal.SIGHUP if args.reset else signal.SIGTERM)
    if args.check_config:
        status = check_config(args.config_file, roles_path, args)
        if status == EXIT_OK and args.plan:
            from taskforce.tools import scope_plan

            return scope_plan(args.config_file, [roles_path or "-"])
        return status

    # A re-executed taskforce starts with its handled signals blocked (see
    # taskforce.signals): whichever way it ends, they do not stay blocked.
    reexecuted = os.environ.pop("TASKFORCE_REEXEC", None) is not None
    try:
        return serve(args, roles_path, pidfile_path, reexecuted=reexecuted)
    finally:
        gc.enable()
        signals.release()


def serve(
    args: argparse.Namespace,
    roles_path: str | None,
    pidfile_path: str | None,
    *,
    reexecuted: bool,
) -> int:
    """Run as the daemon; the exit code (or re-execute, on a reset)."""
    # Nothing taskforce's parent left open may reach a task.
    descriptors.close_inherited_on_exec()
    # Start-up (the config read and built, every task started) makes what
    # lives as long as the daemon, and next to no cyclic garbage: collecting
    # meanwhile only walks the growing heap again and again (a third of the
    # CPU of starting 1,000 tasks).  Daemon.run turns the collector back on
    # once that heap is frozen; ``main`` does, whichever way this ends.
    gc.disable()
    # Validate before detaching, so a bad config is reported to the user.
    problem, config = check_config_quietly(args.config_file, roles_path)
    if problem is not None and not reexecuted:
        for line in problem.split("\n"):  # every error, as -C prints them
            print(f"taskforce: {line}", file=sys.stderr)
        return EXIT_BAD
    settings: dict[str, Any] = dict(config.get("settings") or {})
    if not reexecuted:
        # A second taskforce must not start everything again only to find
        # its control socket taken (the quick start, run twice): say so now.
        # (A re-executed one closed its own sockets before the exec.)
        held = held_sockets(args, config, roles_path)
        for problem_text in held:
            print(f"taskforce: {problem_text}", file=sys.stderr)
        if held:
            return EXIT_PIDFILE
    # --- sockets held for tasks: bound now, so a busy port is said here (a
    # re-executed taskforce adopts the ones it was handed instead); they
    # listen once the core has taken the config (Daemon._settle_sockets)
    args.task_sockets = open_task_sockets(
        config, args.config_file, roles_path, reexecuted=reexecuted
    )
    if args.task_sockets is None:
        return EXIT_BAD
    # --- who may do what: files private, secrets known before the first step
    args.secret_names = settings.get("secret_names")
    try:
        files.set_group(settings.get("file_group"))
    except KeyError:
        group = settings["file_group"]
        print(f"taskforce: settings.file_group: no group {group!r}", file=sys.stderr)
        return EXIT_BAD
    problems = auth_problems(args, {"settings": settings})
    if problems and not reexecuted:
        for problem_text in problems:
            print(f"taskforce: {problem_text}", file=sys.stderr)
        return EXIT_BAD
    record = settings.get("record")
    args.record_sizes = {}
    if isinstance(record, dict):  # {file: PATH, max_bytes: 64M, ...}
        from taskforce.core.model import parse_size

        args.record_sizes = {key: parse_size(v) for key, v in record.items() if key != "file"}
        record = record.get("file")
    if args.record is None and record:
        args.record = os.path.abspath(str(record))
    if args.background and not reexecuted:
        # Paths were given relative to where we were started; keep them so.
        args.config_file = os.path.abspath(args.config_file)
        roles_path = os.path.abspath(roles_path) if roles_path else None
    # Without -e the log goes to syslog, or to stderr where there is none:
    # then -b keeps stderr open, as with -e, so that no line is lost.
    syslog_at = None if args.log_stderr else syslog_socket()
    if args.background and not reexecuted:
        daemonize(keep_stderr=args.log_stderr or syslog_at is None)
    setup_logging(args, syslog_at)
    if problem is not None:
        # Broken since the reset was asked for: exiting would leave nothing
        # supervising; the daemon waits for a config that loads.
        for line in problem.split("\n"):
            log.error("after the re-exec: %s", line)
        log.error("after the re-exec: waiting for a config that loads")
    pidfile = Pidfile(pidfile_path) if pidfile_path else None
    if pidfile is not None:
        try:
            pidfile.claim()
        except PidfileHeld as exc:
            log.error("%s", exc)
            print(f"taskforce: {exc}", file=sys.stderr)
            return EXIT_PIDFILE
        except OSError as exc:
            log.error("cannot claim pidfile %s: %s", pidfile_path, exc)
            print(f"taskforce: cannot claim pidfile {pidfile_path}: {exc}", file=sys.stderr)
            return EXIT_PIDFILE
    # One taskforce per config and roles file: a second would run every task
    # twice, and its sweep for leftovers must never take a live one's.
    from taskforce.tracking import InstanceHeld, InstanceLock, instance_id

    lock = InstanceLock(instance_id(args.config_file, roles_path))
    try:
        lock.claim()
    except (InstanceHeld, OSError) as exc:
        log.error("%s", exc)
        print(f"taskforce: {exc}", file=sys.stderr)
        if pidfile is not None:
            pidfile.release(remove=False)
        return EXIT_PIDFILE
    return run_daemon(args, roles_path, pidfile)


def open_task_sockets(
    config: dict[str, Any], config_path: str, roles_path: str | None, *, reexecuted: bool
) -> Any:
    """The sockets of ``config`` bound (``taskforce.sockets``: they listen
    once the daemon's core has taken the config), or None after saying why
    one cannot be bound; a re-executed taskforce goes on without them (its
    daemon rejects the config until they open)."""
    from taskforce.core.sockets import socket_specs
    from taskforce.sockets import SocketError, Sockets

    held = Sockets.inherited()
    if not config:
        return held  # none that loads: keep what was handed on, for when one does
    try:
        try:
            held.bind(socket_specs(config))
        except SocketError:
            # After a crash, what the last taskforce left running still holds
            # its sockets: bind beside them; the daemon stops them soon.
            if reexecuted or not _crash_leftovers(config_path, roles_path):
                raise
            held.bind(socket_specs(config), share=True)
    except SocketError as exc:
        if reexecuted:
            return held
        print(f"taskforce: {config_path}: {exc}", file=sys.stderr)
        held.close()
        return None
    return held


def _crash_leftovers(config_path: str, roles_path: str | None) -> bool:
    """Whether processes of a taskforce for this config run while no
    taskforce does (it crashed): its leftovers, which hold its sockets."""
    from taskforce.tracking import InstanceHeld, InstanceLock, instance_id, marked_processes

    ident = instance_id(config_path, roles_path)
    lock = InstanceLock(ident)
    try:
        lock.claim()  # (only to see that no taskforce holds it: let go at once)
    except (InstanceHeld, OSError):
        return False
    lock.release()
    return bool(marked_processes(ident))


def check_config_quietly(
    config_path: str, roles_path: str | None
) -> tuple[str | None, dict[str, Any]]:
    """The config's errors, one a line (or None), and the config."""
    try:
        roles = load_roles(roles_path)
        config = load_config(config_path, roles=roles.names, role_values=roles.values, keep=True)
    except ConfigError as exc:
        return "\n".join(exc.report()), {}
    except OSError as exc:
        return f"{exc.filename or config_path}: {exc.strerror or exc}", {}
    return None, dict(config)


def start_recorder(args: argparse.Namespace, daemon: Any) -> Any:
    """The event log, from --record or settings.record (read at start)."""
    path = args.record
    if not path:
        return None  # (before the imports: a daemon that records nothing never loads them)
    from taskforce.core.secrets import SecretNames
    from taskforce.core.snapshot import snapshot
    from taskforce.eventlog import (
        DEFAULT_BACKUPS,
        DEFAULT_CHECKPOINT_BYTES,
        DEFAULT_MAX_BYTES,
        Checkpoints,
        Recorder,
        config_digest,
    )

    path = os.path.abspath(path)
    sizes = args.record_sizes
    names = args.secret_names
    recorder = Recorder(
        path,
        snapshot=lambda: snapshot(daemon.core),
        config_sha256=config_digest(args.config_file),
        max_bytes=sizes.get("max_bytes", DEFAULT_MAX_BYTES),
        backups=sizes.get("backups", DEFAULT_BACKUPS),
        # Set by the operator, the interval is used as given; by default it
        # grows with a big state, so checkpoints stay a small part of the log.
        checkpoints=(
            Checkpoints(sizes["checkpoint_bytes"], ratio=0)
            if "checkpoint_bytes" in sizes
            else Checkpoints(DEFAULT_CHECKPOINT_BYTES)
        ),
        secret_names=SecretNames(names) if names is not None else SecretNames(),
    )
    daemon.recorder = recorder
    log.info("recording every event to %s", path)
    return recorder


def run_daemon(args: argparse.Namespace, roles_path: str | None, pidfile: Pidfile | None) -> int:
    from taskforce.control.options import Options  # --- control server
    from taskforce.daemon import Daemon, reexec

    server = Options(listen=args.http, certfile=args.certfile, allow_control=args.allow_control)
    daemon = Daemon(
        args.config_file,
        roles_path,
        expires=args.expires,
        server=server,
        sockets=getattr(args, "task_sockets", None),
    )
    recorder = start_recorder(args, daemon)
    try:
        outcome = daemon.run()
    except Exception:
        if recorder is not None:
            recorder.close()
        if pidfile is not None:
            pidfile.release(remove=True)
        return EXIT_FAILED
    if recorder is not None:
        recorder.close()
    if outcome.reset:
        if pidfile is not None:
            pidfile.release(remove=False)
        log.info("re-executing")
        logging.shutdown()
        reexec()
    if pidfile is not None:
        pidfile.release(remove=True)
    log.info("exiting")
    return outcome.code
