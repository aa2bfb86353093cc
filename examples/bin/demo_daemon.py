#!/usr/bin/env python3
"""A stand-in daemon for the examples: says hello, then a heartbeat now and then.

It runs in the foreground (taskforce's ``wait`` control expects that),
exits cleanly on SIGTERM and says so on SIGHUP (``tfctl signal db HUP``).
"""

import os
import signal
import sys
import time

name = sys.argv[1] if len(sys.argv) > 1 else "demo"
interval = float(os.environ.get("DEMO_HEARTBEAT", "10"))


def stop(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # once is enough: exit quietly
    print(f"{name}: got signal {signum}, exiting", file=sys.stderr, flush=True)
    sys.exit(0)


def hup(signum, frame):
    print(f"{name}: got SIGHUP (a real daemon would reopen its logs)", file=sys.stderr, flush=True)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, hup)
instance = os.environ.get("Task_instance", "?")
print(f"{name}[{instance}] pid {os.getpid()} up, args {sys.argv[2:]}", file=sys.stderr, flush=True)
while True:
    time.sleep(interval)
    print(f"{name}[{instance}] heartbeat", file=sys.stderr, flush=True)
