"""What the cost columns cost: ``/status/tasks`` and ``/metrics`` with 1,000
slots when the slots' CPU, memory and descriptors are read afresh.

A real taskforce runs a tiny sleeper with ``--count`` slots.  The figures are
read from the kernel only when a request asks and held for half a second
(``taskforce.costs.HOLD``), so three kinds of request are timed:

- ``sampled``: the core was just fed and the last sample is older than the
  hold: the answer is assembled and every slot's figures are read afresh;
- ``held``: the core was just fed, the sample is still held: the answer is
  assembled, nothing is read from /proc;
- ``metrics_sampled``: ``/metrics`` with a fresh sample;

and, apart from any request, ``Sampler.sample`` itself is timed in this
process on the daemon's slots (``in_process``): the reading alone, without
the noise of a request that comes after the daemon has slept (on a shared
machine the first request after a pause is slower with or without the
figures).

``--cgroups off`` runs the daemon with ``TASKFORCE_CGROUPS=off`` (the /proc
fallback: one pass over every process of the host per sample).  Linux only;
a measurement, not a test.

    python bench/costs_cost.py [--count 1000] [--requests 20] [--cgroups auto|off] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from bench_status import daemon, sleepers, wait_until

from taskforce import costs
from taskforce.tfctl import UnixConnection

HOLD = 0.5


def timed(conn: UnixConnection, poke: UnixConnection, path: str) -> tuple[float, int]:
    poke.request("POST", "/manage/control")
    poke.getresponse().read()
    began = time.perf_counter()
    conn.request("GET", path)
    body = conn.getresponse().read()
    return time.perf_counter() - began, len(body)


def measure(sock: str, requests: int) -> dict[str, Any]:
    conn, poke = UnixConnection(sock, timeout=60), UnixConnection(sock, timeout=60)
    out: dict[str, Any] = {}
    try:
        for kind, path, wait in (
            ("sampled", "/status/tasks", HOLD + 0.1),
            ("held", "/status/tasks", 0.0),
            ("metrics_sampled", "/metrics", HOLD + 0.1),
        ):
            times, size = [], 0
            timed(conn, poke, path)  # a sample to hold
            for _ in range(requests):
                time.sleep(wait)
                took, size = timed(conn, poke, path)
                times.append(took)
            out[kind] = {**common.summary_ms(times), "bytes": size}
        conn.request("GET", "/status/tasks")
        keys = costs.slot_keys(json.loads(conn.getresponse().read()))
    finally:
        conn.close()
        poke.close()
    sampler = costs.Sampler(hold=0.0)
    sampler.sample(keys)  # the cgroup folders found, as the daemon has them
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        sampler.sample(keys)
        times.append(time.perf_counter() - began)
    out["in_process"] = {**common.summary_ms(times), "bytes": 0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="slots (default 1000)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests of each kind")
    parser.add_argument("--cgroups", choices=("auto", "off"), default="auto")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("costs_cost: Linux only (reads /proc)", file=sys.stderr)
        return 2
    os.environ["TASKFORCE_CGROUPS"] = args.cgroups
    result: dict[str, Any] = {"slots": args.count, "cgroups": args.cgroups}
    with (
        tempfile.TemporaryDirectory(prefix="tfc") as folder,
        daemon(args.count, 1, Path(folder)) as (proc, sock),
    ):
        wait_until(
            lambda: len(sleepers(common.ChildWatcher(proc.pid))) == args.count,
            120,
            f"{args.count} sleepers",
        )
        result.update(measure(sock, args.requests))
        text = (Path(folder) / "taskforce.log").read_text(errors="replace")
        result["tracking"] = "cgroup" if "a cgroup per slot" in text else "process group"
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.count} slots, tracked by {result['tracking']} (TASKFORCE_CGROUPS={args.cgroups})")
    for kind in ("sampled", "held", "metrics_sampled", "in_process"):
        row = result[kind]
        print(
            f"  {kind:<16} median {row['median_ms']:.1f} ms  p90 {row['p90_ms']:.1f} ms"
            f"  max {row['max_ms']:.1f} ms" + (f"  ({row['bytes']} bytes)" if row["bytes"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
