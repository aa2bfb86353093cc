"""taskforce side by side with supervisord and circus, on this machine.

    python bench/peers/run.py --peers-bin /tmp/peers/bin

Each supervisor runs the same scenarios, one after the other, each in a
fresh temporary folder with a config generated for it:

- **restart**: with ``--tasks`` (100) tasks running, a task whose process
  has run for over ``--stable`` seconds (2) is SIGKILLed; the time until its
  replacement runs (a new child with the task's argv) is measured,
  ``--kills`` (5) times on different tasks, with a random pause of up to
  ``--gap`` seconds (5) between kills so that they land at every phase of a
  supervisor's periodic check;
- **idle**: with ``--tasks`` tasks running and settled, the daemon's CPU time
  and context switches (wake-ups) over ``--idle`` seconds (10);
- **memory**: the daemon's own RSS, PSS and USS (private memory) with
  ``--tasks`` tasks running (its tasks are not counted);
- **start**: time from launching the daemon until all ``--start-tasks``
  (200) processes run, and the CPU time the daemon used until then;
- **reload**: with those ``--start-tasks`` running and stable, one task's
  command is changed in the config and the change applied the supervisor's
  way (taskforce: just save the file, it watches it; supervisord:
  ``supervisorctl update``; circus: ``circusctl reloadconfig``); measured:
  time until the changed task's new process runs, and how many of the
  untouched tasks were restarted (``--settle`` seconds later).

Every task is ``sleep N`` with a distinct N, so a process's argv says which
task it belongs to; each supervisor runs with its own defaults otherwise.
Processes are found as children of the daemon (``/proc/PID/task/*/children``),
polled lightly (a new child's argv is read once), so that watching does not
compete with the daemon for the CPU. taskforce runs from a copy of its
package taken at the start, because it resets itself when its own code
changes (``--no-snapshot`` runs the installed one); a round that saw a
reset anyway is run again.

Bounded and clean: every wait has a deadline, the whole run has a time
budget (``--budget``), and whatever happens (an error, Ctrl-C, SIGTERM) each
daemon is stopped, then every process still carrying this run's marker in
its environment, or found earlier among the daemon's descendants, is
killed. Linux only (``/proc``).

The peers are not taskforce's dependencies: install them into a separate
virtual environment (``python -m venv /tmp/peers && /tmp/peers/bin/pip
install supervisor circus``) and pass its bin folder, or install the
``bench`` extra next to taskforce (then they are found beside this Python).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402

# The /proc readers are the ones every benchmark here uses.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (  # noqa: E402
    ProcEvents,
    context_switches,
    cpu_seconds,
    memory_kib,
    read_bytes,
    stat_fields,
    threads,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: How often a wait for a new process looks: often enough for millisecond
#: figures, seldom enough not to compete with the daemon for the CPU.
POLL = 0.0005
MARKER_VAR = "TFPEERS_RUN"
SUPERVISORS = ("taskforce", "supervisord", "circus")
SCENARIOS = ("restart", "idle", "memory", "start", "reload")


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or the time budget: unwind and clean up."""


class Void(Exception):
    """Something outside the benchmark disturbed a round; it is run again."""


# ---------------------------------------------------------------- /proc


