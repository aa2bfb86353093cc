"""Chaos: a real daemon under random faults and changes, then an exact end state.

For a bounded time (``TASKFORCE_CHAOS_SECONDS``, 20 by default here; run
``python bench/chaos.py --seconds 600`` for a long run), a seeded
``random.Random`` (``TASKFORCE_CHAOS_SEED`` to reproduce; the seed is printed
and named in every failure) picks, over and over:

- SIGKILL (sometimes SIGTERM, or SIGKILL of a whole group, or of an unmarked
  grandchild) of a task's processes;
- edits of the files tasks watch (``file_change`` events: restart, a signal,
  a command);
- a rewrite of the config, atomic or in place: valid (a task's argv, its
  count up or down, control off and on, a task added or removed, roles) or
  broken (bad YAML, an unknown key, ``control: off`` unquoted);
- a rewrite of the roles file (tasks move in and out of scope), sometimes
  broken, sometimes removed;
- control requests over the Unix socket (control, count, restart, signal,
  reload), whose answers must never be a 5xx.

Then the last valid config and roles file are put in place; the daemon must
pick both up by itself (its watchers), then a reload ends any control
override, and once things settle (with a deadline): every task in
scope runs exactly ``count`` processes and nothing else runs; the daemon
reports exactly those pids; no zombie is left among its children; every
descendant of the daemon belongs to the process group of a pid it reports,
and no process group of an earlier incarnation has a member left.  The
daemon's RSS and open fds, taken in the same reference state after a warm-up
and again at the very end, must not have grown beyond a small bound.  The
``daemon`` fixture then replays the recorded event log (exactly).

The daemon runs a snapshot of the package (it resets itself when its own code
changes, and an edit of the working tree is not a fault this test injects).
The engine (``Chaos``) is shared with ``bench/chaos.py``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from daemon_harness import FEATURES, IGNORE_TERM, SLEEP, Daemon, proc_table, wait_for

import taskforce
from taskforce.tfctl import UnixConnection

# It counts on what only Linux gives: escapers found by the marker in their
# environment (/proc), orphans adopted by taskforce and by this test as
# subreaper (prctl), descriptors and start times read from /proc.  Where
# either is missing it skips, by feature.
pytestmark = pytest.mark.skipif(
    not (FEATURES.proc and FEATURES.subreaper),
    reason="needs /proc (escapers found by their environment) and a subreaper (prctl)",
)

DEFAULT_SECONDS = 20.0
#: How long the end state may take to settle (stop timeouts, backoff).
SETTLE = 60.0
#: Growth allowed between the two reference checkpoints.
RSS_SLACK_KIB = 6 * 1024
FD_SLACK = 2

#: In the daemon's environment, hence in that of everything it starts.
MARK_VAR = "TASKFORCE_CHAOS_MARK"
SH_SLEEP = "sleep 1000 & wait"
SH_HUP = "trap '' HUP; sleep 1000 & wait"
#: A task whose descendants leave its process group: a child that stays in
#: the group and whose own child calls ``setsid``, and a double fork into a
#: new session (the middle process exits at once).  They all ignore SIGCHLD,
#: so none leaves a zombie of its own; their argv shows ``<mark>+esc``, the
#: task's name and what they are, not the mark itself.
ESCAPE = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
tag = [sys.argv[1] + "+esc", sys.argv[2]]
def become(what):
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(1000)", *tag, what])
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        become("setsid")
    become("parent")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        become("double-fork")
    os._exit(0)
time.sleep(1000)
"""
WATCHED = ("w1", "w2", "w3")
ROLE_NAMES = ("web", "db", "cache")
EXTRA_NAMES = ("x0", "x1")


# =====================================================================
# The model: what the config says, hence what must run.


@dataclass
class TaskDef:
    name: str
    kind: str  # py, ign, sh, hup, esc
    count: int = 1
    variant: int = 0
    control: str = "wait"
    roles: tuple[str, ...] | None = None
    requires: str | None = None
    #: (watched file, {"command": ...} or {"signal": ...})
    watch: tuple[str, dict[str, str]] | None = None
    #: never turned off or put out of scope (something requires it)
    pinned: bool = False


@dataclass
class Plan:
    tasks: dict[str, TaskDef]
    #: the roles file's roles; None: no roles file (every task in scope)
    roles: tuple[str, ...] | None
    role_values: dict[str, str] = field(default_factory=dict)

    def in_scope(self, task: TaskDef) -> bool:
        if task.control == "off":
            return False
        if task.roles is None or self.roles is None:
            return True
        return bool(set(task.roles) & set(self.roles))

    def expected(self) -> dict[str, int]:
        return {n: (t.count if self.in_scope(t) else 0) for n, t in self.tasks.items()}


def initial_plan() -> Plan:
    tasks = [
        TaskDef("py1", "py", count=2, pinned=True, watch=("w1", {"command": "stop"})),
        TaskDef("py2", "py", watch=("w2", {"signal": "HUP"})),
        TaskDef("sh1", "sh", count=2, watch=("w3", {"command": "poke"})),
        TaskDef("hup", "hup", watch=("w3", {"signal": "HUP"})),
        TaskDef("ign", "ign"),
        TaskDef("web", "py", roles=("web",)),
        TaskDef("db", "sh", count=2, roles=("db", "cache")),
        TaskDef("dep", "py", requires="py1"),
        TaskDef("esc", "esc", count=2),
    ]
    return Plan({t.name: t for t in tasks}, ("web",))


