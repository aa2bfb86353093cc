"""Processes: start them in their own group, signal them, reap them.

``spawn`` forks and execs one program with the environment, identity and
working directory it is given, in a new process group led by the child.  It
returns only once the exec has happened or failed: a pipe closed on exec
carries any error from the child, so a bad ``cwd`` or an unknown user comes
back as a ``SpawnError`` naming the cause, never as a crash of the daemon.

Each process gets the built-ins only its start knows (as the original set
them): ``Task_pid``, ``Task_uid`` and ``Task_gid`` (the ids it runs as) and
``Task_started`` (when it was started, in seconds since the epoch).  A
process given ``sockets`` (listening sockets taskforce holds) gets them from
fd 3 on, with ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (its own
pid) as systemd's socket activation sets them; every other descriptor above
2 is closed.

This module holds no policy: it never decides what to start, stop or retry.
"""

from __future__ import annotations

import ctypes
import fcntl
import grp
import os
import pwd
import resource
import signal
import time
from collections.abc import Iterator, Mapping, Sequence

from taskforce import signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Every catchable signal: a child starts with each at its default, whatever
#: Python or taskforce ignores (an ignored disposition survives exec).
_RESET_SIGNALS = signals.CHILD_DEFAULTS


class SpawnError(Exception):
    """The child could not be started; the message says why."""


#: A resource limit to set: (name as in the config, soft, hard); None is
#: unlimited.
Limit = tuple[str, int | None, int | None]


def _rlimit_number(name: str) -> int:
    """``nofile`` -> ``resource.RLIMIT_NOFILE``."""
    number = getattr(resource, f"RLIMIT_{name.upper()}", None)
    if number is None:
        raise ValueError("not supported on this host")
    return int(number)


def _set_limit(name: str, soft: int | None, hard: int | None) -> None:
    infinity = resource.RLIM_INFINITY
    resource.setrlimit(
        _rlimit_number(name),
        (infinity if soft is None else soft, infinity if hard is None else hard),
    )


def _child(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str | None,
    user: str | None,
    group: str | None,
    procname: str | None,
    stdout: int | None,
    report: int,
    stderr: int | None = None,
    umask: int | None = None,
    limits: Sequence[Limit] = (),
    cgroup: str | None = None,
    nice: int | None = None,
    sockets: Sequence[tuple[str, int]] = (),
) -> None:
    """Runs in the forked child: set up, then exec.  Never returns."""
    stage = "setup"
    try:
        os.setpgid(0, 0)
        if cgroup is not None:
            # First, before it can start anything: all it starts follows it.
            stage = f"cgroup {cgroup}"
            _join_cgroup(cgroup)
        for signum in _RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        stage = "stdin"
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        if stdout is not None:
            os.dup2(stdout, 1)
        if stderr is not None:
            os.dup2(stderr, 2)
        if null > 2:
            os.close(null)
        if umask is not None:
            stage = f"umask {umask:03o}"
            os.umask(umask)
        for name, soft, hard in limits:
            # Before the privilege drop: raising a hard limit needs root.
            shown = " ".join("unlimited" if v is None else str(v) for v in (soft, hard))
            stage = f"limits.{name} (soft, hard: {shown})"
            _set_limit(name, soft, hard)
        if nice is not None:
            # Also before the privilege drop: only root may lower it.
            stage = f"nice {nice}"
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if group is not None:
            stage = f"group {group!r}"
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        else:
            gid = None
        if user is not None:
            stage = f"user {user!r}"
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            # What the core left out for the user (see model.USER_ENV_KEYS).
            for key, value in (
                ("HOME", entry.pw_dir),
                ("USER", entry.pw_name),
                ("LOGNAME", entry.pw_name),
                ("SHELL", entry.pw_shell or "/bin/sh"),
            ):
                env.setdefault(key, value)
            target_gid = entry.pw_gid if gid is None else gid
            os.initgroups(entry.pw_name, target_gid)
            os.setgid(target_gid)
            os.setuid(entry.pw_uid)
        elif gid is not None:
            os.setgroups([gid])
            os.setgid(gid)
        env["Task_uid"] = str(os.geteuid())
        env["Task_gid"] = str(os.getegid())
        if cwd is not None:
            stage = f"cwd {cwd!r}"
            os.chdir(cwd)
        if sockets:
            stage = "sockets"
            report = _place_sockets([fd for _, fd in sockets], report)
            env["LISTEN_FDS"] = str(len(sockets))
            env["LISTEN_FDNAMES"] = ":".join(name for name, _ in sockets)
            env["LISTEN_PID"] = str(os.getpid())
        os.closerange(3 + len(sockets), report)
        os.closerange(report + 1, 65536)
        env["Task_pid"] = str(os.getpid())
        stage = f"exec {argv[0]!r}"
        args = [procname if procname else argv[0], *argv[1:]]
        os.execvpe(argv[0], args, env)
    except BaseException as exc:  # noqa: BLE001 -- everything must reach the parent
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, KeyError):
            detail = "not found"
        try:
            os.write(report, f"{stage}: {detail}".encode(errors="replace")[:4000])
        finally:
            os._exit(127)