def start_ticks(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def uptime_ticks() -> int:
    data = read_bytes("/proc/uptime") or b"0"
    return int(float(data.split()[0]) * CLK_TCK)


def age(pid: int) -> float:
    """Seconds since ``pid`` started (0 when it is gone)."""
    ticks = start_ticks(pid)
    return 0.0 if ticks is None else max(0.0, (uptime_ticks() - ticks) / CLK_TCK)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in threads(pid) or [pid]:
        data = read_bytes(f"/proc/{pid}/task/{tid}/children")
        if data:
            found.extend(int(child) for child in data.split())
    return found


def process_table() -> dict[int, int]:
    """pid -> ppid of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields:
                table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int) -> set[int]:
    table = process_table()
    below: dict[int, list[int]] = {}
    for child, parent in table.items():
        below.setdefault(parent, []).append(child)
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in below.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def marked(marker: str) -> set[int]:
    """Processes whose environment carries ``MARKER_VAR=marker``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            env = read_bytes(f"/proc/{entry}/environ")
            if env and needle in env.split(b"\0"):
                found.add(int(entry))
    return found


# ---------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    name: str
    seconds: int  # the sleep's argument; unique per task in a run

    def argv(self, sleep: str) -> list[str]:
        return [sleep, str(self.seconds)]


def make_tasks(count: int, base: int) -> list[Task]:
    return [Task(f"t{index:03d}", base + index) for index in range(count)]


def _argv(pid: int) -> list[bytes]:
    data = read_bytes(f"/proc/{pid}/cmdline")
    return data.split(b"\0") if data else []


def task_of(pid: int, by_seconds: dict[int, Task]) -> Task | None:
    """The task whose sleep ``pid`` runs (None: not yet exec'd, or not ours)."""
    argv = _argv(pid)
    if len(argv) < 2 or not argv[0].endswith(b"sleep") or not argv[1].isdigit():
        return None
    return by_seconds.get(int(argv[1]))


# ---------------------------------------------------------------- supervisors


class Supervisor:
    """How to configure, start and reload one supervisor."""

    name = ""

    def __init__(self, folder: Path, sleep: str, env: dict[str, str]) -> None:
        self.folder = folder
        self.sleep = sleep
        self.env = env
        self.tool_done = 0.0

    def write_config(self, tasks: Sequence[Task]) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def reload(self, tasks: Sequence[Task]) -> subprocess.Popen[str] | None:
        """Apply a changed task list: write it, start the reload command (if any)."""
        raise NotImplementedError

    @staticmethod
    def replace(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def start_tool(self, argv: list[str]) -> subprocess.Popen[str]:
        """Run ``argv``; ``tool_done`` becomes the time it exited."""
        self.tool_done = 0.0
        proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

        def note_exit() -> None:
            with _ignore(subprocess.TimeoutExpired):
                proc.wait(120)
            self.tool_done = time.perf_counter()

        threading.Thread(target=note_exit, daemon=True).start()
        return proc


class Taskforce(Supervisor):
    name = "taskforce"
    python = sys.executable
    #: A copy of the package to run instead of the installed one (see --snapshot).
    snapshot: Path | None = None

    def __init__(self, folder: Path, sleep: str, env: dict[str, str]) -> None:
        if self.snapshot is not None:
            env = {
                **env,
                "PYTHONPATH": os.pathsep.join(
                    [str(self.snapshot), *filter(None, [env.get("PYTHONPATH")])]
                ),
            }
        super().__init__(folder, sleep, env)

    @property
    def config(self) -> Path:
        return self.folder / "taskforce.conf"

    #: ``settings.output`` of the config written (None: the default, ``log``)
    output: str | None = None

    def render(self, tasks: Sequence[Task]) -> str:
        lines = [] if self.output is None else [f"settings: {{output: {self.output}}}"]
        lines.append("tasks:")
        for task in tasks:
            argv = ", ".join(json.dumps(arg) for arg in task.argv(self.sleep))
            lines.append(f"  {task.name}: {{commands: {{start: [{argv}]}}}}")
        return "\n".join(lines) + "\n"

    def write_config(self, tasks: Sequence[Task]) -> None:
        self.replace(self.config, self.render(tasks))

    def command(self) -> list[str]:
        return [self.python, "-m", "taskforce", "-e", "-f", str(self.config), "-r", "-", "-p", "-"]

    def reload(self, tasks: Sequence[Task]) -> subprocess.Popen[str] | None:
        # Nothing to run: taskforce watches its config file.
        self.write_config(tasks)
        return None


class Supervisord(Supervisor):
    name = "supervisord"
    bin = Path()

    @property
    def config(self) -> Path:
        return self.folder / "supervisord.conf"

    def write_config(self, tasks: Sequence[Task]) -> None:
        (self.folder / "childlogs").mkdir(exist_ok=True)
        lines = [
            "[supervisord]",
            "nodaemon=true",
            "logfile=%(here)s/supervisord.log",
            "pidfile=%(here)s/supervisord.pid",
            "childlogdir=%(here)s/childlogs",
            "",
            "[unix_http_server]",
            "file=%(here)s/supervisor.sock",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            "serverurl=unix://%(here)s/supervisor.sock",
            "",
        ]
        for task in tasks:
            lines += [
                f"[program:{task.name}]",
                f"command={' '.join(task.argv(self.sleep))}",
                "autorestart=true",
                "",
            ]
        self.replace(self.config, "\n".join(lines))

    def command(self) -> list[str]:
        return [str(self.bin / "supervisord"), "-n", "-c", str(self.config)]

    def reload(self, tasks: Sequence[Task]) -> subprocess.Popen[str] | None:
        self.write_config(tasks)
        return self.start_tool([str(self.bin / "supervisorctl"), "-c", str(self.config), "update"])


class Circus(Supervisor):
    name = "circus"
    bin = Path()

    @property
    def config(self) -> Path:
        return self.folder / "circus.ini"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/circus.sock"

    def write_config(self, tasks: Sequence[Task]) -> None:
        lines = [
            "[circus]",
            f"endpoint = {self.endpoint}",
            f"pubsub_endpoint = ipc://{self.folder}/pubsub.sock",
            f"stats_endpoint = ipc://{self.folder}/stats.sock",
            "statsd = False",
            "",
        ]
        for task in tasks:
            lines += [
                f"[watcher:{task.name}]",
                f"cmd = {' '.join(task.argv(self.sleep))}",
                "numprocesses = 1",
                # The run's marker must reach the tasks, for the cleanup.
                "copy_env = True",
                "",
            ]
        self.replace(self.config, "\n".join(lines))

    def command(self) -> list[str]:
        log = self.folder / "circus.log"
        return [str(self.bin / "circusd"), "--log-output", str(log), str(self.config)]

    def reload(self, tasks: Sequence[Task]) -> subprocess.Popen[str] | None:
        self.write_config(tasks)
        return self.start_tool(
            [str(self.bin / "circusctl"), "--endpoint", self.endpoint, "reloadconfig"]
        )


KINDS: dict[str, type[Supervisor]] = {
    "taskforce": Taskforce,
    "supervisord": Supervisord,
    "circus": Circus,
}


# ---------------------------------------------------------------- one daemon


@dataclass
class Daemon:
    """One supervisor process running ``tasks``, and how to find its tasks."""

    sup: Supervisor
    tasks: list[Task]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    seen: set[int] = field(default_factory=set)
    known: dict[int, Task] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.sup.write_config(self.tasks)
        with open(self.sup.folder / "daemon.log", "ab") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                self.sup.command(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.sup.folder,
                env=self.sup.env,
                start_new_session=True,
            )

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log = read_bytes(str(self.sup.folder / "daemon.log")) or b""
            tail = log.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{self.sup.name} exited ({self.proc.returncode}):\n{tail}")

    def running(self, tasks: Sequence[Task] | None = None) -> dict[str, int]:
        """task name -> pid of the daemon's children that run a task's sleep.

        A child's argv is read once it runs a task's sleep and remembered by
        pid, so that polling reads little more than the list of children:
        a benchmark that reads /proc hard slows down what it measures.
        """
        by_seconds = {task.seconds: task for task in (tasks or self.tasks)}
        out: dict[str, int] = {}
        for pid in children(self.pid):
            task = self.known.get(pid)
            if task is None or task.seconds not in by_seconds:
                task = task_of(pid, by_seconds)
                if task is None:
                    continue  # not exec'd yet, or not one of these tasks
                self.known[pid] = task
                self.seen.add(pid)
            out[task.name] = pid
        return out

    def wait_new(
        self, by_seconds: dict[int, Task], old: set[int], deadline: float, pause: float
    ) -> int:
        """The first child, not in ``old``, that runs one of ``by_seconds``."""
        while True:
            for pid in children(self.pid):
                task = None if pid in old else task_of(pid, by_seconds)
                if task is not None:
                    self.known[pid] = task
                    self.seen.add(pid)
                    return pid
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.sup.name}: no new process of {sorted(by_seconds)}")
            self.alive()
            time.sleep(pause)

    def wait_new_exec(
        self, by_seconds: dict[int, Task], old: set[int], deadline: float, events: ProcEvents
    ) -> tuple[int, int]:
        """``wait_new`` by the kernel's exec events: the first process, not
        in ``old``, to exec one of ``by_seconds``, and the kernel's
        timestamp of that exec (CLOCK_MONOTONIC, ns).  No polling of /proc,
        whose cost grows with the number of children: at 10,000 tasks a
        poll would measure itself."""
        for what, stamp, pid, _ in events.events(max(0.0, deadline - time.perf_counter())):
            if what == events.EXEC and pid not in old:
                task = task_of(pid, by_seconds)
                if task is not None:
                    self.known[pid] = task
                    self.seen.add(pid)
                    return pid, stamp
            if time.perf_counter() > deadline:
                break
        raise TimeoutError(f"{self.sup.name}: no new process of {sorted(by_seconds)}")

    def wait_all(self, deadline: float, pause: float = 0.002) -> dict[str, int]:
        """Until every task runs; returns their pids."""
        want = len(self.tasks)
        while True:
            found = self.running()
            if len(found) == want:
                return found
            self.alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.sup.name}: {len(found)} of {want} tasks running")
            time.sleep(pause)

    def check_undisturbed(self) -> None:
        """taskforce resets itself when its own code changes (someone
        editing the working tree): a round with a reset in it measured that."""
        text = (read_bytes(str(self.sup.folder / "daemon.log")) or b"").decode(errors="replace")
        if self.sup.name == "taskforce" and "INFO reset:" in text:
            line = next(line for line in text.splitlines() if "INFO reset:" in line)
            raise Void(f"taskforce reset during the round: {line.split('INFO ', 1)[1]}")

    def snapshot(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.seen |= descendants(self.pid)


@contextmanager
def running_daemon(
    kind: type[Supervisor], tasks: list[Task], options: argparse.Namespace, marker: str
) -> Iterator[Daemon]:
    folder = Path(tempfile.mkdtemp(prefix=f"tfpeers-{kind.name}-"))
    env = {**os.environ, MARKER_VAR: marker}
    env.pop("TASKFORCE_REEXEC", None)
    daemon = Daemon(kind(folder, options.sleep, env), tasks)
    try:
        daemon.start()
        yield daemon
        daemon.check_undisturbed()
    finally:
        # No interruption may cut the clean-up short.
        blocked = {signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGINT}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            leftovers = stop(daemon, marker)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if leftovers:
            print(f"  ! {kind.name}: killed {len(leftovers)} leftover process(es)", file=sys.stderr)
        if options.keep:
            print(f"  (kept {folder})", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def stop(daemon: Daemon, marker: str) -> list[int]:
    """Stop the daemon and kill anything of this run that is left; what was left."""
    proc = daemon.proc
    if proc is None:
        return []
    try:
        daemon.snapshot()
    except OSError:
        pass
    starts = {pid: start_ticks(pid) for pid in daemon.seen}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with _ignore(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    leftovers = set(marked(marker))
    leftovers |= {pid for pid, ticks in starts.items() if ticks and start_ticks(pid) == ticks}
    leftovers.discard(os.getpid())
    for pid in sorted(leftovers):
        with _ignore(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # They are init's to reap now; wait until each is dead (gone or a zombie).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in leftovers):
        time.sleep(0.01)
    return sorted(leftovers)


def _alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


@contextmanager
def _ignore(*errors: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except errors:
        pass


# ---------------------------------------------------------------- scenarios


def settle(seconds: float) -> None:
    time.sleep(seconds)


def measure_idle(daemon: Daemon, seconds: float) -> dict[str, float]:
    cpu0 = cpu_seconds(daemon.pid)
    vol0, invol0 = context_switches(daemon.pid)
    time.sleep(seconds)
    cpu1 = cpu_seconds(daemon.pid)
    vol1, invol1 = context_switches(daemon.pid)
    return {
        "idle_cpu_s": cpu1 - cpu0,
        "idle_switches": float((vol1 - vol0) + (invol1 - invol0)),
        "idle_seconds": seconds,
    }


def measure_memory(daemon: Daemon) -> dict[str, float]:
    mem = memory_kib(daemon.pid)
    return {f"{key}_mib": value / 1024 for key, value in mem.items()}


def measure_restart(
    daemon: Daemon,
    kills: int,
    stable: float,
    deadline_s: float,
    gap: float,
    seed: int,
    events: ProcEvents | None = None,
) -> dict[str, Any]:
    """Kill a stable task ``kills`` times; the time until its replacement
    has exec'd, by the kernel's process events when ``events`` is given
    (exact, and free of the cost of reading /proc), else by polling."""
    # A random pause before each kill, so that kills fall at every phase of
    # a supervisor's periodic check (supervisord's 1 s loop, circus's
    # check_delay) instead of always just after one. Seeded: reproducible.
    rng = random.Random(seed)
    latencies = []
    pids = daemon.running()
    names = sorted(pids)
    step = max(1, len(names) // max(kills, 1))
    for index in range(kills):
        name = names[(index * step + len(names) // 2) % len(names)]
        old = daemon.wait_all(time.perf_counter() + deadline_s)[name]
        # The victim must have run stably (supervisors restart those at once).
        wait = stable - age(old)
        if wait > 0:
            time.sleep(wait + 0.05)
        task = next(task for task in daemon.tasks if task.name == name)
        by_seconds = {task.seconds: task}
        before = set(children(daemon.pid))
        if events is not None:
            events.drain()
        started, killed_ns = time.perf_counter(), time.monotonic_ns()
        os.kill(old, signal.SIGKILL)
        if events is not None:
            _, exec_ns = daemon.wait_new_exec(by_seconds, before, started + deadline_s, events)
            latencies.append((exec_ns - killed_ns) / 1e9)
        else:
            daemon.wait_new(by_seconds, before, started + deadline_s, POLL)
            latencies.append(time.perf_counter() - started)
        time.sleep(0.5 + rng.uniform(0, gap))
    return {
        "restart_method": "kernel events" if events is not None else "polling /proc",
        "restart_median_ms": statistics.median(latencies) * 1000,
        "restart_max_ms": max(latencies) * 1000,
        "restart_samples_ms": [round(x * 1000, 2) for x in latencies],
    }


def measure_reload(daemon: Daemon, settle_s: float, deadline_s: float) -> dict[str, float]:
    before = daemon.running()
    changed = daemon.tasks[0]
    replacement = Task(changed.name, max(task.seconds for task in daemon.tasks) + 1000)
    new_tasks = [replacement, *daemon.tasks[1:]]
    old = set(children(daemon.pid))
    started = time.perf_counter()
    tool = daemon.sup.reload(new_tasks)
    # The reload command runs meanwhile: the new process may start before it
    # returns.
    daemon.wait_new({replacement.seconds: replacement}, old, started + deadline_s, POLL)
    applied = time.perf_counter() - started
    tool_s = 0.0
    if tool is not None:
        out, _ = tool.communicate(timeout=deadline_s)
        while not daemon.sup.tool_done:  # the thread that notes the exit
            time.sleep(0.001)
        tool_s = daemon.sup.tool_done - started
        if tool.returncode != 0:
            raise RuntimeError(f"{daemon.sup.name}: the reload command failed: {out}")
    daemon.tasks = new_tasks
    time.sleep(settle_s)
    after = daemon.running()
    untouched = [task.name for task in daemon.tasks[1:]]
    restarted = sum(1 for name in untouched if after.get(name) != before.get(name))
    old_left = before[changed.name] in children(daemon.pid)
    return {
        "reload_apply_ms": applied * 1000,
        "reload_tool_ms": tool_s * 1000,
        "reload_untouched_restarted": float(restarted),
        "reload_old_still_running": float(old_left),
    }


def run_supervisor(
    kind: type[Supervisor], options: argparse.Namespace, marker: str, base: int, round_: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    wanted = set(options.scenarios)
    if wanted & {"restart", "idle", "memory"}:
        tasks = make_tasks(options.tasks, base)
        with running_daemon(kind, tasks, options, marker) as daemon:
            daemon.wait_all(time.perf_counter() + options.deadline)
            settle(options.settle)
            if "idle" in wanted:
                log(f"  {kind.name}: idle {options.idle:g}s with {len(tasks)} tasks")
                results.update(measure_idle(daemon, options.idle))
            if "memory" in wanted:
                results.update(measure_memory(daemon))
            if "restart" in wanted:
                log(f"  {kind.name}: {options.kills} kills of tasks older than {options.stable:g}s")
                results.update(
                    measure_restart(
                        daemon,
                        options.kills,
                        options.stable,
                        options.deadline,
                        options.gap,
                        options.seed + round_,
                    )
                )
    if wanted & {"start", "reload"}:
        tasks = make_tasks(options.start_tasks, base + 1000)
        with running_daemon(kind, tasks, options, marker) as daemon:
            daemon.wait_all(time.perf_counter() + options.deadline)
            results["start_s"] = time.perf_counter() - daemon.started_at
            # CPU time depends far less than wall time on what else the
            # machine is doing.
            results["start_cpu_s"] = cpu_seconds(daemon.pid)
            log(f"  {kind.name}: {len(tasks)} tasks running after {results['start_s']:.3f}s")
            if "reload" in wanted:
                settle(max(options.stable, options.settle))
                results.update(measure_reload(daemon, options.settle, options.deadline))
    return results


# ---------------------------------------------------------------- report


ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("restart_median_ms", "restart after SIGKILL, median (ms)", lambda v: f"{v:.1f}"),
    ("restart_max_ms", "restart after SIGKILL, max (ms)", lambda v: f"{v:.1f}"),
    ("idle_cpu_s", "idle CPU over the window (s)", lambda v: f"{v:.3f}"),
    ("idle_switches", "idle context switches over the window", lambda v: f"{v:.0f}"),
    ("rss_mib", "daemon RSS (MiB)", lambda v: f"{v:.1f}"),
    ("pss_mib", "daemon PSS (MiB)", lambda v: f"{v:.1f}"),
    ("uss_mib", "daemon USS, private (MiB)", lambda v: f"{v:.1f}"),
    ("start_s", "start, until all running (s)", lambda v: f"{v:.3f}"),
    ("start_cpu_s", "  daemon CPU time until then (s)", lambda v: f"{v:.3f}"),
    ("reload_apply_ms", "reload: changed task running after (ms)", lambda v: f"{v:.0f}"),
    ("reload_tool_ms", "  of which the reload command (ms)", lambda v: f"{v:.0f}"),
    ("reload_untouched_restarted", "reload: untouched tasks restarted", lambda v: f"{v:.0f}"),
]


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return ""
    if reference == 0:
        return "—" if value == 0 else "∞"
    return f"{value / reference:.1f}×"


def table(results: dict[str, dict[str, Any]], options: argparse.Namespace) -> str:
    names = [name for name in SUPERVISORS if name in results]
    peers = [name for name in names if name != "taskforce"]
    head = ["", *names, *(f"{peer}/taskforce" for peer in peers if "taskforce" in results)]
    rows = [head]
    for key, label, fmt in ROWS:
        if not any(key in results[name] for name in names):
            continue
        label = label.replace("the window", f"{options.idle:g} s").replace(
            "all running", f"{options.start_tasks} running"
        )
        row = [label]
        for name in names:
            value = results[name].get(key)
            row.append(fmt(value) if value is not None else "")
        if "taskforce" in results:
            reference = results["taskforce"].get(key)
            row += [ratio(results[peer].get(key), reference) for peer in peers]
        rows.append(row)
    widths = [max(len(row[col]) for row in rows) for col in range(len(head))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(widths[col]) if col == 0 else cell.rjust(widths[col])
            for col, cell in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds; sample lists are joined."""
    out: dict[str, Any] = {}
    for key in sorted({key for run in runs for key in run}):
        values = [run[key] for run in runs if key in run]
        if all(isinstance(value, list) for value in values):
            out[key] = [item for value in values for item in value]
        else:
            out[key] = statistics.median(values)
    if "restart_samples_ms" in out:
        samples = out["restart_samples_ms"]
        out["restart_median_ms"] = statistics.median(samples)
        out["restart_max_ms"] = max(samples)
    out["rounds"] = len(runs)
    return out


def versions(options: argparse.Namespace) -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    with _ignore(Exception):
        import taskforce

        out["taskforce"] = taskforce.__version__
        tree = Path(taskforce.__file__).resolve().parent.parent
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(tree), "status", "--porcelain", "--", "taskforce"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            out["taskforce"] += f" (git {head.stdout.strip()}{', modified' if dirty else ''})"
    for name, argv in (
        ("supervisord", [str(options.peers_bin / "supervisord"), "--version"]),
        ("circus", [str(options.peers_bin / "circusd"), "--version"]),
    ):
        with _ignore(Exception):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            out[name] = (done.stdout or done.stderr).strip().splitlines()[-1]
    cpu = read_bytes("/proc/cpuinfo") or b""
    for line in cpu.decode(errors="replace").splitlines():
        if line.startswith("model name"):
            out["cpu"] = line.split(":", 1)[1].strip()
            break
    out["cpus"] = str(os.cpu_count())
    out["loadavg_before"] = (read_bytes("/proc/loadavg") or b"").decode().strip()
    return out


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark taskforce against supervisord and circus on this machine."
    )
    default_bin = Path(sys.executable).parent
    if not (default_bin / "supervisord").exists() and Path("/tmp/peers/bin").is_dir():
        default_bin = Path("/tmp/peers/bin")
    parser.add_argument(
        "--peers-bin",
        type=Path,
        default=default_bin,
        help="folder holding supervisord, supervisorctl, circusd and circusctl "
        f"(default: {default_bin})",
    )
    parser.add_argument(
        "--supervisors",
        default=",".join(SUPERVISORS),
        help=f"comma-separated subset of {','.join(SUPERVISORS)}",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--tasks", type=int, default=100, help="tasks for restart/idle/memory")
    parser.add_argument("--start-tasks", type=int, default=200, help="tasks for start/reload")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs in the restart scenario")
    parser.add_argument(
        "--stable", type=float, default=2.0, help="seconds a victim has run before it is killed"
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=5.0,
        help="between kills, pause 0.5 s plus a random 0..GAP s (default 5: circus checks "
        "every 5 s), so that kills fall at any phase of a periodic check",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of those pauses")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds to let a daemon settle before measuring"
    )
    parser.add_argument(
        "--deadline", type=float, default=60.0, help="the longest any single wait may take"
    )
    parser.add_argument(
        "--budget", type=float, default=900.0, help="the longest the whole run may take, seconds"
    )
    parser.add_argument(
        "--taskforce-python",
        default=sys.executable,
        help="the Python that runs taskforce (default: this one)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of everything; medians are reported"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the installed taskforce itself, not a copy taken at the start (a copy "
        "is not reset by edits to the working tree during the run)",
    )
    options = parser.parse_args(argv)
    options.supervisors = [s for s in options.supervisors.split(",") if s]
    options.scenarios = [s for s in options.scenarios.split(",") if s]
    for name in options.supervisors:
        if name not in SUPERVISORS:
            parser.error(f"unknown supervisor {name!r}")
    for name in options.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    if options.gap < 0:
        parser.error("--gap must be >= 0")
    if options.stable < 0 or options.idle <= 0 or options.kills < 1 or options.repeat < 1:
        parser.error("--stable must be >= 0, --idle > 0, --kills and --repeat >= 1")
    sleep = shutil.which("sleep")
    if sleep is None:
        parser.error("no sleep program on PATH")
    options.sleep = os.path.realpath(sleep)
    return options


def make_snapshot(python: str) -> tuple[Path, str]:
    """A copy of the taskforce package ``python`` imports, in a new folder,
    and an interpreter that runs it as if installed from its wheel
    (``common.installed_python``).

    taskforce resets itself when its own code changes; run from a copy, a
    benchmark is not disturbed by edits to the working tree.
    """
    where = subprocess.run(
        [python, "-c", "import os, taskforce; print(os.path.dirname(taskforce.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="tfpeers-snapshot-"))
    shutil.copytree(where, folder / "taskforce", ignore=shutil.ignore_patterns("__pycache__"))
    return folder, common.installed_python(folder, python)


def check_available(options: argparse.Namespace) -> list[str]:
    problems = []
    for name in options.supervisors:
        if name == "taskforce":
            done = subprocess.run(
                [options.taskforce_python, "-c", "import taskforce"], capture_output=True
            )
            if done.returncode != 0:
                problems.append(f"taskforce is not importable by {options.taskforce_python}")
        else:
            tools = (
                ("supervisord", "supervisorctl")
                if name == "supervisord"
                else ("circusd", "circusctl")
            )
            for tool in tools:
                if not (options.peers_bin / tool).exists():
                    problems.append(
                        f"{tool} not found in {options.peers_bin}: python -m venv /tmp/peers "
                        "&& /tmp/peers/bin/pip install supervisor circus, "
                        "then --peers-bin /tmp/peers/bin"
                    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if not os.path.exists("/proc/self/smaps_rollup"):
        print("this benchmark needs Linux /proc", file=sys.stderr)
        return 2
    problems = check_available(options)
    if problems:
        for problem in problems:
            print(f"run.py: {problem}", file=sys.stderr)
        return 2
    Taskforce.python = options.taskforce_python
    Supervisord.bin = Circus.bin = options.peers_bin
    if options.snapshot and "taskforce" in options.supervisors:
        Taskforce.snapshot, Taskforce.python = make_snapshot(options.taskforce_python)

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, interrupted)
    signal.setitimer(signal.ITIMER_REAL, options.budget)

    marker = uuid.uuid4().hex
    # Distinct sleep arguments per run, away from other benchmarks' ranges.
    base = 500000 + (os.getpid() % 400) * 2500
    results: dict[str, dict[str, Any]] = {}
    info = versions(options)
    log("machine: " + ", ".join(f"{key} {value}" for key, value in info.items()))
    status = 0
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        # Rounds interleave the supervisors, so that a change in the
        # machine's load during the run does not favour one of them.
        for round_ in range(options.repeat):
            for name in options.supervisors:
                log(f"{name} (round {round_ + 1} of {options.repeat}) ...")
                started = time.perf_counter()
                for attempt in range(3):
                    try:
                        runs.setdefault(name, []).append(
                            run_supervisor(KINDS[name], options, marker, base, round_)
                        )
                    except Void as exc:
                        log(f"  {name}: {exc}; " + ("again" if attempt < 2 else "giving up"))
                        continue
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        log(f"  {name} failed: {exc}")
                        status = 1
                    break
                log(f"  {name} done in {time.perf_counter() - started:.0f}s")
    except (Interrupted, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); everything started was stopped")
        status = 130
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if Taskforce.snapshot is not None:
        shutil.rmtree(Taskforce.snapshot, ignore_errors=True)
    results = {name: combine(done) for name, done in runs.items() if done}
    info["loadavg_after"] = (read_bytes("/proc/loadavg") or b"").decode().strip()
    left = marked(marker)
    if left:
        log(f"left running (killing): {sorted(left)}")
        for pid in left:
            with _ignore(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status = status or 1
    if results:
        print(
            f"{info.get('cpus')} CPUs ({info.get('cpu', '?')}), Linux {info['kernel']}, "
            f"Python {info['python']}; load average before {info['loadavg_before'][:14]}, "
            f"after {info['loadavg_after'][:14]}"
        )
        print(
            f"taskforce {info.get('taskforce', '?')}, supervisor {info.get('supervisord', '?')}, "
            f"circus {info.get('circus', '?')}"
        )
        print(table(results, options))
    if options.json:
        payload = {
            "machine": info,
            "options": {
                key: value
                for key, value in vars(options).items()
                if isinstance(value, (int, float, str, list))
            },
            "results": results,
        }
        options.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