def argv(task: TaskDef, marker: str, root: Path) -> list[str]:
    tail = [marker, task.name, f"v{task.variant}"]
    if task.kind == "py":
        return [sys.executable, "-c", SLEEP, *tail]
    if task.kind == "ign":
        return [sys.executable, "-c", IGNORE_TERM, *tail]
    if task.kind == "esc":
        return [sys.executable, "-c", ESCAPE, *tail]
    return ["sh", "-c", SH_HUP if task.kind == "hup" else SH_SLEEP, *tail]


def config_of(plan: Plan, marker: str, root: Path) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task in plan.tasks.values():
        out: dict[str, Any] = {"commands": {"start": argv(task, marker, root)}}
        if task.count != 1:
            out["count"] = task.count
        if task.control != "wait":
            out["control"] = task.control
        if task.roles is not None:
            out["roles"] = list(task.roles)
        if task.requires:
            out["requires"] = task.requires
        if task.kind == "ign":
            out["stop_timeout"] = 0.3
        if task.watch is not None:
            path, action = task.watch
            if action.get("command") == "poke":
                out["commands"]["poke"] = ["sh", "-c", "exit 0", f"{marker}+cmd"]
            out["events"] = [{"type": "file_change", "path": str(root / path), **action}]
        tasks[task.name] = out
    settings = {
        "stable_after": 0.2,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "stop_timeout": 2,
        # Every incarnation's log is kept (resets and crashes start a new one).
        "record": {"file": str(root / "events.jsonl"), "backups": 999},
    }
    return {"settings": settings, "tasks": tasks}


def render(config: dict[str, Any], rng: random.Random) -> str:
    style = rng.choice(["json", "block", "flow"])
    if style == "json":
        return json.dumps(config, indent=rng.choice([None, 1, 2]))
    text: str = yaml.safe_dump(
        config, default_flow_style=(style == "flow"), sort_keys=rng.random() < 0.5
    )
    return text


def roles_text(plan: Plan, rng: random.Random) -> str:
    assert plan.roles is not None
    lines = []
    if rng.random() < 0.3:
        lines.append("# roles of this host")
    for role in plan.roles:
        value = plan.role_values.get(role)
        lines.append(f"{role}={value}" if value is not None else role)
        if rng.random() < 0.2:
            lines.append("")
    return "".join(f"{line}\n" for line in lines)


# =====================================================================
# Talking to the daemon.