def _place_sockets(fds: Sequence[int], report: int) -> int:
    """Put ``fds`` at 3, 4, ... (inherited by the exec); the report pipe's
    new number, moved out of their way.

    Everything is first copied above the range it fills, so a socket that
    already sits at 3 or 4 is never overwritten before it is placed.
    """
    floor = 3 + len(fds)
    report = fcntl.fcntl(report, fcntl.F_DUPFD_CLOEXEC, floor)
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    for target, copy in enumerate(copies, start=3):
        os.dup2(copy, target, inheritable=True)
    # The copies (and the originals) are closed with everything else.
    return report


def _join_cgroup(procs: str) -> None:
    """Move the calling process into the cgroup whose ``cgroup.procs`` is ``procs``."""
    fd = os.open(procs, os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def spawn(argv: Sequence[str], env: Mapping[str, str], **options: Any) -> int:
    """Start ``argv`` in a new process group; its pid, or SpawnError.

    ``stdout`` and ``stderr`` (fds; ``stderr`` None: the same as ``stdout``)
    become the child's stdout and stderr; ``umask``,
    ``limits`` and ``nice`` are set in the child before the privilege drop
    and the exec.
    Returns once the exec has happened or failed (see ``start``).
    """
    pid, report = start(argv, env, **options)
    if report is None:
        return pid  # posix_spawn: the exec already happened
    os.set_blocking(report, True)
    error = read_report(report)
    if error is not None:
        _wait_quietly(pid)
        raise SpawnError(error)
    return pid


def read_report(fd: int) -> str | None:
    """Read a child's exec report to its end and close it: the error, or None.

    With ``fd`` non-blocking, raises BlockingIOError if the child has neither
    exec'd nor failed yet (the fd is then left open).  A child that fails
    writes its error in one write (under ``PIPE_BUF``) just before it exits,
    so once anything was read the report is whole, even before end of file.
    """
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        except BlockingIOError:
            if not chunks:
                raise
            break  # the error is here; the child's exit closes the pipe
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace") if chunks else None


def start(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    user: str | None = None,
    group: str | None = None,
    procname: str | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    umask: int | None = None,
    limits: Sequence[Limit] = (),
    cgroup: str | None = None,
    nice: int | None = None,
    sockets: Sequence[tuple[str, int]] = (),
) -> tuple[int, int | None]:
    """Fork ``argv`` in a new process group without waiting for its exec.

    Returns the pid and the read end of its exec report (non-blocking): it
    reaches end of file when the exec succeeds, and carries the error first
    when anything before the exec fails (the child then exits 127).  Not
    waiting lets children exec in parallel with the next fork.  The report
    is None when the exec has already happened (posix_spawn returns only
    after it, and raises what stopped it).  With
    ``cgroup`` (a ``cgroup.procs`` path) the child joins that cgroup first.
    ``sockets``, (name, fd) pairs, are the listening sockets it gets from
    fd 3 on, with ``LISTEN_*`` set as systemd does.
    """
    if not argv:
        raise SpawnError("empty command")
    if stderr is None:
        stderr = stdout
    # posix_spawn sets none of these: a task that has one takes the fork path.
    if FAST_SPAWN and cwd is None and user is None and group is None and umask is None:
        # Sockets at 3, 4, ... are placed by plain dup2s when none of them
        # sits where another goes (taskforce keeps them high: see sockets.py).
        placed = all(fd >= 3 + len(sockets) for _, fd in sockets)
        if procname is None and not limits and nice is None and placed:
            ids = {"Task_uid": str(os.geteuid()), "Task_gid": str(os.getegid())}
            fast_env = dict(env, **ids, Task_started=started_now())
            return _start_fast(argv, fast_env, stdout, stderr, cgroup, sockets)
    read_end, write_end = os.pipe()  # both close on exec
    child_env = dict(env, Task_started=started_now())
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(
            argv,
            child_env,
            cwd,
            user,
            group,
            procname,
            stdout,
            write_end,
            stderr,
            umask,
            limits,
            cgroup,
            nice,
            sockets,
        )
    os.close(write_end)
    try:
        # Also set here, so the group exists before we might signal it.
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child already exec'd (EACCES) or died (ESRCH); both fine
    os.set_blocking(read_end, False)
    return pid, read_end


def started_now() -> str:
    """``Task_started``: now, in seconds since the epoch, to the microsecond
    (the original exported ``time.time()``)."""
    return f"{time.time():.6f}"


#: Start plain tasks with posix_spawn (see ``_start_fast``); off with
#: TASKFORCE_SPAWN=fork.
FAST_SPAWN = hasattr(os, "posix_spawn") and os.environ.get("TASKFORCE_SPAWN") != "fork"

#: Exports the process's own pid as Task_pid, then becomes the program.
_SHIM = 'Task_pid=$$; export Task_pid; exec "$@"'
#: The same, after joining the cgroup named by its first argument; if it
#: cannot, it says so and exits 127 as a failed exec does.
_CGROUP_SHIM = (
    'echo 0 > "$1" || { echo "taskforce: cannot join cgroup $1" >&2; exit 127; }; shift; ' + _SHIM
)


#: Where each (program, PATH) was last found.  Only the early report of a
#: missing program relies on it: the shim's own exec looks the name up again,
#: so what runs is always what PATH names now, whatever the cache says.
_FOUND: dict[tuple[str, str], str] = {}


def _runnable(file: str) -> bool:
    """An executable file (not a folder) that is there."""
    return os.access(file, os.X_OK) and not os.path.isdir(file)


def _which(program: str, path: str) -> str | None:
    """What ``shutil.which(program, path=path)`` finds on a POSIX host: a
    name with a slash as it is, else the first folder of ``path`` (each
    looked in once; an empty entry is the working folder) that holds a
    runnable file of that name.  shutil itself would bring the compression
    modules into every daemon (about 0.4 MiB)."""
    if os.path.dirname(program):
        return program if _runnable(program) else None
    seen: set[str] = set()
    for folder in path.split(os.pathsep) if path else ():
        if folder in seen:
            continue
        seen.add(folder)
        candidate = os.path.join(folder, program)
        if _runnable(candidate):
            return candidate
    return None


def _look_up(program: str, path: str) -> str | None:
    """``_which(program, path)``, remembered while the file found is still
    runnable (one ``access`` and one ``stat`` instead of two per folder of a
    long PATH)."""
    key = (program, path)
    found = _FOUND.get(key)
    if found is not None and _runnable(found):
        return found
    found = _which(program, path)
    if found is None:
        _FOUND.pop(key, None)
    else:
        if len(_FOUND) >= 4096:
            _FOUND.clear()  # a bound, not a policy: every entry can be found again
        _FOUND[key] = found
    return found


def _start_fast(
    argv: Sequence[str],
    env: dict[str, str],
    stdout: int | None,
    stderr: int | None,
    cgroup: str | None = None,
    sockets: Sequence[tuple[str, int]] = (),
) -> tuple[int, None]:
    """Start a task that needs no cwd, identity, umask, limits, niceness or procname.

    ``posix_spawn`` starts the child without copying the daemon's memory
    (a fork of a Python process costs milliseconds in page tables and
    copy-on-write faults); a one-line ``sh`` sets ``Task_pid`` -- the
    child's own pid, which no parent can put in an environment -- and
    execs the program with its argv as given.  The program is looked up
    first, so a missing one is reported as a failed start, as on the fork
    path.  Sockets are put at 3, 4, ... (each above them already, so no
    dup2 overwrites one still to be placed), and the shim sets
    ``LISTEN_PID`` as it sets ``Task_pid``.  ``env`` is the child's own
    copy: ``LISTEN_*`` are added to it.
    """
    program = argv[0]
    found = _look_up(program, env.get("PATH", os.defpath))
    if found is None:
        raise SpawnError(f"exec {program!r}: No such file or directory")
    file_actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0)]
    if stdout is not None:
        file_actions.append((os.POSIX_SPAWN_DUP2, stdout, 1))
    if stderr is not None:
        file_actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
    if sockets:
        # dup2 to another number clears close-on-exec: these reach the program.
        file_actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, (_, fd) in enumerate(sockets)]
        env["LISTEN_FDS"] = str(len(sockets))
        env["LISTEN_FDNAMES"] = ":".join(name for name, _ in sockets)
    if hasattr(os, "POSIX_SPAWN_CLOSEFROM"):
        # Python 3.13+: nothing else above 2 reaches the child, whatever its flags.
        file_actions.append((os.POSIX_SPAWN_CLOSEFROM, 3 + len(sockets)))
    shim, extra = (_SHIM, []) if cgroup is None else (_CGROUP_SHIM, [cgroup])
    if sockets:
        shim = "LISTEN_PID=$$; export LISTEN_PID; " + shim
    return os.posix_spawn(
        "/bin/sh",
        # A shell exports PWD: take it away again unless the task had it.
        [
            "/bin/sh",
            "-c",
            shim if "PWD" in env else "unset PWD; " + shim,
            "taskforce",
            *extra,
            *argv,
        ],
        env,
        file_actions=file_actions,
        setpgroup=0,
        setsigmask=(),
        setsigdef=_RESET_SIGNALS,
    ), None


