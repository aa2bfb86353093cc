"""Signals: what taskforce does on each one, declared once (shell side).

``TABLE`` names an ``Action`` for every signal a process can catch on this
host; the README's "Signals" table says the same in words, and a test checks
that no catchable signal is missing.  The rules it keeps:

- No signal kills taskforce by accident: a signal whose default would end or
  stop it is either handled (the loop acts on it) or ignored.
- A handler only notes the signal (``Signals.take`` hands it to the loop);
  the wake-up pipe makes the loop's one blocking wait return.
- Nothing taskforce ignores reaches a task as ignored: ``CHILD_DEFAULTS``
  (every catchable signal) is reset to its default in every child, on both
  spawn paths, since an ignored disposition survives exec.
- A reset hands over: before re-executing, taskforce blocks ``HELD`` and
  turns any signal it noted but did not act on back into a pending one; the
  new taskforce keeps them blocked (the mask survives exec) until its own
  handlers are in place.  A reset signal pending then belongs to the reset
  that just happened and is consumed; any other is delivered.

This module decides nothing about tasks: the loop turns a noted signal into
an event for the core, or into a shell chore (reaping, reopening files).
"""

from __future__ import annotations

import enum
import os
import signal
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Action(enum.Enum):
    """What taskforce does when a signal arrives."""

    #: Stop every task (dependents first), then exit 0.
    STOP = "stop"
    #: Stop every task, then re-execute; one already under way absorbs it.
    RESET = "reset"
    #: Reap the children that ended.
    REAP = "reap"
    #: Reopen the task output files (after logrotate moved them away).
    REOPEN = "reopen"
    #: Nothing: ignored, the kernel discards it.
    IGNORE = "ignore"
    #: Left at its default: a fault of taskforce itself, which dumps core.
    FAULT = "fault"


_BY_NAME = {
    "SIGTERM": Action.STOP,
    "SIGINT": Action.STOP,
    # Ctrl-\ in the foreground: the user wants taskforce to quit, so it does,
    # cleanly, rather than dumping core and leaving every task unsupervised.
    "SIGQUIT": Action.STOP,
    # LXC (and other container managers) ask a container's init to shut
    # down with SIGPWR; taskforce may be that init.
    "SIGPWR": Action.STOP,
    "SIGHUP": Action.RESET,
    "SIGCHLD": Action.REAP,
    "SIGUSR1": Action.REOPEN,
    "SIGUSR2": Action.REOPEN,
    # Timers and asynchronous I/O taskforce never asks for: a stray one is
    # someone else's mistake and must not end supervision.
    "SIGALRM": Action.IGNORE,
    "SIGVTALRM": Action.IGNORE,
    "SIGPROF": Action.IGNORE,
    "SIGIO": Action.IGNORE,  # also SIGPOLL
    "SIGURG": Action.IGNORE,
    "SIGSTKFLT": Action.IGNORE,
    "SIGLOST": Action.IGNORE,
    # A stopped supervisor supervises nothing: neither Ctrl-Z nor terminal
    # access from the background may stop it (reads then fail with EIO).
    "SIGTSTP": Action.IGNORE,
    "SIGTTIN": Action.IGNORE,
    "SIGTTOU": Action.IGNORE,
    # Resource limits: past the soft CPU limit the hard one still applies;
    # a write past the file size limit fails with EFBIG and is logged.
    "SIGXCPU": Action.IGNORE,
    "SIGXFSZ": Action.IGNORE,
    # A closed pipe or socket is an error on the write, handled there.
    "SIGPIPE": Action.IGNORE,
    "SIGWINCH": Action.IGNORE,
    "SIGINFO": Action.IGNORE,
    # Continuing a stopped process happens whatever the disposition.
    "SIGCONT": Action.IGNORE,
    # Synchronous faults: the instruction that faulted runs again if a
    # handler returns, and a Python handler only runs after the C code that
    # faulted; taskforce's state cannot be trusted after one.  Dying with a
    # core dump is the honest outcome.
    "SIGSEGV": Action.FAULT,
    "SIGBUS": Action.FAULT,
    "SIGILL": Action.FAULT,
    "SIGFPE": Action.FAULT,
    "SIGABRT": Action.FAULT,  # also SIGIOT
    "SIGTRAP": Action.FAULT,
    "SIGSYS": Action.FAULT,
    "SIGEMT": Action.FAULT,
}


def _table() -> dict[int, Action]:
    table = {
        int(getattr(signal, name)): action
        for name, action in _BY_NAME.items()
        if hasattr(signal, name)
    }
    low, high = getattr(signal, "SIGRTMIN", None), getattr(signal, "SIGRTMAX", None)
    if low is not None and high is not None:  # none on macOS
        # Real-time signals end a process by default; taskforce uses none.
        for signum in range(low, high + 1):
            table.setdefault(signum, Action.IGNORE)
    return table


#: What taskforce does on each signal it can catch.
TABLE: dict[int, Action] = _table()
#: Signals with a handler: blocked across a re-exec, until handlers are back.
HELD: frozenset[int] = frozenset(
    s for s, a in TABLE.items() if a not in (Action.IGNORE, Action.FAULT)
)
#: Reset to the default in every child before it runs its program.
CHILD_DEFAULTS: tuple[int, ...] = tuple(sorted(TABLE))


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def consume(signums: frozenset[int]) -> int:
    """Take every pending signal of ``signums`` (blocked ones) without acting
    on it; how many there were."""
    wait = getattr(signal, "sigtimedwait", None)
    if wait is None:
        # No sigtimedwait (macOS): a pending signal whose action becomes
        # SIG_IGN is discarded (POSIX), so each is ignored for a moment.
        pending = signums & signal.sigpending()
        for signum in sorted(pending):
            previous = signal.signal(signum, signal.SIG_IGN)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        return len(pending)
    taken = 0
    while signums and wait(signums, 0) is not None:
        taken += 1
    return taken


class Signals:
    """The dispositions of ``TABLE``, and the signals noted for the loop."""

    def __init__(self) -> None:
        self.noted: deque[int] = deque()

    def install(self, wake_fd: int) -> int:
        """Put every disposition in place, then let the held signals in.

        Returns how many reset signals were pending from before (consumed:
        the reset they asked for is the one that started this process).
        """
        signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        for signum, action in TABLE.items():
            if action is Action.IGNORE:
                signal.signal(signum, signal.SIG_IGN)
            elif action is Action.FAULT:
                signal.signal(signum, signal.SIG_DFL)
            else:
                signal.signal(signum, self._note)
        consumed = consume(_of(Action.RESET) & _blocked())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
        return consumed

    def _note(self, signum: int, frame: Any) -> None:
        # Runs between bytecodes; only note it, the loop does the work.
        self.noted.append(signum)

    def take(self) -> list[tuple[int, Action]]:
        """The signals noted since the last call, in order, with their action."""
        taken = []
        while self.noted:
            signum = self.noted.popleft()
            taken.append((signum, TABLE[signum]))
        return taken

    def hold(self) -> None:
        """Before a re-exec: block the handled signals, and make those noted
        but not acted on pending again, for the next taskforce to take."""
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
        while self.noted:
            os.kill(os.getpid(), self.noted.popleft())


def release() -> None:
    """Unblock the held signals on a way out that never installed handlers
    (a re-executed taskforce that cannot start); what is pending is dropped,
    as this process is leaving anyway."""
    consume(HELD & _blocked())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def _of(action: Action) -> frozenset[int]:
    return frozenset(s for s, a in TABLE.items() if a is action)


def _blocked() -> frozenset[int]:
    return frozenset(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