def call(sock: str, target: str, method: str = "GET") -> tuple[int, str]:
    conn = UnixConnection(sock)
    try:
        conn.request(method, target, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def tasks_json(sock: str) -> dict[str, Any]:
    code, text = call(sock, "/status/tasks")
    assert code == 200, (code, text)
    answer: dict[str, Any] = json.loads(text)
    return answer


# =====================================================================
# /proc


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fds(pid: int) -> dict[str, int]:
    """Open fds of ``pid`` by kind (pipe, socket, anon_inode:..., file)."""
    kinds: Counter[str] = Counter()
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        if kind == "anon_inode":
            kind = target
        kinds[kind] += 1
    return dict(kinds)


def descendants(table: dict[int, tuple[int, int, str, str]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def drop_torn_tail(path: Path) -> int:
    """Cut ``path`` after its last newline; 1 if there was something to cut."""
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if keep == len(data):
                return 0
            handle.truncate(keep)
            return 1
    except FileNotFoundError:
        return 0


def task_of(cmdline: str, marker: str) -> str | None:
    words = cmdline.split()
    if marker in words:
        at = words.index(marker)
        if at + 1 < len(words):
            return words[at + 1]
    return None


@dataclass(frozen=True)
class Member:
    """A live process of a slot's tree, as its environment names it."""

    pid: int
    start: bytes  # its start time (/proc/PID/stat field 22): a reused pid differs
    task: str
    instance: int
    tree: int  # Task_pid: the pid of the tree's first process


def start_time(pid: int) -> bytes | None:
    """Field 22 of ``/proc/PID/stat`` of a live, non-zombie ``pid``; else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else fields[19]


def members(
    table: dict[int, tuple[int, int, str, str]], mark: bytes, skip: set[int]
) -> tuple[list[Member], set[int]]:
    """The live processes carrying ``mark`` in their environment that belong to
    a slot's tree (commands and the spawn shim left out), and every pid that
    carries ``mark`` at all."""
    found: list[Member] = []
    marked: set[int] = set()
    for pid, (_, _, state, cmdline) in table.items():
        if state in ("Z", "X") or pid in skip:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if mark not in environ:
            continue
        marked.add(pid)
        if "+cmd" in cmdline:
            continue  # a task's command (an event action), not one of its slots
        env = dict(item.partition(b"=")[::2] for item in environ)
        name, instance, tree = (env.get(k) for k in (b"Task_name", b"Task_instance", b"Task_pid"))
        begun = start_time(pid)
        if name is None or tree is None or not (instance or b"").isdigit() or begun is None:
            continue  # not yet exec'd (no Task_pid yet), or gone
        found.append(Member(pid, begun, name.decode(), int(instance or b"0"), int(tree)))
    return found, marked


def by_slot(found: list[Member]) -> dict[tuple[str, int], dict[int, list[Member]]]:
    """slot -> tree (Task_pid) -> its members."""
    slots: dict[tuple[str, int], dict[int, list[Member]]] = {}
    for member in found:
        slots.setdefault((member.task, member.instance), {}).setdefault(member.tree, []).append(
            member
        )
    return slots


def set_subreaper(on: bool) -> bool:
    """Make this process the subreaper of its descendants (Linux), as an init
    or a service manager is: what a killed taskforce leaves comes here, to
    be reaped, instead of going to a PID 1 that may not reap."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, int(on), 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


# =====================================================================
# The engine


class ChaosFailure(AssertionError):
    pass


class Chaos:
    """Random faults and changes against one daemon, then the checks."""

    def __init__(
        self,
        daemon: Daemon,
        seed: int,
        seconds: float,
        log: Callable[[str], None] = print,
        *,
        checkpoint_every: float = 0.0,
        first: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        """``checkpoint_every`` seconds (0: never) the run stops to settle on
        the current plan and count what is wrong; ``first`` names actions
        (``act_*`` without the prefix) done once each before the random
        ones; ``env`` is added to the daemon's environment."""
        self.daemon = daemon
        self.seed = seed
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.say = log
        self.marker = daemon.marker
        self.root = daemon.root
        self.folder = Path(tempfile.mkdtemp(prefix="tfchaos", dir="/tmp"))
        self.sock = str(self.folder / "s.taskforce")
        self.reference = initial_plan()
        self.plan = copy.deepcopy(self.reference)
        self.stats: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.seen: set[int] = set()
        self.bad_answers: list[str] = []
        self.checkpoints: dict[str, tuple[int, dict[str, int]]] = {}
        self.checkpoint_every = checkpoint_every
        self.first = first
        self.extra_env = env or {}
        self.mark = f"{MARK_VAR}={self.marker}".encode()
        #: every pid seen carrying the mark (a zombie's environment is gone)
        self.ours: set[int] = set()
        #: duplicates, survivors, zombies found (any one fails the run)
        self.findings: Counter[str] = Counter()
        self.subreaper = False
        #: filled in once the end state was reached (also when a check fails)
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------- set-up

    def fail(self, message: str) -> None:
        raise ChaosFailure(f"[chaos seed {self.seed}] {message}")

    def write_plan(self, plan: Plan, *, in_place: bool = False) -> None:
        text = render(config_of(plan, self.marker, self.root), self.rng)
        self.write_config_text(text, in_place=in_place)

    def write_config_text(self, text: str, *, in_place: bool = False) -> None:
        if in_place:
            # An editor that truncates and writes: the daemon may read a part.
            cut = self.rng.randrange(len(text) + 1)
            with open(self.daemon.config, "w") as handle:
                handle.write(text[:cut])
                handle.flush()
                time.sleep(self.rng.choice([0, 0.001, 0.02]))
                handle.write(text[cut:])
        else:
            self.daemon.write_config(text)

    def write_roles(self, plan: Plan) -> None:
        if plan.roles is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.daemon.roles)
            return
        tmp = self.daemon.roles.with_suffix(".tmp")
        tmp.write_text(roles_text(plan, self.rng))
        os.replace(tmp, self.daemon.roles)

    def start(self) -> None:
        for name in WATCHED:
            (self.root / name).write_text("0\n")
        self.write_roles(self.plan)
        self.write_plan(self.plan)
        margin = self.seconds * 2 + 600
        # The daemon runs a snapshot of the package: it resets itself when its
        # own code changes, and an edit of the working tree during a long run
        # is not one of the faults this test means to inject.
        package = Path(taskforce.__file__ or "taskforce").parent
        shutil.copytree(
            package, self.folder / "pkg" / "taskforce", ignore=shutil.ignore_patterns("__pycache__")
        )
        self.env = {"PYTHONPATH": str(self.folder / "pkg"), MARK_VAR: self.marker, **self.extra_env}
        # One command line for every start, a restart after a crash included
        # (with the same roles file, so the same taskforce id).
        command = self.daemon.command("-w", self.sock, "-A", "--expires", str(margin))
        self.daemon.command = lambda *extra: command  # type: ignore[method-assign]
        self.subreaper = set_subreaper(True)
        self.daemon.start(env=self.env)
        wait_for(lambda: self.answers(), timeout=20, what="the control socket")

    def answers(self) -> bool:
        try:
            return call(self.sock, "/status/version")[0] == 200
        except OSError:
            return False

    def close(self) -> None:
        if self.subreaper:
            set_subreaper(False)
            self.reap()
        shutil.rmtree(self.folder, ignore_errors=True)

    def reap(self) -> None:
        """Reap what a killed taskforce left to us (we are its subreaper)."""
        if not self.subreaper:
            return
        children: list[int] = []
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as handle:
                children.extend(int(pid) for pid in handle.read().split())
        for pid in children:
            if pid != self.daemon.own_pid and start_time(pid) is None:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        self.stats["reaped_by_the_harness"] += 1

    # ------------------------------------------------------------ actions

    def marked(self) -> dict[int, str]:
        found = self.daemon.processes()
        self.seen.update(found)
        return found

    def started_count(self) -> int:
        """Starts of taskforce so far, and resets it refused (the config on
        disk was broken: nothing was stopped)."""
        log = self.daemon.log_text()
        return log.count("taskforce started as pid") + log.count("reset refused")

    def back(self, started: int, what: str) -> None:
        """Wait until taskforce has started (or refused a reset) since
        ``started`` and answers."""
        try:
            wait_for(
                lambda: self.started_count() > started and self.answers(), timeout=60, what=what
            )
        except AssertionError:
            tail = "\n".join(self.daemon.log_text().splitlines()[-30:])
            self.fail(f"nothing supervises after {what}:\n{tail}")

    def act_storm_hup(self) -> None:
        self.act_storm(hups=self.rng.choice([2, 3, 5]))

    def act_storm_usr(self) -> None:
        self.act_storm(hups=0)

    def act_storm(self, hups: int | None = None) -> None:
        """A burst of signals at taskforce itself: HUPs (which must coalesce
        into one reset, after which everything runs again), or USR1 and USR2
        (reopen output files; never death), sometimes mixed."""
        rng = self.rng
        pid = self.daemon.pid
        if hups is None:
            hups = rng.choice([0, 1, 2, 3, 5, 8])
        others = rng.choice([0, 1, 3]) if hups else rng.choice([1, 2, 5])
        sent = [signal.SIGHUP] * hups + [
            rng.choice([signal.SIGUSR1, signal.SIGUSR2]) for _ in range(others)
        ]
        rng.shuffle(sent)
        started = self.started_count()
        for signum in sent:
            os.kill(pid, signum)
            self.stats["sent_" + signal.Signals(signum).name] += 1
            time.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05]))
        self.stats["storms_hup" if hups else "storms_usr"] += 1
        if hups:
            self.back(started, f"a storm of {hups} SIGHUPs")

    def act_crash(self) -> None:
        """SIGKILL of taskforce (sometimes in the middle of a reset), then a
        start with the same command line: it must stop what its predecessor
        left before anything starts in its place."""
        rng = self.rng
        proc = self.daemon.proc
        assert proc is not None
        if rng.random() < 0.25:
            os.kill(proc.pid, signal.SIGHUP)
            self.stats["sent_SIGHUP"] += 1
            self.stats["crashes_during_a_reset"] += 1
            time.sleep(rng.choice([0, 0.01, 0.05, 0.1, 0.3]))
        proc.kill()
        proc.wait(10)
        self.stats["taskforce_sigkills"] += 1
        # A crashed recorder may end its log in a torn line: what it wrote
        # before is what must replay.
        torn = drop_torn_tail(self.daemon.events)
        self.stats["torn_log_tails_dropped"] += torn
        self.reap()
        # An operator starts it again with the last config and roles written
        # (a broken or missing file would keep it from starting at all).
        self.write_roles(self.plan)
        self.write_plan(self.plan)
        started = self.started_count()
        self.daemon.start(env=self.env)
        self.back(started, "a restart after SIGKILL")
        # Right after the recovery, no slot may run two trees at any time.
        deadline = time.monotonic() + rng.choice([0.5, 1.0, 2.0])
        while time.monotonic() < deadline:
            self.check_overlaps("after a restart")
            time.sleep(0.02)

    def check_overlaps(self, when: str) -> None:
        """No slot runs two process trees at one instant (a duplicate).

        A scan of /proc is not atomic; each tree it saw is looked at again
        afterwards: a member alive then was alive all along since it was
        seen, so trees all confirmed alive were all alive at once."""
        found, marked = members(proc_table(), self.mark, {self.daemon.pid})
        self.ours |= marked
        for slot, trees in sorted(by_slot(found).items()):
            if len(trees) < 2:
                continue
            confirmed = {
                tree: [m.pid for m in group if start_time(m.pid) == m.start]
                for tree, group in trees.items()
            }
            if all(confirmed.values()):
                self.findings["duplicates"] += 1
                self.fail(
                    f"duplicate {when}: {slot[0]}[{slot[1]}] runs {len(trees)} process trees "
                    f"at once: {confirmed}"
                )

    def act_kill(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.12:
            # anything under the daemon: a sh's sleep, a command, a leader
            table = proc_table()
            pool = sorted(descendants(table, self.daemon.pid))
            if pool:
                self._kill(rng.choice(pool), signal.SIGKILL, "kill_descendant")
            return
        pool = sorted(self.marked())
        if not pool:
            return
        pid = rng.choice(pool)
        if roll < 0.2:
            try:
                os.killpg(pid, signal.SIGKILL)
                self.stats["killpg"] += 1
            except OSError:
                pass
        elif roll < 0.4:
            self._kill(pid, signal.SIGTERM, "sigterm")
        else:
            self._kill(pid, signal.SIGKILL, "sigkill")

    def _kill(self, pid: int, signum: int, what: str) -> None:
        try:
            os.kill(pid, signum)
            self.stats[what] += 1
        except OSError:
            pass

    def act_touch(self) -> None:
        path = self.root / self.rng.choice(WATCHED)
        how = self.rng.random()
        if how < 0.6:
            with open(path, "a") as handle:
                handle.write(f"{self.rng.random()}\n")
        elif how < 0.9:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f"{self.rng.random()}\n")
            os.replace(tmp, path)
        else:
            path.write_text("")
        self.stats["touch"] += 1

    def mutate(self, plan: Plan) -> Plan:
        """A valid change of the config (one or two edits)."""
        rng = self.rng
        new = copy.deepcopy(plan)
        for _ in range(rng.choice([1, 1, 1, 2])):
            kind = rng.choice(["count", "count", "argv", "argv", "control", "add", "roles"])
            names = sorted(new.tasks)
            name = rng.choice(names)
            task = new.tasks[name]
            if kind == "count":
                task.count = rng.choice([c for c in (1, 2, 3) if c != task.count])
            elif kind == "argv":
                task.variant += 1
            elif kind == "control" and not task.pinned:
                task.control = "off" if task.control == "wait" else "wait"
            elif kind == "add":
                extra = rng.choice(EXTRA_NAMES)
                if extra in new.tasks:
                    del new.tasks[extra]
                else:
                    new.tasks[extra] = TaskDef(
                        extra, rng.choice(["py", "sh", "esc"]), count=rng.choice([1, 2])
                    )
            elif kind == "roles" and not task.pinned and task.kind != "ign":
                task.roles = rng.choice([None, ("web",), ("db",), ("cache", "web")])
        return new

    def act_config(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7:
            self.plan = self.mutate(self.plan)
            self.write_plan(self.plan, in_place=rng.random() < 0.25)
            self.stats["config_valid"] += 1
            return
        # A broken config: the daemon logs it and keeps what it runs.
        broken = config_of(self.mutate(self.plan), self.marker, self.root)
        how = rng.choice(["yaml", "unknown_key", "unquoted_off"])
        if how == "yaml":
            text = render(broken, rng)
            text = text[: rng.randrange(1, max(2, len(text) - 1))] + rng.choice(
                ["{", "[", "\t", ": :", ""]
            )
            # (a cut may still parse, even as a valid config: the daemon then
            # applies it, and the end state comes from the last plan written)
        elif how == "unknown_key":
            victim = rng.choice(sorted(broken["tasks"]))
            broken["tasks"][victim][rng.choice(["bogus_key", "cmd", "Count"])] = 1
            text = render(broken, rng)
        else:
            victim = rng.choice(sorted(broken["tasks"]))
            broken["tasks"][victim]["control"] = "@OFF@"
            text = render(broken, rng).replace('"@OFF@"', "off").replace("'@OFF@'", "off")
            text = text.replace("@OFF@", "off")
        self.write_config_text(text, in_place=rng.random() < 0.25)
        self.stats[f"config_broken_{how}"] += 1

    def act_roles(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            # broken: nothing may change
            text = rng.choice(["web\nbad role!\n", "db\ndb\n", "we b\n"])
            tmp = self.daemon.roles.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.daemon.roles)
            self.stats["roles_broken"] += 1
            return
        if roll < 0.18:
            # removed: the daemon keeps the roles it has, so the plan stays
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.daemon.roles)
            self.stats["roles_removed"] += 1
            return
        new = copy.deepcopy(self.plan)
        new.roles = tuple(sorted(rng.sample(ROLE_NAMES, rng.randrange(len(ROLE_NAMES) + 1))))
        new.role_values = {
            r: rng.choice(["blue", "green"]) for r in new.roles if rng.random() < 0.3
        }
        self.plan = new
        self.write_roles(new)
        self.stats["roles_valid"] += 1

    def act_control(self) -> None:
        rng = self.rng
        names = sorted(self.plan.tasks) + ["nope"]
        name = rng.choice(names)
        kind = rng.choice(
            ["control", "count", "count", "restart", "restart", "signal", "status", "reload"]
        )
        if kind == "control":
            target = "/manage/control?" + urlencode({name: rng.choice(["off", "wait", "wait"])})
        elif kind == "count":
            target = "/manage/count?" + urlencode(
                {name: rng.choice(["1", "2", "3", "3", "0", "x"])}
            )
        elif kind == "restart":
            query = {"task": name}
            if rng.random() < 0.5:
                query["instance"] = str(rng.randrange(4))
            target = "/manage/restart?" + urlencode(query)
        elif kind == "signal":
            query = {"task": name, "signal": rng.choice(["HUP", "USR1", "TERM", "CONT", "KILL"])}
            if rng.random() < 0.5:
                query["instance"] = str(rng.randrange(3))
            target = "/manage/signal?" + urlencode(query)
        elif kind == "status":
            target = rng.choice(["/status/tasks", "/status/health", "/metrics", "/status/config"])
        else:
            target = "/manage/reload"
        try:
            code, text = call(self.sock, target, rng.choice(["GET", "POST"]))
        except OSError as exc:
            self.bad_answers.append(f"{target}: {exc!r}")
            return
        self.codes[f"{kind} {code}"] += 1
        if code >= 500 and not (kind == "status" and code == 503):
            self.bad_answers.append(f"{target}: {code} {text[:200]!r}")

    # -------------------------------------------------------------- loop

    def run_for(self, seconds: float) -> None:
        rng = self.rng
        actions = [
            (self.act_kill, 30),
            (self.act_touch, 12),
            (self.act_config, 12),
            (self.act_roles, 6),
            (self.act_control, 30),
            (self.act_storm, 2),
            (self.act_crash, 1),
        ]
        choices = [a for a, _ in actions]
        weights = [w for _, w in actions]
        first = [getattr(self, f"act_{name}") for name in self.first]
        self.first = ()
        deadline = time.monotonic() + seconds
        while first or time.monotonic() < deadline:
            (first.pop(0) if first else rng.choices(choices, weights)[0])()
            self.stats["actions"] += 1
            if self.daemon.proc is not None and self.daemon.proc.poll() is not None:
                tail = "\n".join(self.daemon.log_text().splitlines()[-30:])
                self.fail(f"the daemon exited with {self.daemon.proc.returncode}:\n{tail}")
            time.sleep(rng.choice([0, 0.005, 0.02, 0.05, 0.1]))
            self.reap()
            if rng.random() < 0.1:
                self.marked()
                self.check_overlaps("during the run")

    # ------------------------------------------------------------ settle

    def put_in_place(self, plan: Plan) -> None:
        """Write ``plan`` (config and roles) and end every control override."""
        self.write_roles(plan)
        self.write_plan(plan)
        # First the daemon must see both files by itself (its watchers)...
        last: list[str] = []

        def picked_up() -> bool:
            nonlocal last
            last = self.loaded_differs(plan)
            return not last

        try:
            wait_for(picked_up, timeout=15, what="the new files")
        except AssertionError:
            self.fail(f"the daemon did not pick up the config and roles files: {last}")
        # ... then a reload, a config event, ends every control override.
        code, text = call(self.sock, "/manage/reload")
        if code != 202:
            self.fail(f"reload answered {code} {text!r}")
        self.resume_halted_rollouts()

    def resume_halted_rollouts(self) -> None:
        """Resume every rollout a fault halted, as an operator would.

        A halt is the daemon doing its job: killing a new process's child
        (``kill_descendant``) makes a ``sh -c '... & wait'`` exit 0 at once,
        which is what a release that cannot run looks like.  It stays halted
        until the next change of that task or an operator's resume, and a
        reload of the same config is neither; so the end state needs the
        resume, whose own answer is checked here.
        """
        try:
            status = tasks_json(self.sock)
        except (OSError, AssertionError, ValueError) as exc:
            self.fail(f"no status to look for halted rollouts: {exc!r}")
        for name, shown in sorted(status.items()):
            halted = (shown.get("rollout") or {}).get("halted")
            if not halted:
                continue
            self.stats["rollouts_resumed"] += 1
            print(f"chaos: resuming the rollout of {name}, halted: {halted}")
            query = urlencode({"task": name, "resume": 1})
            code, text = call(self.sock, f"/manage/rollout?{query}")
            if code not in (200, 202):
                self.fail(f"resume of the halted rollout of {name} answered {code} {text!r}")

    def loaded_differs(self, plan: Plan) -> list[str]:
        """How the config and roles the daemon holds differ from ``plan``."""
        try:
            code, text = call(self.sock, "/status/config")
            loaded = json.loads(text)["tasks"] if code == 200 else {}
            status = tasks_json(self.sock)
        except (OSError, AssertionError, ValueError, KeyError) as exc:
            return [f"no answer: {exc!r}"]
        wanted = config_of(plan, self.marker, self.root)["tasks"]
        out = []
        if set(loaded) != set(wanted):
            out.append(f"tasks {sorted(loaded)}, want {sorted(wanted)}")
        for name in sorted(set(loaded) & set(wanted)):
            have, want = loaded[name], wanted[name]
            for key, default in (("count", 1), ("control", "wait"), ("roles", None)):
                if have.get(key, default) != want.get(key, default):
                    out.append(f"{name}.{key} {have.get(key, default)!r}, want {want.get(key)!r}")
            if have["commands"]["start"] != want["commands"]["start"]:
                out.append(f"{name}: argv {have['commands']['start'][-1]!r}")
            shown = status.get(name)
            # An operator's control override outlives an edit that leaves the
            # task's entry as it was (issue 13); the reload that follows ends it.
            if (
                shown is not None
                and not shown.get("overrides")
                and shown.get("in_scope") != plan.in_scope(plan.tasks[name])
            ):
                out.append(f"{name}: in_scope {shown.get('in_scope')}")
        return out

    def problems(self, plan: Plan) -> list[str]:
        out: list[str] = []
        daemon = self.daemon
        if daemon.proc is None or daemon.proc.poll() is not None:
            return [f"the daemon is not running (exit {daemon.proc and daemon.proc.returncode})"]
        expected = plan.expected()
        try:
            status = tasks_json(self.sock)
        except (OSError, AssertionError, ValueError) as exc:
            return [f"no status: {exc!r}"]
        table = proc_table()
        marked: dict[str, set[int]] = {}
        for pid, (_, _, state, cmdline) in table.items():
            if self.marker in cmdline and state != "Z" and pid != daemon.pid:
                name = task_of(cmdline, self.marker)
                if name is None:
                    continue  # an escaper or a command: see the trees below
                marked.setdefault(name, set()).add(pid)
                self.seen.add(pid)
        reported: set[int] = set()
        if set(status) != set(expected):
            out.append(f"status lists {sorted(status)}, the config {sorted(expected)}")
        for name in sorted(set(expected) | set(marked)):
            want = expected.get(name, 0)
            have = marked.get(name, set())
            if len(have) != want:
                out.append(f"{name}: {len(have)} processes running, want {want}")
            shown = status.get(name)
            if shown is None:
                continue
            pids = {s["pid"] for s in shown["processes"] if "pid" in s}
            reported |= pids
            states = sorted({s["state"] for s in shown["processes"]})
            if want and (states != ["ready"] or len(shown["processes"]) != want):
                out.append(f"{name}: slots {states} x{len(shown['processes'])}, want {want} ready")
            if pids != have:
                out.append(f"{name}: daemon reports pids {sorted(pids)}, running {sorted(have)}")
            if shown.get("overrides"):
                out.append(f"{name}: overrides left {shown['overrides']}")
        # Every process the daemon ever started, and all they started, carry
        # the run's mark in their environment, and their slot and tree
        # (Task_name, Task_instance, Task_pid): wherever they went, each must
        # belong to a tree the daemon reports now, in a slot that should run.
        found, marked_pids = members(table, self.mark, {daemon.pid})
        self.ours |= marked_pids
        for (name, instance), trees in sorted(by_slot(found).items()):
            want = expected.get(name, 0)
            for tree, group in sorted(trees.items()):
                pids = sorted(m.pid for m in group)
                if instance >= want:
                    out.append(
                        f"survivor: {name}[{instance}] should not run; its tree {tree}: {pids}"
                    )
                elif tree not in reported:
                    leader_alive = any(m.pid == tree for m in group)
                    kind = "duplicate" if leader_alive else "survivor"
                    out.append(f"{kind}: {name}[{instance}] tree {tree} not the daemon's: {pids}")
        in_trees = {m.pid for m in found}
        under = descendants(table, daemon.pid)
        for pid in sorted(under):
            _, pgid, state, cmdline = table[pid]
            if state == "Z":
                out.append(f"zombie: child {pid} of taskforce ({cmdline or '?'})")
            elif pid not in in_trees:
                out.append(f"{pid} ({cmdline!r}) under taskforce, in no slot's tree")
        for pid, (ppid, _, state, _) in sorted(table.items()):
            if state == "Z" and ppid == 1 and pid in self.ours:
                out.append(f"zombie: {pid} of a task, a child of PID 1")
        return out

    def settle(self, plan: Plan, what: str) -> None:
        last: list[str] = []

        def settled() -> bool:
            nonlocal last
            # A kill that landed just before the faults stopped may halt a
            # rollout while things settle.
            self.resume_halted_rollouts()
            last = self.problems(plan)
            return not last

        started = time.monotonic()
        try:
            wait_for(settled, timeout=SETTLE, what=what)
        except AssertionError:
            self.count(last)
            tail = "\n".join(self.daemon.log_text().splitlines()[-40:])
            self.fail(
                f"{what}: not settled after {SETTLE}s:\n  "
                + "\n  ".join(last)
                + f"\n--- log tail:\n{tail}"
            )
        # Settled states must stay settled: nothing flaps afterwards.
        time.sleep(0.5)
        again = self.problems(plan)
        if again:
            self.count(again)
            self.fail(f"{what}: settled, then changed again: {again}")
        self.stats[f"settle_ms_{what}"] = round((time.monotonic() - started) * 1000)

    def shutdown(self) -> int:
        """SIGTERM to taskforce: it must exit 0 leaving nothing of its tasks
        (escapers included), and no zombie of theirs."""
        code = self.daemon.stop(timeout=60)
        left: set[int] = set()

        def nothing_left() -> bool:
            nonlocal left
            self.reap()
            _, left = members(proc_table(), self.mark, set())
            return not left

        try:
            wait_for(nothing_left, timeout=10, what="nothing left after the shutdown")
        except AssertionError:
            self.findings["survivors"] += len(left)
            self.fail(f"left running after taskforce's shutdown: {sorted(left)}")
        zombies = [
            pid
            for pid, (ppid, _, state, _) in proc_table().items()
            if state == "Z" and ppid == 1 and pid in self.ours
        ]
        if zombies:
            self.findings["zombies"] += len(zombies)
            self.fail(f"zombies of our tasks under PID 1 after the shutdown: {zombies}")
        return code

    def partial_summary(self) -> dict[str, Any]:
        """What was done and found so far (also when the run failed)."""
        log = self.daemon.log_text()
        return {
            "seed": self.seed,
            "actions": dict(sorted(self.stats.items())),
            "answers": dict(sorted(self.codes.items())),
            "processes_seen": len(self.seen),
            "taskforce": {
                "sigkills": self.stats["taskforce_sigkills"],
                "hups_sent": self.stats["sent_SIGHUP"],
                "resets_observed": log.count("re-executing"),
                "resets_refused": log.count("reset refused"),
                "usr_sent": self.stats["sent_SIGUSR1"] + self.stats["sent_SIGUSR2"],
                "starts": log.count("taskforce started as pid"),
            },
            "findings": {k: self.findings[k] for k in ("duplicates", "survivors", "zombies")},
        }

    def count(self, problems: list[str]) -> None:
        for problem in problems:
            kind = problem.split(":", 1)[0]
            if kind in ("duplicate", "survivor", "zombie"):
                self.findings[kind + "s"] += 1

    def checkpoint(self, name: str) -> tuple[int, dict[str, int]]:
        pid = self.daemon.pid
        # Our own connections may linger on the daemon's side for a moment.
        time.sleep(1.2)
        point = (rss_kib(pid), fds(pid))
        self.checkpoints[name] = point
        return point

    # -------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.say(
            f"chaos: seed {self.seed}, {self.seconds:g}s"
            f" (TASKFORCE_CHAOS_SEED={self.seed} to replay)"
        )
        self.start()
        self.settle(self.reference, "start")
        warmup = min(max(3.0, self.seconds * 0.25), 60.0)
        self.run_for(warmup)
        self.plan = copy.deepcopy(self.reference)
        self.put_in_place(self.plan)
        self.settle(self.plan, "warm-up reference")
        early = self.checkpoint("early")
        left = max(0.0, self.seconds - warmup)
        while left > 0:
            # Now and then, settle on the current plan and check it exactly.
            chunk = min(left, self.checkpoint_every or left)
            self.run_for(chunk)
            left -= chunk
            if left > 0:
                self.put_in_place(self.plan)
                self.stats["checkpoints"] += 1
                self.settle(self.plan, f"checkpoint {self.stats['checkpoints']}")
        final = self.plan
        self.put_in_place(final)
        self.settle(final, "last valid config")
        self.stats["final_processes"] = sum(final.expected().values())
        # Back to the reference state, to compare memory and fds like for like.
        self.put_in_place(self.reference)
        self.settle(self.reference, "end reference")
        late = self.checkpoint("late")
        grew_rss = late[0] - early[0]
        early_fds, late_fds = sum(early[1].values()), sum(late[1].values())
        failures = []
        code = self.shutdown()
        if code != 0:
            failures.append(f"taskforce exited with {code} at shutdown")
        self.summary = {
            **self.partial_summary(),
            "seconds": round(time.monotonic() - started, 1),
            "rss_kib": {"early": early[0], "late": late[0], "growth": grew_rss},
            "fds": {"early": early[1], "late": late[1]},
        }
        if self.bad_answers:
            failures.append(f"control requests answered badly: {self.bad_answers[:5]}")
        if grew_rss > RSS_SLACK_KIB:
            failures.append(f"RSS grew by {grew_rss} KiB ({early[0]} -> {late[0]})")
        if late_fds > early_fds + FD_SLACK:
            failures.append(f"open fds grew: {early[1]} -> {late[1]}")
        # (Task output is logged too, each line prefixed with a time stamp:
        # a task's own traceback is not the daemon's.)
        if re.search(r"^Traceback \(most recent call last\)", self.daemon.log_text(), re.M):
            failures.append("the daemon logged a traceback")
        if failures:
            self.fail("; ".join(failures))
        return self.summary


