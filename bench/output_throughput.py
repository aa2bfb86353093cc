"""Captured output: MB/s through taskforce, its CPU per GB, and restarts meanwhile.

``--writers`` tasks write as fast as they can (1 MiB blocks of 100-byte
lines) with ``output: log`` (the default output, into taskforce's own log:
``-e``, to a file), or with ``--mode file`` ``output: {file: ...}``, rotated
at ``--max-bytes`` keeping one backup, so the disk use stays bounded
(``--timestamps``: each line stamped in the file; ``--stderr``: the writers
write to stderr too, every other block, and the file mode splits the
streams into two files).  A fleet of ``--victims`` sleepers runs
beside them.  Once the output flows, victims (each one that has run longer
than the core's ``stable_after``) are sent SIGKILL one at a time and the time
until the replacement runs is measured, while the writers keep writing.

Throughput is what the daemon wrote in the window (``wchar`` of
``/proc/DAEMON/io``: the output files, plus its few log lines), divided by the
window; its cost is the daemon's CPU time (user + system) in the window,
given as MB of lines per CPU-second and CPU-seconds per GB.  The latency is
measured as in ``restart_latency.py``: kernel process
events when available (root), else a tight poll of ``/proc``, which on a
machine with few CPUs competes with the daemon and the writers.

    python bench/output_throughput.py [--mode log|file] [--writers 1] [--victims 20] [--json]

Targets: at least 50 MB of lines per CPU-second of taskforce, and a median
kill -> replacement running under 20 ms during it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import common
import restart_latency
from common import BenchDaemon, Check, Report, check, summary_ms

TARGET_MB_PER_CPU_S = 50.0
TARGET_MEDIAN_MS = 20.0
MB = 1_000_000

WRITER = r"""
import os, sys
line = b"%s %s\n" % (sys.argv[1].encode(), b"x" * (98 - len(sys.argv[1])))
block = line * (1048576 // len(line))
fds = (1, 2) if sys.argv[2] == "both" else (1,)
while True:
    for fd in fds:
        os.write(fd, block)
"""


def read_io(pid: int) -> dict[str, int]:
    data = common.read_bytes(f"/proc/{pid}/io") or b""
    out = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def measure(args: argparse.Namespace) -> Report:
    victims = [common.sleeper_argv(i) for i in range(args.victims)]
    lines = [common.argv_bytes(argv) for argv in victims]
    config = common.fleet_config(victims)
    report = Report(
        "output_throughput",
        {
            "writers": args.writers,
            "victims": args.victims,
            "repeats": args.repeats,
            "max_bytes": args.max_bytes,
            "mode": args.mode,
            "stderr": args.stderr,
            "timestamps": args.timestamps,
        },
    )
    events = common.ProcEvents.open() if args.method != "poll" else None
    method = "netlink" if events is not None else "poll"
    if events is None and args.method == "netlink":
        raise RuntimeError("the netlink proc connector is unavailable (needs root)")
    try:
        with BenchDaemon(config) as daemon:
            # The writers' files go in the daemon's folder, known only now.
            out_dir = str(daemon.root)
            for i in range(args.writers):
                output: Any = "log"
                if args.mode == "file":
                    output = {
                        "file": f"{out_dir}/{{Task_name}}.out",
                        "max_bytes": args.max_bytes,
                        "backups": 1,
                    }
                    if args.stderr:
                        output["stderr"] = f"{out_dir}/{{Task_name}}.err"
                    if args.timestamps:
                        output["timestamps"] = True
                streams = "both" if args.stderr else "stdout"
                config["tasks"][f"w{i:02d}"] = {
                    "commands": {"start": [sys.executable, "-c", WRITER, f"writer-{i}", streams]},
                    "output": output,
                }
            daemon.config_path.write_text(json.dumps(config, indent=1))
            daemon.start()
            _, found = daemon.wait_running(dict.fromkeys(lines, 1), timeout=60)
            pid_of = {line: pid for pid, line in found.items()}
            now = time.perf_counter()
            since = dict.fromkeys(lines, now)
            order = list(lines)
            time.sleep(args.warmup)
            io0, cpu0, t0 = read_io(daemon.pid), common.cpu_seconds(daemon.pid), time.monotonic()
            rss0 = common.memory_kib(daemon.pid)["rss"]
            parts: dict[str, list[float]] = {}
            opts = argparse.Namespace(timeout=args.timeout, poll_sleep=0)
            assert daemon.children is not None
            for _ in range(args.repeats):
                line = restart_latency._next_stable(order, since, args.stable)
                old = pid_of[line]
                if method == "netlink":
                    assert events is not None
                    new, seen = restart_latency._round_netlink(daemon, events, old, line, opts)
                else:
                    new, seen = restart_latency._round_poll(
                        daemon, daemon.children, old, line, opts
                    )
                for key, value in seen.items():
                    parts.setdefault(key, []).append(value)
                pid_of[line] = new
                since[line] = time.perf_counter()
                time.sleep(args.gap)
            remaining = args.window - (time.monotonic() - t0)
            if remaining > 0:
                time.sleep(remaining)
            io1, cpu1, t1 = read_io(daemon.pid), common.cpu_seconds(daemon.pid), time.monotonic()
            rss1 = common.memory_kib(daemon.pid)["rss"]
            if not daemon.alive():
                raise RuntimeError(f"taskforce exited; log:\n{daemon.log_tail()}")
    finally:
        if events is not None:
            events.close()

    seconds = t1 - t0
    written = io1.get("wchar", 0) - io0.get("wchar", 0)
    rate = written / seconds / MB
    cpu = max(cpu1 - cpu0, 1e-9)
    per_cpu = written / MB / cpu
    report.row("window", f"{seconds:.1f} s")
    report.row("written by the daemon", f"{written / MB:.0f} MB: {rate:.0f} MB/s")
    report.row("daemon CPU", f"{cpu / seconds * 100:.0f}% of one CPU")
    report.row(
        "per CPU-second",
        f"{per_cpu:.0f} MB per CPU-second; {cpu / max(written, 1) * 1e9:.1f} CPU-s per GB",
    )
    report.row("daemon RSS", f"{rss0 / 1024:.1f} MiB -> {rss1 / 1024:.1f} MiB")
    report.figures.update(
        {
            "mb_per_s": rate,
            "bytes": written,
            "seconds": seconds,
            "daemon_cpu_share": cpu / seconds,
            "mb_per_cpu_s": per_cpu,
            "cpu_s_per_gb": cpu / max(written, 1) * 1e9,
            "rss_kib": [rss0, rss1],
            "method": method,
        }
    )
    for key, values in parts.items():
        s = summary_ms(values)
        report.figures[f"latency_{key}"] = s
        report.row(
            f"[{method}] {restart_latency.LABELS[key].strip()}",
            f"median {s['median_ms']:6.2f} ms  p90 {s['p90_ms']:6.2f} ms  "
            f"max {s['max_ms']:6.2f} ms",
        )
    median = statistics.median(parts["total"]) * 1000
    report.checks.append(
        Check(
            f"captured output ({args.mode}) per CPU-second of taskforce",
            f">= {TARGET_MB_PER_CPU_S:g} MB",
            per_cpu,
            "MB",
            per_cpu >= TARGET_MB_PER_CPU_S,
        )
    )
    report.checks.append(
        check(f"restart median during it ({method})", median, TARGET_MEDIAN_MS, "ms", strict=True)
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=1, help="tasks writing (default 1)")
    parser.add_argument(
        "--mode",
        choices=("log", "file"),
        default="log",
        help="output: log (the default output: taskforce's log, -e, to a file), "
        "or output: {file: ...}",
    )
    parser.add_argument(
        "--stderr", action="store_true", help="write to stderr too (file mode: its own file)"
    )
    parser.add_argument("--timestamps", action="store_true", help="file mode: timestamps: true")
    parser.add_argument("--victims", type=int, default=20, help="tasks killed (default 20)")
    parser.add_argument("--repeats", type=int, default=20, help="kills (default 20)")
    parser.add_argument(
        "--max-bytes", type=int, default=256 * 1024 * 1024, help="rotation size (default 256 MiB)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=5.0, help="least seconds measured")
    parser.add_argument("--stable", type=float, default=1.5, help="kill only after this run (s)")
    parser.add_argument("--gap", type=float, default=0.05, help="pause between kills (s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-kill limit (s)")
    parser.add_argument(
        "--method", choices=("auto", "poll", "netlink"), default="auto", help="latency probe"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        lambda a: 120 + a.warmup + a.window + a.repeats * (a.stable + a.timeout + a.gap),
    )


if __name__ == "__main__":
    sys.exit(main())
