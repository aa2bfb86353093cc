"""How every cost grows with the number of tasks, taskforce beside supervisord and circus.

    python bench/scale.py --peers-bin /tmp/scale-peers/bin --plot

For each size of ``--sizes`` (100, 1,000, 5,000, 10,000) and each supervisor
of ``--supervisors``, one daemon runs that many ``sleep`` tasks (each with a
distinct argument, so a process's argv names its task) and is measured:

- **start**: launch -> every task running (wall time), and the daemon's CPU
  time until then;
- **memory**: the daemon's PSS (and RSS, USS) once settled, its tasks apart;
- **idle**: the daemon's wake-ups (context switches) and CPU over ``--idle`` s,
  once it has been quiet (under 1 % CPU) for a whole second;
- **restart**: a task that has run ``--stable`` s is SIGKILLed, the time
  until its replacement runs, ``--kills`` times;
- **status**: the status of every task asked over the daemon's own control
  channel, in-process, with no interpreter start in the figure: taskforce
  ``GET /status/tasks`` computed afresh; supervisord's XML-RPC
  ``getAllProcessInfo``; circus's ``status`` command (through its own
  client, run by the peers' Python);
- **reload**: one task's command changed in the config and applied the
  supervisor's way: the time until the new process runs, and the collateral
  (untouched tasks restarted);
- **replay** (taskforce only): ``taskforce replay`` of the run's event log
  (``--record``), steps per second.

``--only restart`` (a comma-separated choice of the measures above) keeps the
start and measures only those; e.g. start and restart latency alone:
``python bench/scale.py --supervisors taskforce --sizes 100,10000 --only restart``.

The scenarios themselves (config writers, process detection, restart,
reload, idle, memory) are those of ``bench/peers/run.py``, imported; the
``/status/tasks`` timing is done as ``bench/bench_status.py`` does it, on a new
connection each time (a keep-alive connection idle over 3 s is closed,
and at 5,000 tasks the request that feeds the core first can take that).

Limits: the soft RLIMIT_NOFILE is raised to the hard one, and, as root, the
hard one to what the largest size needs (inherited by every daemon). As
root and only when the size needs it, ``kernel.pid_max`` and
``kernel.threads-max`` are raised for the run and put back at the end. A
size whose tasks would not fit in the available memory (MemAvailable) is
skipped with a message. A supervisor that does not start a size within
``--start-timeout`` (plus ``--start-per-task`` per task), crashes or stops
answering is recorded as "did not survive (why)" and is not run at larger
sizes.

Every wait has a deadline and the whole run a budget (``--budget``); every
process carries the run's marker in its environment and whatever is left
is killed on every way out (``bench/peers/run.py``'s clean-up). Linux only.
``--memory-profile`` runs ``bench/scale_memory.py`` instead (tracemalloc).
``--only memory --sizes 100,1000,10000`` gives the memory curve in minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import scale_report  # noqa: E402

from taskforce.tfclient import UnixConnection  # noqa: E402


def _load_peers() -> Any:
    spec = importlib.util.spec_from_file_location("peers_run", HERE / "peers" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers_run"] = module
    spec.loader.exec_module(module)
    return module


peers = _load_peers()

SIZES = (100, 1000, 5000, 10000)
SUPERVISORS = ("taskforce", "supervisord", "circus")
#: What one sleeper and its share of a supervisor may take, for the memory check.
MIB_PER_TASK = 0.6
HEADROOM_MIB = 1024

CIRCUS_STATUS = r"""
import json, sys, time
from circus.client import CircusClient
client = CircusClient(endpoint=sys.argv[1], timeout=float(sys.argv[3]))
times = []
end = time.perf_counter() + float(sys.argv[4])
for _ in range(int(sys.argv[2])):
    began = time.perf_counter()
    answer = client.call({"command": "status", "properties": {}})
    times.append(time.perf_counter() - began)
    if time.perf_counter() > end:
        break
    if answer.get("status") != "ok":
        raise SystemExit(f"circus status: {answer}")