def chaos_seed() -> int:
    raw = os.environ.get("TASKFORCE_CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def chaos_seconds(default: float = DEFAULT_SECONDS) -> float:
    raw = os.environ.get("TASKFORCE_CHAOS_SECONDS")
    return float(raw) if raw else default


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"chaos summary (seed {summary['seed']}, {summary.get('seconds', '?')}s)"]
    for key in ("actions", "answers"):
        lines.append(f"  {key}:")
        for name, value in summary.get(key, {}).items():
            lines.append(f"    {name:32} {value}")
    lines.append(f"  distinct task processes seen: {summary.get('processes_seen', '?')}")
    taskforce = summary.get("taskforce")
    if taskforce:
        lines.append(
            f"  taskforce: {taskforce['sigkills']} SIGKILLs and restarts, {taskforce['hups_sent']}"
            f" SIGHUPs sent -> {taskforce['resets_observed']} resets"
            f" ({taskforce['resets_refused']} refused: a broken config), {taskforce['usr_sent']}"
            f" SIGUSR1/2 sent, {taskforce['starts']} starts in all"
        )
    findings = summary.get("findings")
    if findings:
        lines.append("  found: " + ", ".join(f"{value} {key}" for key, value in findings.items()))
    rss = summary.get("rss_kib")
    if rss:
        lines.append(
            f"  daemon RSS KiB: early {rss['early']}, late {rss['late']} (growth {rss['growth']})"
        )
    if summary.get("fds"):
        lines.append(
            f"  daemon fds: early {summary['fds']['early']}, late {summary['fds']['late']}"
        )
    return "\n".join(lines)