def _wait_quietly(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def send_signal(pid: int, signame: str, *, group: bool) -> bool:
    """Send ``signame`` to group ``pid`` (or the process); False if it is gone."""
    signum = getattr(signal, signame)
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, not ours to signal (a setuid child); nothing to do
    return True


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reaped() -> Iterator[tuple[int, int | None, str | None]]:
    """Each child that has ended, as (pid, exit code, signal name), as it is
    reaped.

    Lazy on purpose: the kernel answers ``waitpid(-1)`` by walking every
    child of the daemon (0.15 ms with 10,000 tasks), and the last walk only
    says no one else has ended -- a caller that acts on each exit as it
    comes (a restart) does not wait for that walk.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            yield pid, None, name
        else:
            yield pid, os.waitstatus_to_exitcode(status), None


def reap() -> list[tuple[int, int | None, str | None]]:
    """Every child that has ended, as (pid, exit code, signal name)."""
    return list(reaped())


def become_subreaper() -> bool:
    """Adopt orphaned descendants so that they are reaped here too, where
    the kernel can (Linux's ``prctl``); False where it cannot.

    A task that double-forks would otherwise leave its daemon parented to
    init, out of our sight; as subreaper we still get its SIGCHLD.  Without
    it (macOS, the BSDs) such a daemon is reaped by init instead, and still
    stopped with its slot while it stays in the slot's process group.
    """
    pr_set_child_subreaper = 36
    try:
        # The running process's own symbols include libc's; ctypes.util
        # would cost a megabyte and an ldconfig run to find the same.
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # no prctl: not Linux
        return False