print(json.dumps({"times": times, "tasks": len(answer.get("statuses", {}))}))
"""


class ScaleTaskforce(peers.Taskforce):
    """taskforce with a control socket and its event log recorded."""

    record: Path | None = None

    def command(self) -> list[str]:
        extra = ["-w", str(self.folder / "s.tf"), "-A", "--expires", "7200"]
        if self.record is not None:
            extra += ["--record", str(self.record)]
        return [*super().command(), *extra]


KINDS: dict[str, Any] = {**peers.KINDS, "taskforce": ScaleTaskforce}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ limits


def mem_available_mib() -> float:
    for line in (common.read_bytes("/proc/meminfo") or b"").decode().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.inf


def raise_nofile(largest: int) -> str:
    """Soft RLIMIT_NOFILE up to the hard one; as root the hard one up to what
    ``largest`` tasks may need (a few descriptors per task per supervisor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8 * largest + 4096
    if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        nr_open = int((common.read_bytes("/proc/sys/fs/nr_open") or b"1048576").strip())
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, nr_open),) * 2)
            return f"RLIMIT_NOFILE {soft}/{hard} -> {min(want, nr_open)} (soft and hard)"
        except (ValueError, OSError) as exc:
            # A container may deny CAP_SYS_RESOURCE even to root.
            note = f"; the hard limit could not be raised to {want} ({exc})"
    else:
        note = ""
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return f"RLIMIT_NOFILE {soft}/{hard} -> {hard}/{hard}{note}"


@contextlib.contextmanager
def kernel_limits(needed: int, notes: list[str]) -> Iterator[list[str]]:
    """Raise kernel.pid_max and kernel.threads-max (root only, only when
    ``needed`` more processes would not fit); put them back afterwards.
    Yields a list of problems (a limit too low that could not be raised)."""
    changed: list[tuple[Path, str]] = []
    problems: list[str] = []
    running = sum(1 for entry in os.listdir("/proc") if entry.isdigit())
    for name in ("pid_max", "threads-max"):
        path = Path("/proc/sys/kernel") / name
        try:
            value = int(path.read_text())
        except (OSError, ValueError):
            continue
        want = running + needed + 4096
        if value >= want:
            continue
        if os.geteuid() != 0:
            problems.append(f"kernel.{name} is {value}, {want} needed (raise it as root)")
            continue
        try:
            path.write_text(str(want))
        except OSError as exc:
            problems.append(f"kernel.{name} {value} could not be raised: {exc}")
            continue
        changed.append((path, str(value)))
        notes.append(f"kernel.{name} raised {value} -> {want} for the run, restored after")
    try:
        yield problems
    finally:
        for path, value in changed:
            with contextlib.suppress(OSError):
                path.write_text(value)


# ------------------------------------------------------------------ status


def supervisord_status(sup: Any, requests: int, spend: float) -> dict[str, Any]:
    """XML-RPC ``supervisor.getAllProcessInfo`` over supervisord's socket."""
    body = xmlrpc.client.dumps((), "supervisor.getAllProcessInfo").encode()
    conn = UnixConnection(str(sup.folder / "supervisor.sock"), timeout=120)
    times = []
    count = 0
    try:
        end = time.perf_counter() + spend
        for _ in range(requests):
            began = time.perf_counter()
            conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
            data = conn.getresponse().read()
            times.append(time.perf_counter() - began)
            if time.perf_counter() > end:
                break
        count = len(xmlrpc.client.loads(data)[0][0])
    finally:
        conn.close()
    return {"computed": common.summary_ms(times), "tasks": count}


