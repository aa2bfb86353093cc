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
from daemon_harness import IGNORE_TERM, SLEEP, Daemon, proc_table, wait_for

import taskforce
from taskforce.tfctl import UnixConnection

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="the chaos test reads /proc")

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
WATCHED = ("w1", "w2", "w3")
ROLE_NAMES = ("web", "db", "cache")
EXTRA_NAMES = ("x0", "x1")


# =====================================================================
# The model: what the config says, hence what must run.


@dataclass
class TaskDef:
    name: str
    kind: str  # py, ign, sh, hup
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
    ]
    return Plan({t.name: t for t in tasks}, ("web",))


def argv(task: TaskDef, marker: str, root: Path) -> list[str]:
    tail = [marker, task.name, f"v{task.variant}"]
    if task.kind == "py":
        return [sys.executable, "-c", SLEEP, *tail]
    if task.kind == "ign":
        return [sys.executable, "-c", IGNORE_TERM, *tail]
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
                out["commands"]["poke"] = ["sh", "-c", "exit 0"]
            out["events"] = [{"type": "file_change", "path": str(root / path), **action}]
        tasks[task.name] = out
    settings = {
        "stable_after": 0.2,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "stop_timeout": 2,
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


def task_of(cmdline: str, marker: str) -> str | None:
    words = cmdline.split()
    if marker in words:
        at = words.index(marker)
        if at + 1 < len(words):
            return words[at + 1]
    return None


# =====================================================================
# The engine


class ChaosFailure(AssertionError):
    pass


class Chaos:
    """Random faults and changes against one daemon, then the checks."""

    def __init__(
        self, daemon: Daemon, seed: int, seconds: float, log: Callable[[str], None] = print
    ):
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
        env = {"PYTHONPATH": str(self.folder / "pkg"), MARK_VAR: self.marker}
        self.daemon.start("-w", self.sock, "-A", "--expires", str(margin), env=env)
        wait_for(lambda: self.answers(), timeout=20, what="the control socket")

    def answers(self) -> bool:
        try:
            return call(self.sock, "/status/version")[0] == 200
        except OSError:
            return False

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------ actions

    def marked(self) -> dict[int, str]:
        found = self.daemon.processes()
        self.seen.update(found)
        return found

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
                        extra, rng.choice(["py", "sh"]), count=rng.choice([1, 2])
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
        ]
        choices = [a for a, _ in actions]
        weights = [w for _, w in actions]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rng.choices(choices, weights)[0]()
            self.stats["actions"] += 1
            if self.daemon.proc is not None and self.daemon.proc.poll() is not None:
                tail = "\n".join(self.daemon.log_text().splitlines()[-30:])
                self.fail(f"the daemon exited with {self.daemon.proc.returncode}:\n{tail}")
            time.sleep(rng.choice([0, 0.005, 0.02, 0.05, 0.1]))
            if rng.random() < 0.1:
                self.marked()

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
            if shown is not None and shown.get("in_scope") != plan.in_scope(plan.tasks[name]):
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
                name = task_of(cmdline, self.marker) or "?"
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
            if want and (states != ["running"] or len(shown["processes"]) != want):
                out.append(
                    f"{name}: slots {states} x{len(shown['processes'])}, want {want} running"
                )
            if pids != have:
                out.append(f"{name}: daemon reports pids {sorted(pids)}, running {sorted(have)}")
            if shown.get("overrides"):
                out.append(f"{name}: overrides left {shown['overrides']}")
        under = descendants(table, daemon.pid)
        for pid in sorted(under):
            _, pgid, state, cmdline = table[pid]
            if state == "Z":
                out.append(f"zombie child {pid} ({cmdline or '?'})")
            elif pgid not in reported:
                out.append(f"{pid} ({cmdline!r}) in group {pgid}, of no task the daemon reports")
        # Every process the daemon ever started, and all they started, carry
        # the run's mark in their environment: wherever they went, none may
        # be left outside the groups the daemon reports now.
        mark = f"{MARK_VAR}={self.marker}".encode()
        for pid, (_, pgid, state, cmdline) in sorted(table.items()):
            if state == "Z" or pid == daemon.pid or pgid in reported or pid in under:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    environ = handle.read().split(b"\0")
            except OSError:
                continue
            if mark in environ:
                out.append(f"{pid} ({cmdline!r}, group {pgid}) survives from an earlier run")
        return out

    def settle(self, plan: Plan, what: str) -> None:
        last: list[str] = []

        def settled() -> bool:
            nonlocal last
            last = self.problems(plan)
            return not last

        started = time.monotonic()
        try:
            wait_for(settled, timeout=SETTLE, what=what)
        except AssertionError:
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
            self.fail(f"{what}: settled, then changed again: {again}")
        self.stats[f"settle_ms_{what}"] = round((time.monotonic() - started) * 1000)

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
        self.run_for(max(0.0, self.seconds - warmup))
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
        self.summary = {
            "seed": self.seed,
            "seconds": round(time.monotonic() - started, 1),
            "actions": dict(sorted(self.stats.items())),
            "answers": dict(sorted(self.codes.items())),
            "processes_seen": len(self.seen),
            "rss_kib": {"early": early[0], "late": late[0], "growth": grew_rss},
            "fds": {"early": early[1], "late": late[1]},
        }
        failures = []
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