# =====================================================================
# Tests


def test_chaos(daemon: Daemon) -> None:
    chaos = Chaos(daemon, chaos_seed(), chaos_seconds())
    try:
        chaos.run()
    finally:
        chaos.close()
        if chaos.summary:
            print(format_summary(chaos.summary))


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_chaos_with_signal_storms_crashes_and_escapers(daemon: Daemon, cgroups: str) -> None:
    """A short run, always with the same seed, that does each of the harsher
    faults at least once before random ones: SIGHUP and SIGUSR1/2 storms at
    taskforce, SIGKILL of taskforce and a start again (once in the middle of
    a reset), kills among tasks whose grandchildren escape by setsid and a
    double fork -- with a cgroup per slot where the host has them, and
    without.  Then the end state is exact, nothing is left after the
    shutdown, and every incarnation's log replays (the fixture)."""
    chaos = Chaos(
        daemon,
        20261206,
        4.0,
        first=("storm_hup", "storm_usr", "crash", "kill", "storm_hup", "crash", "kill"),
        env={"TASKFORCE_CGROUPS": cgroups},
    )
    try:
        summary = chaos.run()
    finally:
        chaos.close()
    print(format_summary(summary))
    assert summary["findings"] == {"duplicates": 0, "survivors": 0, "zombies": 0}
    assert summary["taskforce"]["sigkills"] >= 2
    assert summary["taskforce"]["resets_observed"] >= 2
    assert summary["taskforce"]["usr_sent"] >= 1