def circus_status(sup: Any, requests: int, timeout: float, spend: float) -> dict[str, Any]:
    python = peers.Circus.bin / "python"
    done = subprocess.run(
        [str(python), "-c", CIRCUS_STATUS, sup.endpoint, str(requests), str(timeout), str(spend)],
        capture_output=True,
        text=True,
        timeout=timeout * (requests + 2),
        env=sup.env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"circus status failed: {done.stderr.strip()[-500:]}")
    answer = json.loads(done.stdout)
    return {"computed": common.summary_ms(answer["times"]), "tasks": answer["tasks"]}


def taskforce_status(sock: str, requests: int, timeout: float, spend: float) -> dict[str, Any]:
    """``GET /status/tasks`` computed afresh: an empty control request feeds
    the core before each (the daemon keeps an answer until then). A new
    connection each, opened before the clock starts: an idle keep-alive
    connection is closed after 3 s, less than a large fleet's poke takes."""
    times = []
    size = 0
    end = time.perf_counter() + spend
    for _ in range(requests):
        if times and time.perf_counter() > end:
            break
        poke = UnixConnection(sock, timeout=timeout)
        poke.request("POST", "/manage/control")
        poke.getresponse().read()
        poke.close()
        conn = UnixConnection(sock, timeout=timeout)
        conn.connect()
        began = time.perf_counter()
        conn.request("GET", "/status/tasks")
        answer = conn.getresponse()
        body = answer.read()
        times.append(time.perf_counter() - began)
        conn.close()
        if answer.status != 200:
            raise RuntimeError(f"/status/tasks answered {answer.status}")
        size = len(body)
    return {"computed": common.summary_ms(times), "bytes": size}


def measure_status(daemon: Any, requests: int, timeout: float, spend: float) -> dict[str, Any]:
    """The status figures, or ``status_error``: a failed status request is
    reported, and the other figures of the size are still measured. At
    most ``requests``, and no new one after ``spend`` seconds."""
    name = daemon.sup.name
    try:
        if name == "taskforce":
            sock = str(daemon.sup.folder / "s.tf")
            # taskforce opens its control socket once the start-up burst
            # is handled, which at 10,000 tasks comes after every task runs.
            deadline = time.perf_counter() + timeout
            while not os.path.exists(sock) and time.perf_counter() < deadline:
                daemon.alive()
                time.sleep(0.1)
            figures = taskforce_status(sock, requests, timeout, spend)
        elif name == "supervisord":
            figures = supervisord_status(daemon.sup, requests, spend)
        else:
            figures = circus_status(daemon.sup, requests, timeout, spend)
    except (OSError, http.client.HTTPException, RuntimeError, subprocess.SubprocessError) as exc:
        log(f"  {name}: status failed: {exc!r}")
        return {"status_error": f"{exc!r}"[:300]}
    return {
        "status_median_ms": figures["computed"]["median_ms"],
        "status_p90_ms": figures["computed"]["p90_ms"],
        "status_requests": float(figures["computed"]["n"]),
        # How much the answer held: tasks listed (peers), bytes (taskforce).
        "status_answer": float(figures.get("tasks", figures.get("bytes", 0))),
    }


# ------------------------------------------------------------------ replay


REPLAY = r"""
import sys, time, io
from taskforce.tools import replay
out = io.StringIO()
began = time.perf_counter()
rc = replay(sys.argv[1], out=out, jobs=1)
print(time.perf_counter() - began, rc, out.getvalue().strip(), sep="\n")
"""


def measure_replay(path: Path, env: dict[str, str], timeout: float) -> dict[str, float]:
    """One process replays the whole log (imports apart)."""
    done = subprocess.run(
        [sys.executable, "-c", REPLAY, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 3 or lines[1] != "0":
        raise RuntimeError(f"replay failed: {done.stdout[-800:]} {done.stderr[-800:]}")
    seconds = float(lines[0])
    steps = int(lines[2].split(": ", 1)[1].split()[0])
    return {
        "replay_s": seconds,
        "replay_steps": float(steps),
        "replay_steps_per_s": steps / seconds,
        "replay_log_mib": path.stat().st_size / 2**20,
    }


# ------------------------------------------------------------------ one size


def settle_quiet(daemon: Any, limit: float) -> float:
    """Wait until the daemon used under 1 % of a CPU for a whole second
    (at 10,000 tasks it is still busy with the start-up's tail well after
    every task runs); seconds since launch. Bounded by ``limit``."""
    end = time.perf_counter() + limit
    before = common.cpu_seconds(daemon.pid)
    while time.perf_counter() < end:
        time.sleep(1.0)
        now = common.cpu_seconds(daemon.pid)
        if now - before < 0.01:
            break
        before = now
    return time.perf_counter() - daemon.started_at


def measure_reloads(daemon: Any, options: argparse.Namespace) -> dict[str, Any]:
    """``--reloads`` one-task changes in a row: the median time to apply one,
    every time, and the collateral restarts of them all."""
    runs = []
    for _ in range(options.reloads):
        runs.append(peers.measure_reload(daemon, options.settle, options.deadline))
    times = [run["reload_apply_ms"] for run in runs]
    out = dict(runs[-1])
    out["reload_apply_ms"] = sorted(times)[len(times) // 2]
    out["reload_apply_all_ms"] = [round(t, 1) for t in times]
    out["reload_untouched_restarted"] = sum(run["reload_untouched_restarted"] for run in runs)
    return out


#: What ``--only`` can choose, besides the start (always timed).
MEASURES = ("memory", "idle", "status", "restart", "reload", "replay")


def run_size(
    name: str, size: int, options: argparse.Namespace, marker: str, base: int, folder: Path
) -> dict[str, Any]:
    """Every figure of one supervisor at one size; RuntimeError/TimeoutError if it fails."""
    kind = KINDS[name]
    tasks = peers.make_tasks(size, base)
    record = folder / f"events-{size}.jsonl"
    # A recorded run costs the daemon some CPU: only when its replay is measured.
    ScaleTaskforce.record = record if name == "taskforce" and "replay" in options.only else None
    start_limit = options.start_timeout + options.start_per_task * size
    # Poll the children list less often as it grows: the watcher must not
    # take the CPU the daemon needs to start its tasks.
    pause = min(0.1, 0.002 * max(1.0, size / 100))
    out: dict[str, Any] = {}
    with peers.running_daemon(kind, tasks, options, marker) as daemon:
        try:
            daemon.wait_all(daemon.started_at + start_limit, pause)
        except TimeoutError as exc:
            raise TimeoutError(f"not all running within {start_limit:.0f} s ({exc})") from None
        out["start_s"] = time.perf_counter() - daemon.started_at
        out["start_cpu_s"] = common.cpu_seconds(daemon.pid)
        log(f"  {name} @ {size}: all running after {out['start_s']:.2f} s")
        time.sleep(options.settle + size / 2000)
        out["settled_after_s"] = settle_quiet(daemon, options.deadline)
        if "memory" in options.only:
            out.update(peers.measure_memory(daemon))
            log(f"  {name} @ {size}: PSS {out['pss_mib']:.1f} MiB")
        if "idle" in options.only:
            out.update(peers.measure_idle(daemon, options.idle))
            log(f"  {name} @ {size}: {out['idle_switches']:.0f} idle wake-ups")
        if "status" in options.only:
            out.update(
                measure_status(
                    daemon, options.status_requests, options.deadline, options.status_time
                )
            )
        if "restart" in options.only:
            # The kernel's exec events where this host gives them (root):
            # polling /proc for the replacement costs more with every child.
            events = common.ProcEvents.open()
            try:
                out.update(
                    peers.measure_restart(
                        daemon,
                        options.kills,
                        options.stable,
                        options.deadline,
                        options.gap,
                        options.seed,
                        events,
                    )
                )
            finally:
                if events is not None:
                    events.close()
            log(
                f"  {name} @ {size}: restart median {out['restart_median_ms']:.1f} ms"
                f" ({out['restart_method']})"
            )
        if "reload" in options.only:
            out.update(measure_reloads(daemon, options))
            log(
                f"  {name} @ {size}: one-task change {out['reload_apply_ms']:.0f} ms "
                f"(median of {options.reloads}: {out['reload_apply_all_ms']}), "
                f"{out['reload_untouched_restarted']:.0f} others restarted"
            )
        daemon.alive()
    if name == "taskforce" and record.exists() and "replay" in options.only:
        out.update(measure_replay(record, daemon.sup.env, options.deadline * 5))
        log(f"  taskforce @ {size}: replay {out['replay_steps_per_s']:.0f} steps/s")
        record.unlink()
    return out


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_bin = Path(sys.executable).parent
    for candidate in ("/tmp/scale-peers/bin", "/tmp/peers/bin"):
        if not (default_bin / "supervisord").exists() and Path(candidate).is_dir():
            default_bin = Path(candidate)
    parser.add_argument(
        "--peers-bin",
        type=Path,
        default=default_bin,
        help=f"folder of supervisord, supervisorctl, circusd, circusctl (default {default_bin})",
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of tasks")
    parser.add_argument(
        "--supervisors", default=",".join(SUPERVISORS), help="some of " + ",".join(SUPERVISORS)
    )
    parser.add_argument(
        "--only",
        default=",".join(MEASURES),
        help="what to measure after the start (always timed): some of " + ",".join(MEASURES),
    )
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per size")
    parser.add_argument("--stable", type=float, default=2.0, help="a victim's age, seconds")
    parser.add_argument("--gap", type=float, default=3.0, help="random pause between kills")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument("--settle", type=float, default=3.0, help="plus 0.5 s per 1,000 tasks")
    parser.add_argument("--status-requests", type=int, default=10)
    parser.add_argument(
        "--status-time", type=float, default=20.0, help="no new status request after this (s)"
    )
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument(
        "--start-per-task",
        type=float,
        default=0.05,
        help="seconds per task added to --start-timeout: the bound to start a size",
    )
    parser.add_argument("--deadline", type=float, default=120.0, help="any other single wait")
    parser.add_argument("--budget", type=float, default=7200.0, help="the whole run, seconds")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--plot", action="store_true", help="write docs/scale-*.png")
    parser.add_argument("--plot-dir", type=Path, default=HERE.parent / "docs")
    parser.add_argument(
        "--from-json",
        type=Path,
        action="append",
        help="only print/plot saved --json files (repeat it: runs of different sizes are merged)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument(
        "--reloads", type=int, default=1, help="one-task changes per size (the median is given)"
    )
    parser.add_argument(
        "--task-output",
        choices=("log", "discard"),
        help="taskforce's settings.output (discard: no pipe per task, for 10,000 tasks "
        "under a 20,000 descriptor limit)",
    )
    parser.add_argument(
        "--memory-profile",
        action="store_true",
        help="where taskforce's per-task memory goes (bench/scale_memory.py), then exit",
    )
    options = parser.parse_args(argv)
    options.sizes = sorted({int(s) for s in options.sizes.split(",") if s})
    options.supervisors = [s for s in options.supervisors.split(",") if s]
    options.only = {m for m in options.only.split(",") if m and m != "start"}
    if options.only - set(MEASURES):
        parser.error(f"unknown measure {sorted(options.only - set(MEASURES))[0]!r} in --only")
    for name in options.supervisors:
        if name not in SUPERVISORS:
            parser.error(f"unknown supervisor {name!r}")
    sleep = shutil.which("sleep")
    if sleep is None:
        parser.error("no sleep program on PATH")
    options.sleep = os.path.realpath(sleep)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if options.memory_profile:
        import scale_memory

        return scale_memory.main([])
    if options.from_json:
        payload = scale_report.merge([json.loads(path.read_text()) for path in options.from_json])
        if options.json:
            options.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        scale_report.output(payload, options)
        return 0
    if not os.path.exists("/proc/self/smaps_rollup"):
        log("scale.py needs Linux /proc")
        return 2
    problems = peers.check_available(
        argparse.Namespace(
            supervisors=options.supervisors,
            peers_bin=options.peers_bin,
            taskforce_python=sys.executable,
        )
    )
    if problems:
        for problem in problems:
            log(f"scale.py: {problem}")
        return 2
    peers.Supervisord.bin = peers.Circus.bin = options.peers_bin
    ScaleTaskforce.snapshot, ScaleTaskforce.python = peers.make_snapshot(sys.executable)
    ScaleTaskforce.output = options.task_output
    notes = [raise_nofile(max(options.sizes))]
    log("limits: " + notes[0])

    def interrupted(signum: int, _frame: object) -> None:
        raise peers.Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, interrupted)
    signal.setitimer(signal.ITIMER_REAL, options.budget)
    marker = uuid.uuid4().hex
    info = peers.versions(argparse.Namespace(peers_bin=options.peers_bin))
    folder = Path(tempfile.mkdtemp(prefix="tfscale-"))
    results: dict[str, dict[str, Any]] = {name: {} for name in options.supervisors}
    stopped: dict[str, str] = {}
    status = 0
    try:
        for size in options.sizes:
            avail = mem_available_mib()
            need = size * MIB_PER_TASK + HEADROOM_MIB
            if avail < need:
                why = f"skipped: {avail:.0f} MiB available, about {need:.0f} MiB needed"
                log(f"{size} tasks {why}")
                notes.append(f"{size} tasks {why}")
                continue
            with kernel_limits(size, notes) as limit_problems:
                if limit_problems:
                    notes.append(f"{size} tasks skipped: " + "; ".join(limit_problems))
                    log(notes[-1])
                    continue
                for name in options.supervisors:
                    if name in stopped:
                        continue
                    log(f"{name} with {size:,} tasks (load {os.getloadavg()[0]:.1f}) ...")
                    base = 1_000_000 + size * 2
                    began = time.perf_counter()
                    try:
                        figures = run_size(name, size, options, marker, base, folder)
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        why = str(exc).strip().splitlines()[0][:300]
                        stopped[name] = f"did not survive ({why})"
                        results[name][str(size)] = stopped[name]
                        log(f"  {name} @ {size}: {stopped[name]}")
                        continue
                    figures["seconds"] = time.perf_counter() - began
                    figures["loadavg"] = os.getloadavg()[0]
                    results[name][str(size)] = figures
    except (peers.Interrupted, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); everything started was stopped")
        notes.append(f"run cut short: {exc or 'Ctrl-C'}")
        status = 130
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        shutil.rmtree(ScaleTaskforce.snapshot, ignore_errors=True)
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
        for pid in peers.marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    info["loadavg_after"] = (common.read_bytes("/proc/loadavg") or b"").decode().strip()
    payload = {
        "machine": info,
        "machine_line": (
            f"{info.get('cpus')} CPUs ({info.get('cpu', '?')}), Linux {info['kernel']}, "
            f"Python {info['python']}; taskforce {info.get('taskforce', '?')}, supervisor "
            f"{info.get('supervisord', '?')}, circus {info.get('circus', '?')}; load average "
            f"before {info['loadavg_before'][:14]}, after {info['loadavg_after'][:14]}"
        ),
        "sizes": options.sizes,
        "notes": notes,
        "results": results,
        "slopes": scale_report.analyse(results),
        "options": {k: v for k, v in vars(options).items() if isinstance(v, (int, float, list))},
    }
    if options.json:
        options.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    scale_report.output(payload, options)
    return status


if __name__ == "__main__":
    sys.exit(main())