def test_a_thirty_day_time_limit_does_not_kill_the_daemon(daemon: Daemon) -> None:
    m = daemon.marker
    command = daemon.command
    # Without the harness's --expires 300, which would be the nearer deadline.
    daemon.command = lambda *extra: [a for a in command(*extra) if a not in ("--expires", "300")]  # type: ignore[method-assign]
    daemon.write_config(
        {
            "tasks": {
                "a": {
                    "commands": {"start": [sys.executable, "-c", SLEEP, m, "a"]},
                    "time_limit": 2592000,
                }
            }
        }
    )
    daemon.start()
    daemon.wait_log("a[0] started as pid")
    time.sleep(1.0)
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()[-1500:]
    assert len(daemon.pids("a")) == 1


def test_a_reset_with_a_broken_config_on_disk_keeps_tasks_running(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        {"tasks": {"a": {"commands": {"start": [sys.executable, "-c", SLEEP, m, "a"]}}}}
    )
    daemon.start()
    daemon.wait_pids("a", 1)
    daemon.write_config('{"tasks": {"a": {"commands": {"start": ["x"]}, "control": off}}}')
    daemon.wait_log("nothing was changed")
    os.kill(daemon.pid, signal.SIGHUP)
    time.sleep(3.0)
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()[-800:]
    daemon.wait_pids("a", 1)


def test_reloads_do_not_grow_the_daemon(daemon: Daemon) -> None:
    m = daemon.marker
    folder = Path(tempfile.mkdtemp(prefix="tfgrow", dir="/tmp"))
    sock = str(folder / "s.taskforce")
    tasks = {
        f"t{i:02d}": {"commands": {"start": ["sh", "-c", SH_SLEEP, m, f"t{i:02d}"]}, "count": 2}
        for i in range(40)
    }

    def config(step: int) -> dict[str, Any]:
        # Only a setting changes: no process is restarted, every spec is rebuilt.
        return {"settings": {"stable_after": 1 + step / 1000}, "tasks": tasks}

    try:
        daemon.write_config(config(0))
        daemon.start("-w", sock, "-A")
        wait_for(
            lambda: os.path.exists(sock) and call(sock, "/status/version")[0] == 200, what="socket"
        )
        wait_for(lambda: len(daemon.processes()) == 80, timeout=30, what="80 processes")
        for step in range(1, 11):  # warm up
            daemon.write_config(config(step))
            assert call(sock, "/manage/reload")[0] == 202
        before = rss_kib(daemon.pid)
        for step in range(11, 131):
            daemon.write_config(config(step))
            assert call(sock, "/manage/reload")[0] == 202
        grown = rss_kib(daemon.pid) - before
        assert len(daemon.processes()) == 80
        assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 120 reloads"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
